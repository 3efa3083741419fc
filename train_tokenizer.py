"""
Train a TiTok tokenizer (single stage: pixel reconstruction loss + quantizer losses).

The defaults below are the paper's TiTok-L-32 on ImageNet 256. Examples:
  python train_tokenizer.py config/shapes_tokenizer.py            # the CPU demo, synthetic data
  python train_tokenizer.py --dataset=/data/imagenet/train         # TiTok-L-32 on ImageNet
  torchrun --standalone --nproc_per_node=8 train_tokenizer.py --dataset=/data/imagenet/train
  python train_tokenizer.py config/shapes_tokenizer.py --init_from=resume   # continue exactly
"""
import os
import sys
import time
from dataclasses import asdict

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

from configurator import configure
from data import batches, make_dataset, save_grid
from model import PRESETS, TiTok, TiTokConfig
from training import (format_time, get_lr, load_checkpoint, rng_state, save_checkpoint, set_rng_state, setup,
                      stop_if_not_finite)

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
# model
model_size = "L"  # S, B, L (the paper), tiny, micro (CPU demo, tests)
patch_size = 16
num_latent_tokens = 32
token_size = 12
codebook_size = 4096
commitment_cost = 0.25
dead_code_restart = False  # re-seed codes unused for usage_window steps from current encoder outputs
usage_window = 1000
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
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed)
master = rank == 0
assert gradient_accumulation_steps % world_size == 0, "gradient_accumulation_steps must divide by the number of processes"
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
if model_size not in PRESETS:
    sys.exit(f"error: model_size must be one of {', '.join(PRESETS)}, not {model_size!r}")
ckpt_path = os.path.join(out_dir, "ckpt.pt")
if master:
    os.makedirs(out_dir, exist_ok=True)

train_set = make_dataset(dataset, image_size, "train", num_train, seed)
val_set = make_dataset(dataset, image_size, "val", max(eval_batches * batch_size, 64), seed)

model_args = dict(image_size=image_size, patch_size=patch_size, num_latent_tokens=num_latent_tokens, token_size=token_size,
                  codebook_size=codebook_size, commitment_cost=commitment_cost, usage_window=usage_window,
                  dead_code_restart=dead_code_restart, **PRESETS[model_size])
iter_num, best_psnr, checkpoint = 0, 0.0, None
if init_from == "resume":
    checkpoint = load_checkpoint(ckpt_path, "checkpoint to resume from")
    model_args = checkpoint["model_args"]  # the architecture is the checkpoint's, whatever the flags say
    iter_num, best_psnr = checkpoint["iter_num"], checkpoint["best_psnr"]
elif init_from != "scratch":
    sys.exit(f"error: init_from must be 'scratch' or 'resume', not {init_from!r}")
model = TiTok(TiTokConfig(**model_args)).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    set_rng_state(checkpoint["rng"])
    print(f"resumed from {ckpt_path} at iteration {iter_num}")
    checkpoint = None  # free memory
raw_model = model
if compile and device_type == "cuda":
    model = torch.compile(model)
if ddp:
    model = DDP(model, device_ids=[local_rank] if device_type == "cuda" else None)
if master:
    n_params = sum(p.numel() for p in raw_model.parameters())
    print(f"TiTok {model_size}-{num_latent_tokens}: {n_params / 1e6:.2f}M parameters, {len(train_set)} training images, "
          f"{batch_size * gradient_accumulation_steps * world_size} images per step, device {device} ({dtype})")


def psnr(x, y):
    """Mean PSNR in dB of images in [0, 1] (x is clamped first, as a saved image would be)."""
    mse = (x.clamp(0, 1) - y).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()


@torch.no_grad()
def evaluate():
    """Held-out PSNR over eval_batches fixed batches; a grid of originals above reconstructions."""
    raw_model.eval()
    scores = []
    for i, (images, _) in zip(range(eval_batches), batches(val_set, batch_size, seed, device=device)):
        with ctx:
            recon = raw_model(images)[0].float()
        scores.append(psnr(recon, images))
        if i == 0:
            n = min(8, len(images))
            save_grid(torch.cat([images[:n], recon[:n].clamp(0, 1)]), os.path.join(out_dir, "recon.png"), nrow=n)
    raw_model.train()
    return torch.stack(scores).mean().item()


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
            val_psnr = evaluate()
            best_psnr = max(best_psnr, val_psnr)
            print(f"eval {iter_num}: held-out PSNR {val_psnr:.2f} dB (best {best_psnr:.2f}); grid in {out_dir}/recon.png")
            save_checkpoint({"model": raw_model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": model_args,
                             "iter_num": iter_num, "best_psnr": best_psnr, "config": config, "rng": rng_state()}, ckpt_path)
    if iter_num >= max_iters:
        break

    for micro_step in range(gradient_accumulation_steps):
        images, _ = next(train_batches)
        if ddp:  # synchronise gradients on the last micro-step only
            model.require_backward_grad_sync = micro_step == gradient_accumulation_steps - 1
        with ctx:
            recon, q_losses, stats = model(images)
        recon = recon.float()  # the losses in fp32
        rec = F.mse_loss(recon, images) if recon_loss == "l2" else F.l1_loss(recon, images)
        loss = rec + quantizer_weight * (q_losses["commitment"] + q_losses["codebook"])
        nonfinite |= ~torch.isfinite(loss.detach())
        (loss / gradient_accumulation_steps).backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            dt, t0 = time.time() - t0, time.time()
            speed = log_interval * batch_size * gradient_accumulation_steps * world_size / dt
            eta = (time.time() - t_start) / (iter_num - iter_start) * (max_iters - iter_num)
            print(f"iter {iter_num}/{max_iters} | loss {loss.item():.4f} | rec {rec.item():.4f} | "
                  f"psnr {psnr(recon.detach(), images).item():.2f} dB | codebook usage {stats['usage'].item():.1%} "
                  f"ppl {stats['perplexity'].item():.0f} | lr {lr:.2e} | {speed:.0f} img/s | eta {format_time(eta)}")

if isinstance(train_set, torch.utils.data.Dataset) and getattr(train_set, "skipped", 0) and master:
    print(f"skipped {train_set.skipped} unreadable images")
if ddp:
    torch.distributed.destroy_process_group()
