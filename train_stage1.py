"""
Stage 1 of the paper's two-stage recipe (EXPERIMENTS.md, "Two-stage recipe"; the model: two_stage.py): a frozen
2D teacher (the MaskGIT-VQGAN, or a layout-'2d' tokenizer trained by train_tokenizer.py) codes each image as a
g x g grid, the proxy codes; TiTok's decoder predicts, per patch, logits over the teacher's codebook. Loss:
cross-entropy to the teacher's codes + quantizer losses. Stage 2 finetunes the decoder on pixels through the
teacher's decoder, encoder frozen: train_tokenizer.py with stage1_ckpt (config/*_stage2.py).

The defaults below are the paper's TiTok-L-32 on ImageNet 256. Examples:
  python train_stage1.py config/shapes_stage1.py              # the CPU demo (after config/shapes_tokenizer_2d.py)
  torchrun --standalone --nproc_per_node=8 train_stage1.py config/imagenet_titok_l32_stage1.py --dataset=/data/imagenet
  python train_stage1.py config/shapes_stage1.py --init_from=resume   # continue exactly
"""
import itertools
import os
import sys
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import check, configure, fail
from data import batches, check_dataset, make_dataset
from model import PRESETS
from pretrained import build_tokenizer, load_teacher
from training import (check_tokenizer_training, end_ddp, format_time, get_lr, global_mean, held_out_psnr,
                      load_checkpoint, psnr, rng_state, save_checkpoint, set_rng_state, setup, stop_if_not_finite)
from two_stage import proxy_loss

# -----------------------------------------------------------------------------
# I/O
out_dir = "out-stage1"
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 5000  # held-out PSNR, a reconstruction grid and a checkpoint every this many iterations
log_interval = 100
eval_batches = 8  # held-out batches per evaluation
# the teacher: maskgit-vqgan-imagenet-f16-256.bin, or a layout-'2d' checkpoint of train_tokenizer.py
teacher = ""
# data
dataset = "data/imagenet"  # 'shapes' (synthetic, built in) or an image folder: root/<class>/<image>
num_train = 20000  # size of the synthetic training set (image folders use all their images)
image_size = 256
num_workers = 8  # DataLoader worker processes (0: load in the training process)
cache_images = False  # 'shapes': keep each image after its first render (memory; best with num_workers=0)
# model
model_size = "L"  # S, B, L (the paper), tiny, micro (CPU demo, tests)
patch_size = 16  # the teacher's grid: image_size / patch_size must be the teacher's
layout = "1d"  # '2d': a 2D student (a control)
num_latent_tokens = 32  # K
token_size = 12
codebook_size = 4096
commitment_cost = 0.25
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000
# loss
quantizer_weight = 1.0
# optimizer: AdamW, linear warm-up then cosine decay
batch_size = 32  # per process, per micro-step
gradient_accumulation_steps = 8  # in total, divided between the processes: 32 x 8 = 256 images per step
learning_rate = 1e-4
max_iters = 1_000_000  # 200 epochs of ImageNet at batch 256
weight_decay = 1e-4
beta1, beta2 = 0.9, 0.99
grad_clip = 1.0  # 0 disables
warmup_iters = 10_000
lr_decay_iters = 0  # 0: decay until max_iters
min_lr = 1e-5
# system
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = True  # torch.compile the model on CUDA (ignored on CPU, where compiling costs more than it saves)
seed = 0
# -----------------------------------------------------------------------------
config_keys = [k for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))]
globals().update(configure(sys.argv[1:], {k: globals()[k] for k in config_keys}))
config = {k: globals()[k] for k in config_keys}
# every value a user can type, checked before any work: one line `error: ...` and exit status 2
check_tokenizer_training(config, PRESETS)
if not teacher:
    fail("stage 1 needs a teacher: --teacher=PATH (a MaskGIT-VQGAN .bin, or a checkpoint of train_tokenizer.py trained "
         "with --layout=2d)")
check_dataset(dataset)
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed)
master = rank == 0
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
grid = image_size // patch_size
ckpt_path = os.path.join(out_dir, "ckpt.pt")

# the frozen 2D teacher, and checks that it fits, before any training
try:
    teacher_model, teacher_grid, teacher_codebook, _ = load_teacher(teacher, image_size, device)
except (FileNotFoundError, ValueError) as e:
    fail(str(e))
if teacher_grid != grid:
    fail(f"the teacher {teacher} codes a {image_size}px image as {teacher_grid}x{teacher_grid}, but "
             f"patch_size {patch_size} gives {grid}x{grid} patches: they must agree")
n_codes = len(teacher_codebook)

model_args = dict(image_size=image_size, patch_size=patch_size, layout=layout,
                  num_latent_tokens=num_latent_tokens if layout == "1d" else grid * grid, token_size=token_size,
                  codebook_size=codebook_size, commitment_cost=commitment_cost, usage_window=usage_window,
                  dead_code_restart=dead_code_restart, proxy_codebook_size=n_codes, **PRESETS[model_size])
iter_num, checkpoint = 0, None
if init_from == "resume":
    checkpoint = load_checkpoint(ckpt_path, "checkpoint to resume from", "tokenizer")
    model_args = checkpoint["model_args"]  # the architecture is the checkpoint's, whatever the flags say
    if model_args.get("pixel_decoder") is not None or "proxy_codebook_size" not in model_args:
        fail(f"{ckpt_path} is not a stage-1 checkpoint: resume it with train_tokenizer.py")
    iter_num = checkpoint["iter_num"]
if model_args["proxy_codebook_size"] != n_codes:
    fail(f"the teacher {teacher} has {n_codes} codes, but {ckpt_path} predicts {model_args['proxy_codebook_size']}")
try:
    model = build_tokenizer(model_args).to(device)  # a two_stage.TwoStageTiTok; its config checks its settings
except ValueError as e:
    fail(str(e))
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set = make_dataset(dataset, image_size, "train", num_train, seed, cache_images)
val_set = make_dataset(dataset, image_size, "val", max(eval_batches * batch_size, 64), seed)

optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"])
    if master:
        print(f"resumed from {ckpt_path} at iteration {iter_num}")
    checkpoint = None  # free memory
raw_model = model
if compile and device_type == "cuda":
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
if master:
    n_params = sum(p.numel() for p in raw_model.parameters())
    print(f"TiTok {model_size}-{model_args['num_latent_tokens']} ({model_args['layout']}), stage 1: "
          f"{n_params / 1e6:.2f}M parameters, {len(train_set)} training images, "
          f"{batch_size * gradient_accumulation_steps * world_size} images per step, device {device} ({dtype})")
    if getattr(val_set, "held_out_note", None):
        print(val_set.held_out_note)


def reconstruct(images):
    """The teacher's decoding of the predicted codes, and their accuracy against the teacher's codes (into
    `accuracies`)."""
    with ctx:
        logits = raw_model(images)[0].float()
        accuracies.append(proxy_loss(logits, teacher_model.encode(images))[1])
        return teacher_model.decode(logits.argmax(1).flatten(1))


train_batches = batches(train_set, batch_size, seed, iter_num * gradient_accumulation_steps, rank, world_size,
                        flip=True, workers=num_workers, device=device)
nonfinite = torch.zeros((), dtype=torch.bool, device=device)
t0, t_start, iter_start = time.time(), time.time(), iter_num
while True:
    lr = get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr

    if (iter_num % eval_interval == 0 and iter_num > iter_start) or iter_num == max_iters:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            accuracies = []
            raw_model.eval()
            val_psnr = held_out_psnr(reconstruct, itertools.islice(batches(val_set, batch_size, seed, device=device),
                                                                   eval_batches), os.path.join(out_dir, "recon.png"))
            raw_model.train()
            print(f"eval {iter_num}: held-out PSNR (teacher decoding) {val_psnr:.2f} dB, "
                  f"proxy-code accuracy {torch.stack(accuracies).mean().item():.1%}; grid in {out_dir}/recon.png")
            save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
                             "iter_num": iter_num, "config": config, "rng": rng_state()}, ckpt_path)
    if iter_num >= max_iters:
        break

    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        if ddp:  # synchronise gradients on the last micro-step only
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with torch.no_grad(), ctx:
            codes = teacher_model.encode(images)  # of the flipped images, like the student's input
        with ctx:
            logits, q_losses = model(images)
        ce, accuracy = proxy_loss(logits.float(), codes)  # the losses in fp32
        loss = ce + quantizer_weight * (q_losses["commitment"] + q_losses["codebook"])
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
        shown = {"loss": loss, "ce": ce, "accuracy": accuracy}
        sums = {k: sums.get(k, 0) + v.detach() for k, v in shown.items()}
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    # the codebook's usage, and dead codes re-seeded after the step (with fresh moments): once per optimizer step
    stats = raw_model.quantizer.end_step(optimizer)
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        mean = global_mean(sums, gradient_accumulation_steps)  # of the whole global batch, whatever the processes
        if master:
            dt, t0 = time.time() - t0, time.time()
            speed = log_interval * batch_size * gradient_accumulation_steps * world_size / dt
            eta = (time.time() - t_start) / (iter_num - iter_start) * (max_iters - iter_num)
            print(f"iter {iter_num}/{max_iters} | loss {mean['loss']:.4f} | ce {mean['ce']:.4f} | proxy-code accuracy "
                  f"{mean['accuracy']:.1%} | codebook usage {stats['usage'].item():.1%} ppl "
                  f"{stats['perplexity'].item():.0f} | lr {lr:.2e} | {speed:.0f} img/s | eta {format_time(eta)}")

if getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    end_ddp()
