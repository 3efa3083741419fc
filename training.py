"""
What the trainers (train_tokenizer.py, train_two_stage.py, train_generator.py) share: device and
precision choice, DDP set-up (from torchrun's RANK / LOCAL_RANK / WORLD_SIZE), the learning-rate
schedule, atomic checkpoints, exact-resume RNG state, the progress line; and the tokenizer trainers'
held-out PSNR.
"""
import ctypes
import math
import os
import sys
from contextlib import nullcontext

import torch
import torch.distributed as dist

from data import save_grid


def setup(device, dtype, seed):
    """-> (ddp, rank, local_rank, world_size, device, device_type, dtype, autocast context).
    device 'auto' picks CUDA when present; dtype 'auto' is bfloat16 on CUDA and float32 on CPU."""
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file (or tee) as they happen
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank, world_size = 0, 0, 1
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cpu":
        keep_freed_memory()
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    torch.manual_seed(seed)  # the same on every rank, so that every replica starts identical
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    return ddp, rank, local_rank, world_size, device, device_type, dtype, ctx


def keep_freed_memory():
    """glibc returns large freed blocks (a step's logits, their gradient) to the OS, and the next step
    faults them in again page by page; in a VM that took up to a quarter of a small generator's step
    (EXPERIMENTS.md, "CPU memory"). Keep freed memory in the process instead. Not glibc (macOS, Windows): nothing
    to do."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(-3, 1 << 30)  # M_MMAP_THRESHOLD: serve blocks below 1 GB from the heap, not fresh mmaps
    mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed heap


def get_lr(it, learning_rate, min_lr, warmup_iters, lr_decay_iters):
    """Linear warm-up, then cosine decay to min_lr at lr_decay_iters, then min_lr."""
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it >= lr_decay_iters:
        return min_lr
    ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (learning_rate - min_lr)


def rng_state():
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(checkpoint, path):
    """Write to a temporary file, then rename: a crash mid-write never leaves a broken checkpoint."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, what="checkpoint"):
    if not os.path.isfile(path):
        sys.exit(f"error: {what} {path} does not exist")
    return torch.load(path, map_location="cpu", weights_only=True)


def stop_if_not_finite(nonfinite, iter_num, ckpt_path):
    """`nonfinite` is accumulated on the device (no sync per step); checked before logs and saves."""
    if dist.is_initialized():  # all ranks stop together, or the others would hang in the next all-reduce
        nonfinite = nonfinite.clone()
        dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
    if nonfinite.item():
        sys.exit(f"error: the loss became NaN/inf at or before iteration {iter_num}; stopping. "
                 f"The last good checkpoint is untouched: {ckpt_path} (resume from it with a lower learning_rate).")


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def psnr(x, y):
    """Mean PSNR in dB of images in [0, 1] (x is clamped first, as a saved image would be)."""
    mse = (x.clamp(0, 1) - y).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()


@torch.no_grad()
def held_out_psnr(reconstruct, batches, grid_path):
    """The tokenizer trainers' evaluation: mean PSNR of reconstruct(images) over `batches` of held-out
    (images, labels), and a grid of the first batch's originals above their reconstructions."""
    scores = []
    for i, (images, _) in enumerate(batches):
        recon = reconstruct(images).float()
        scores.append(psnr(recon, images))
        if i == 0:
            n = min(8, len(images))
            save_grid(torch.cat([images[:n], recon[:n].clamp(0, 1)]), grid_path, nrow=n)
    return torch.stack(scores).mean().item()
