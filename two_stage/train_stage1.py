"""
Stage 1 of the paper's two-stage recipe (EXPERIMENTS.md, "The two-stage recipe"; the model: two_stage/titok.py): a frozen
2D teacher (the MaskGIT-VQGAN, or a layout-'2d' tokenizer trained by train_tokenizer.py) codes each image as a
g x g grid, the proxy codes; TiTok's decoder predicts, per patch, logits over the teacher's codebook. Loss:
cross-entropy to the teacher's codes + quantizer losses. Stage 2 finetunes the decoder on pixels through the
teacher's decoder, encoder frozen: train_tokenizer.py with init_from this run's out_dir (config/*_stage2.py).

The defaults below are the paper's TiTok-L-32 on ImageNet 256. Examples:
  python -m two_stage.train_stage1 config/shapes_stage1.py    # the CPU demo (after config/shapes_tokenizer_2d.py)
  torchrun --standalone --nproc_per_node=8 -m two_stage.train_stage1 config/imagenet_titok_l32_stage1.py --dataset=/data/imagenet
  python -m two_stage.train_stage1 config/shapes_stage1.py --init_from=resume   # continue exactly
"""
import itertools
import os

import torch

from checkpoints import build_tokenizer, load_tokenizer_state
from configurator import check, fail, script_config
from data import batches, check_dataset, make_datasets
from model import PRESETS
from quantizer import CodebookUpkeep
from training import (Progress, check_tokenizer_training, end_ddp, evaluating, get_lr, global_mean, held_out_psnr,
                      optimizer_step, resume, save, set_lr, set_rng_state, setup, stop_if_not_finite, sync_gradients,
                      wrap)
from two_stage.titok import load_teacher, proxy_codes, proxy_loss

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
seed = 0  # the data's order and augmentations, and the initialisation
# the paper's model
model_size = "L"  # S, B, L (the paper), tiny, mini, micro (CPU demo, tests)
patch_size = 16  # the teacher's grid: image_size / patch_size must be the teacher's
layout = "1d"  # '2d': a 2D student (a control)
num_latent_tokens = 32  # K
token_size = 12
codebook_size = 4096
commitment_cost = 0.25
# loss
quantizer_weight = 1.0
# optimizer: AdamW, linear warm-up then cosine decay
batch_size = 32  # per process, per micro-step
gradient_accumulation_steps = 8  # in total, divided between the processes: 32 x 8 = 256 images per step
max_iters = 1_000_000  # 200 epochs of ImageNet at batch 256
learning_rate, min_lr = 1e-4, 1e-5
warmup_iters, lr_decay_iters = 10_000, 0  # lr_decay_iters 0: decay until max_iters
weight_decay = 1e-4
beta1, beta2 = 0.9, 0.99  # the paper's stage 1 (stage 2 and the single stage: 0.999)
grad_clip = 1.0  # 0 disables
# the small-budget aids (not in the paper)
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000  # steps unused after which a code counts as dead (the logged usage, and the restart)
# system
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = True  # torch.compile the model (the CPU configs turn it off: there it costs more than it saves)
ddp_timeout = 60  # minutes a process may wait for the others (rank 0 evaluates and writes the checkpoint alone)
# -----------------------------------------------------------------------------
config = script_config(globals())
# every value a user can type, checked before any work: one line `error: ...` and exit status 2
check(config, ("scratch", "resume"), ["init_from"])
check_tokenizer_training(config, PRESETS)
if not teacher:
    fail("stage 1 needs a teacher: --teacher=PATH (a MaskGIT-VQGAN .bin, or a checkpoint of train_tokenizer.py trained "
         "with --layout=2d)")
check_dataset(dataset)
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed, ddp_timeout)
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
                  codebook_size=codebook_size, commitment_cost=commitment_cost, proxy_codebook_size=n_codes,
                  **PRESETS[model_size])
iter_num, checkpoint = 0, resume(init_from, out_dir, "tokenizer")
if checkpoint is not None:
    model_args, iter_num = checkpoint["model_args"], checkpoint["iter_num"]  # the checkpoint's architecture
    if model_args.get("pixel_decoder") is not None or "proxy_codebook_size" not in model_args:
        fail(f"{ckpt_path} is not a stage-1 checkpoint: resume it with train_tokenizer.py")
if model_args["proxy_codebook_size"] != n_codes:
    fail(f"the teacher {teacher} has {n_codes} codes, but {ckpt_path} predicts {model_args['proxy_codebook_size']}")
try:
    model = build_tokenizer(model_args)  # a two_stage.TwoStageTiTok; its config checks its settings
except ValueError as e:
    fail(str(e))
model.quantizer.upkeep = CodebookUpkeep(model_args["codebook_size"], usage_window, dead_code_restart)
model.to(device)
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set, val_set = make_datasets(dataset, image_size, num_train, max(eval_batches * batch_size, 64), seed, cache_images)

optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    load_tokenizer_state(model, checkpoint["model"], ckpt_path)
    optimizer.load_state_dict(checkpoint["resume"]["optimizer"])
    set_rng_state(checkpoint["resume"]["rng"])
    checkpoint = None  # free memory
raw_model = model
model = wrap(model, compile, ddp, local_rank)
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
        accuracies.append(proxy_loss(logits, proxy_codes(teacher_model, images))[1])
        return teacher_model.decode(logits.argmax(1).flatten(1))


progress, iter_start = Progress(iter_num, max_iters, batch_size * gradient_accumulation_steps * world_size, "img"), iter_num
train_batches = batches(train_set, batch_size, seed, iter_num * gradient_accumulation_steps, rank, world_size,
                        flip=True, workers=num_workers, device=device)
nonfinite = torch.zeros((), dtype=torch.bool, device=device)
while True:
    lr = set_lr(optimizer, get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters))
    if evaluating(iter_num, iter_start, eval_interval, max_iters):
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            accuracies = []
            raw_model.eval()
            val_psnr = held_out_psnr(reconstruct, itertools.islice(batches(val_set, batch_size, seed, device=device),
                                                                   eval_batches), os.path.join(out_dir, "recon.png"))
            raw_model.train()
            print(f"eval {iter_num}: held-out PSNR (teacher decoding) {val_psnr:.2f} dB, "
                  f"proxy-code accuracy {torch.stack(accuracies).mean().item():.1%}; grid in {out_dir}/recon.png")
            save(ckpt_path, raw_model, model_args, config, iter_num, optimizer=optimizer.state_dict())
    if iter_num >= max_iters:
        break

    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        sync_gradients([model], micro_step == gradient_accumulation_steps - 1)
        codes = proxy_codes(teacher_model, images)  # of the flipped images, like the student's input
        with ctx:
            logits, q_losses = model(images)
        ce, accuracy = proxy_loss(logits.float(), codes)  # the losses in fp32
        loss = ce + quantizer_weight * (q_losses["commitment"] + q_losses["codebook"])
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
        shown = {"loss": loss, "ce": ce, "accuracy": accuracy}
        sums = {k: sums.get(k, 0) + v.detach() for k, v in shown.items()}
    optimizer_step(model.parameters(), optimizer, grad_clip)
    # the codebook's usage, and dead codes re-seeded after the step (with fresh moments): once per optimizer step
    stats = raw_model.quantizer.upkeep.end_step(raw_model.quantizer, optimizer)
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        mean = global_mean(sums, gradient_accumulation_steps)  # of the whole global batch, whatever the processes
        if master:
            print(progress.line(iter_num, log_interval, [
                f"loss {mean['loss']:.4f}", f"ce {mean['ce']:.4f}", f"proxy-code accuracy {mean['accuracy']:.1%}",
                f"codebook usage {stats['usage'].item():.1%} ppl {stats['perplexity'].item():.0f}", f"lr {lr:.2e}"]))

if getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    end_ddp()
