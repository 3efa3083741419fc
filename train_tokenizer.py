"""
Train a TiTok tokenizer in a single stage: pixel reconstruction loss + quantizer losses. (The paper's
two-stage recipe, proxy codes then decoder finetuning, is train_two_stage.py.)

The defaults below are the paper's TiTok-L-32 on ImageNet 256. Examples:
  python train_tokenizer.py config/shapes_tokenizer.py            # the CPU demo, synthetic data
  python train_tokenizer.py --dataset=/data/imagenet               # TiTok-L-32 on ImageNet (train/ and val/)
  python train_tokenizer.py config/shapes_tokenizer_2d.py         # the paper's 2D baseline (layout '2d')
  torchrun --standalone --nproc_per_node=8 train_tokenizer.py --dataset=/data/imagenet
  python train_tokenizer.py config/shapes_tokenizer.py --init_from=resume   # continue exactly
"""
import itertools
import os
import sys
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import check, configure, fail
from data import batches, block_means, check_dataset, make_dataset
from model import PRESETS, route_by_position
from pretrained import build_tokenizer
from training import (check_tokenizer_training, end_ddp, format_time, get_lr, global_mean, held_out_psnr,
                      load_checkpoint, psnr, rng_state, save_checkpoint, set_rng_state, setup, stop_if_not_finite)

# -----------------------------------------------------------------------------
# I/O
out_dir = "out-tokenizer"
init_from = "scratch"  # 'scratch' or 'resume' (from out_dir/ckpt.pt)
eval_interval = 5000  # held-out PSNR, a reconstruction grid and a checkpoint every this many iterations
log_interval = 100
eval_batches = 8  # held-out batches per evaluation
# data
dataset = "data/imagenet"  # 'shapes' (synthetic, built in) or an image folder: root/<class>/<image>
num_train = 20000  # size of the synthetic training set (image folders use all their images)
image_size = 256
num_workers = 8  # DataLoader worker processes (0: load in the training process)
cache_images = False  # 'shapes': keep each image after its first render (memory; best with num_workers=0)
# model
model_size = "L"  # S, B, L (the paper), tiny, micro (CPU demo, tests)
patch_size = 16
layout = "1d"  # '1d': K latent tokens (TiTok); '2d': the g x g patch tokens are the codes (the 2D baseline)
num_latent_tokens = 32  # K (layout '2d': ignored, the code length is (image_size / patch_size)^2)
token_size = 12
codebook_size = 4096
commitment_cost = 0.25
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000
head_stride = 1  # the pixel head: 1 (the paper's, p*p values per patch) or 4 (a 4x4 grid, upsampled)
routing_init = False  # layout '1d': start with the latents routed to patches (model.route_by_position)
routing_scatter = False  # with routing_init: each latent starts reading one patch per head, patches that lie apart
# loss
recon_loss = "l2"  # 'l2' or 'l1'
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
check(config, "> 0", ["head_stride"])
check(config, ("l2", "l1"), ["recon_loss"])
if patch_size % head_stride:
    fail(f"head_stride={head_stride} does not divide patch_size={patch_size}: the pixel head predicts a "
         f"{patch_size}/{head_stride} grid per patch; set --head_stride to a divisor of {patch_size}")
if routing_init and layout != "1d":
    fail("routing_init routes the latent tokens of layout '1d'; layout '2d' has none: set --routing_init=False")
if routing_scatter:
    grid, heads = image_size // patch_size, PRESETS[model_size]["heads"]
    head_dims = PRESETS[model_size]["width"] // heads
    if not routing_init:
        fail("routing_scatter is a form of the routing init: set --routing_init=True as well")
    if grid % 2 or head_dims <= grid * grid:
        fail(f"routing_scatter needs an even grid of patches and more dims per head than patches; "
             f"{grid}x{grid} patches with {head_dims} dims per head ({model_size}) is not that")
    if num_latent_tokens * heads < grid * grid:
        fail(f"routing_scatter routes one patch per head: num_latent_tokens={num_latent_tokens} latents x {heads} heads "
             f"do not cover the {grid * grid} patches; set --num_latent_tokens to {-(-grid * grid // heads)} or more")
check_dataset(dataset)
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed)
master = rank == 0
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
ckpt_path = os.path.join(out_dir, "ckpt.pt")

model_args = dict(image_size=image_size, patch_size=patch_size, layout=layout,
                  num_latent_tokens=num_latent_tokens if layout == "1d" else (image_size // patch_size) ** 2,
                  token_size=token_size, codebook_size=codebook_size, commitment_cost=commitment_cost,
                  usage_window=usage_window, dead_code_restart=dead_code_restart, head_stride=head_stride,
                  **PRESETS[model_size])
iter_num, best_psnr, checkpoint = 0, 0.0, None
if init_from == "resume":
    checkpoint = load_checkpoint(ckpt_path, "checkpoint to resume from", "tokenizer")
    model_args = checkpoint["model_args"]  # the architecture is the checkpoint's, whatever the flags say
    if "proxy_codebook_size" in model_args:
        fail(f"{ckpt_path} is a checkpoint of the two-stage recipe: resume it with train_two_stage.py")
    iter_num, best_psnr = checkpoint["iter_num"], checkpoint["best_psnr"]
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set = make_dataset(dataset, image_size, "train", num_train, seed, cache_images)
val_set = make_dataset(dataset, image_size, "val", max(eval_batches * batch_size, 64), seed)

model = build_tokenizer(model_args)  # a TiTok (checkpoints of older versions name more args)
if routing_init and checkpoint is None:
    route_by_position(model, routing_scatter)
model.to(device)
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
    print(f"TiTok {model_size}-{model_args['num_latent_tokens']} ({model_args['layout']}): {n_params / 1e6:.2f}M "
          f"parameters, {len(train_set)} training images, {batch_size * gradient_accumulation_steps * world_size} "
          f"images per step, device {device} ({dtype})")
    if getattr(val_set, "held_out_note", None):
        print(val_set.held_out_note)
    # what the code's bits would buy with no learning, on the images of every evaluation
    val_images = torch.cat([x for x, _ in itertools.islice(batches(val_set, batch_size, seed), eval_batches)])
    print("held-out PSNR with no learning: " + ", ".join(
        f"{b}x{b} block means {psnr(block_means(val_images, b), val_images).item():.2f} dB" for b in (4, 8)))


def reconstruct(images):
    with ctx:
        return raw_model(images)[0]


train_batches = batches(train_set, batch_size, seed, iter_num * gradient_accumulation_steps, rank, world_size,
                        flip=True, workers=num_workers, device=device)
nonfinite = torch.zeros((), dtype=torch.bool, device=device)
t0, t_start, iter_start = time.time(), time.time(), iter_num
while True:
    lr = get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group["lr"] = lr

    if iter_num % eval_interval == 0 and iter_num > iter_start or iter_num == max_iters:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            raw_model.eval()
            val_psnr = held_out_psnr(reconstruct, itertools.islice(batches(val_set, batch_size, seed, device=device),
                                                                   eval_batches), os.path.join(out_dir, "recon.png"))
            raw_model.train()
            best_psnr = max(best_psnr, val_psnr)
            print(f"eval {iter_num}: held-out PSNR {val_psnr:.2f} dB (best {best_psnr:.2f}); grid in {out_dir}/recon.png")
            save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
                             "iter_num": iter_num, "best_psnr": best_psnr, "config": config, "rng": rng_state()}, ckpt_path)
    if iter_num >= max_iters:
        break

    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        if ddp:  # synchronise gradients on the last micro-step only
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            recon, q_losses, _ = model(images)
        recon = recon.float()  # the losses in fp32
        rec = F.mse_loss(recon, images) if recon_loss == "l2" else F.l1_loss(recon, images)
        loss = rec + quantizer_weight * (q_losses["commitment"] + q_losses["codebook"])
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
        shown = {"loss": loss, "rec": rec, "psnr": psnr(recon.detach(), images)}
        sums = {k: sums.get(k, 0) + v.detach() for k, v in shown.items()}
    # the codebook's usage and dead-code restarts count optimizer steps
    stats = raw_model.quantizer.end_step()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        mean = global_mean(sums, gradient_accumulation_steps)  # of the whole global batch, whatever the processes
        if master:
            dt, t0 = time.time() - t0, time.time()
            speed = log_interval * batch_size * gradient_accumulation_steps * world_size / dt
            eta = (time.time() - t_start) / (iter_num - iter_start) * (max_iters - iter_num)
            print(f"iter {iter_num}/{max_iters} | loss {mean['loss']:.4f} | rec {mean['rec']:.4f} | "
                  f"psnr {mean['psnr']:.2f} dB | codebook usage {stats['usage'].item():.1%} "
                  f"ppl {stats['perplexity'].item():.0f} | lr {lr:.2e} | {speed:.0f} img/s | eta {format_time(eta)}")

if isinstance(train_set, torch.utils.data.Dataset) and getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    end_ddp()
