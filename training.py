"""
What the trainers (train_tokenizer.py, train_generator.py, two_stage/train_stage1.py) share, in the order a
trainer uses it: the checks of their common settings; setup (device, precision, DDP from torchrun's
RANK / LOCAL_RANK / WORLD_SIZE; sample.py and the studies use it too); resume and the trainer's checkpoint
(its layout: checkpoints.py); compile and DDP; per micro-step randomness; the learning-rate schedule, the
optimizer step and the moving average of the weights; the progress line; and the images' side: PSNR, block
means, held-out PSNR and the PNG grids every script writes.
"""
import ctypes
import math
import os
import sys
import time
import warnings
from contextlib import nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP

from checkpoints import HUB_ID, load_checkpoint, previous, save_checkpoint
from configurator import check, fail

RESUME_KEYS = ("raw", "optimizer", "rng", "discriminator", "disc_optimizer", "lecam")  # older checkpoints: top level


def check_training(config):
    """The settings both trainers share, checked before any work (configurator.fail: one line, status 2)."""
    check(config, "> 0", ["batch_size", "gradient_accumulation_steps", "max_iters", "eval_interval", "log_interval",
                          "eval_batches"])
    check(config, ">= 0", ["learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters", "lr_decay_iters",
                           "num_workers", "seed"])
    check(config, "> 0", ["ddp_timeout"])
    check(config, "in [0, 1)", ["beta1", "beta2"])
    start = config["init_from"]
    if start not in ("scratch", "resume") and not os.path.exists(start) and not HUB_ID.fullmatch(start):
        fail(f"init_from={start!r} is not 'scratch', 'resume', nor weights to start from (no such path: a trainer's out_dir, "
             "a released directory, or a Hugging Face repo id owner/name)")
    world_size, steps = int(os.environ.get("WORLD_SIZE", 1)), config["gradient_accumulation_steps"]
    if steps % world_size:
        fail(f"gradient_accumulation_steps={steps} does not divide between {world_size} processes: it is the total "
             f"number of micro-steps per optimizer step, shared by the processes; set it to a multiple of {world_size}")
    if os.path.exists(config["out_dir"]) and not os.path.isdir(config["out_dir"]):
        fail(f"out_dir={config['out_dir']!r} is a file, not a directory; set --out_dir to a directory")
    if config["min_lr"] > config["learning_rate"] and int(os.environ.get("RANK", 0)) == 0:
        print(f"warning: min_lr={config['min_lr']} is above learning_rate={config['learning_rate']}: the learning rate "
              "will rise after the warm-up instead of decaying", file=sys.stderr)


def check_tokenizer_training(config, presets):
    """check_training, and the settings both tokenizer trainers (single- and two-stage) share."""
    check_training(config)
    check(config, "> 0", ["num_train", "image_size", "patch_size", "num_latent_tokens", "token_size", "codebook_size",
                          "usage_window"])
    check(config, ">= 0", ["commitment_cost", "quantizer_weight"])
    check(config, tuple(presets), ["model_size"])
    # the rest of the model's settings: TiTokConfig checks them


def setup(device, dtype, seed, ddp_timeout=60):
    """-> (ddp, rank, local_rank, world_size, device, device_type, dtype, autocast context).
    device 'auto' picks CUDA when present; dtype 'auto' is bfloat16 on CUDA and float32 on CPU (float16 would
    need a gradient scaler: bfloat16 does not). ddp_timeout: minutes a collective may wait, e.g. for rank 0's
    evaluation and checkpoint."""
    check({"dtype": dtype}, ("auto", "float32", "bfloat16"), ["dtype"])
    cuda, _, index = device.partition(":")
    if device not in ("auto", "cpu") and (cuda != "cuda" or index and not index.isdigit()):
        fail(f"device={device!r} is invalid: it must be 'auto', 'cpu', 'cuda' or 'cuda:N'; set --device to one of them")
    if cuda == "cuda" and int(index or 0) >= torch.cuda.device_count():
        fail(f"device={device!r} is not available: torch sees {torch.cuda.device_count()} CUDA devices; "
             "set --device=cpu or --device=auto")
    sys.stdout.reconfigure(line_buffering=True)  # progress lines reach a log file (or tee) as they happen
    ddp = int(os.environ.get("RANK", -1)) != -1
    rank, local_rank, world_size = 0, 0, 1
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if ddp:
        rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo",
                                timeout=timedelta(minutes=ddp_timeout))
        if device.startswith("cuda"):
            device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
    device_type = "cuda" if device.startswith("cuda") else "cpu"
    if device_type == "cpu":
        keep_freed_memory()
    if dtype == "auto":
        dtype = "bfloat16" if device_type == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    torch.manual_seed(seed)  # the same on every rank, so that every replica starts identical
    set_tf32(True)
    if device_type == "cuda":  # the convolutions (pixel decoder, VGG16, ConvNeXt-S, discriminator) keep their shapes
        torch.backends.cudnn.benchmark = True
    ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    ctx = nullcontext() if ptdtype == torch.float32 else torch.autocast(device_type, dtype=ptdtype)
    return ddp, rank, local_rank, world_size, device, device_type, dtype, ctx


def set_tf32(enabled):
    """TF32 (tensor cores, 10 mantissa bits) for CUDA's float32 matmuls and convolutions, on or off; -> a function that
    puts the previous settings back. Written through the allow_tf32 flags, which torch (2.9 and later) keeps in step
    with its per-backend fp32_precision: a write through fp32_precision alone leaves allow_tf32 and
    get_float32_matmul_precision behind, and reading those then raises ("mix of the legacy and new APIs"), as
    torch.compile does in torch 2.9 to 2.13. Read back through fp32_precision where torch has it: that never raises."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(cudnn, "conv"):
        was = matmul.fp32_precision == "tf32", cudnn.conv.fp32_precision == "tf32"
    else:
        was = matmul.allow_tf32, cudnn.allow_tf32
    matmul.allow_tf32 = cudnn.allow_tf32 = enabled

    def restore():
        matmul.allow_tf32, cudnn.allow_tf32 = was
    return restore


def end_ddp():
    """The ranks leave together, after rank 0's last evaluation and checkpoint: one that tears the process group
    down while rank 0 still works can abort the run."""
    dist.barrier()
    dist.destroy_process_group()


def keep_freed_memory():
    """Keep large freed blocks in the process: glibc returns them to the OS, and the next step faults them in
    again page by page, a measurable share of a small model's step on CPU (EXPERIMENTS.md, "CPU memory").
    Not glibc (macOS, Windows): nothing to do."""
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


@torch.no_grad()
def update_ema(ema_model, model, step, decay):
    """After optimizer step `step` (1, 2, ...): the official moving average of the weights (diffusers' EMAModel
    as TiTok uses it): the first step copies, then decay min(decay, step / (step + 9)), so that the average
    forgets its random start within tens of steps. Buffers (codebook usage) are copied; frozen parameters never
    change (ema_model started as a copy of model)."""
    d = 0.0 if step <= 1 else min(decay, step / (step + 9))
    trained = [(e, p) for e, p in zip(ema_model.parameters(), model.parameters()) if p.requires_grad]
    torch._foreach_lerp_([e for e, _ in trained], [p.detach() for _, p in trained], 1.0 - d)
    for e, b in zip(ema_model.buffers(), model.buffers()):
        e.copy_(b)


def rng_state():
    """The RNG state of the CPU and of this process's CUDA device (not every visible device's: a resume may see
    fewer)."""
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def set_rng_state(state):
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    cuda = cuda[0] if isinstance(cuda, list) and cuda else cuda  # older checkpoints: one state per visible device
    if isinstance(cuda, torch.Tensor) and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)


def micro_step_rng(seed, micro_step, device):
    """The randomness of one micro-step, a function of (seed, micro-step as one process counts them): exact
    resume, and the same draws whichever process runs it. Seeds the global RNG (dropout, a VAE's sample) and
    returns a torch.Generator (masks, labels)."""
    torch.manual_seed((seed * 1_000_003 + micro_step) * 1009 + 1)
    return torch.Generator(device).manual_seed((seed * 1_000_003 + micro_step) * 1009)


def save(path, model, model_args, config, iter_num, **resume):
    """A trainer's checkpoint, as checkpoints.py's docstring lays it out."""
    save_checkpoint({"model": model.state_dict(), "model_args": model_args, "config": config, "iter_num": iter_num,
                     "resume": {**resume, "rng": rng_state()}}, path, keep_previous=True)


def resume(init_from, out_dir, kind):
    """init_from 'resume': the checkpoint in out_dir (ckpt-prev.pt where a crash left no ckpt.pt), with its
    "resume" part (older checkpoints kept it at the top level); else None."""
    if init_from != "resume":
        return None
    path = os.path.join(out_dir, "ckpt.pt")
    if not os.path.isfile(path) and os.path.isfile(previous(path)):
        path = previous(path)
    checkpoint = load_checkpoint(path, "checkpoint to resume from", kind)
    checkpoint.setdefault("resume", {k: checkpoint[k] for k in RESUME_KEYS if k in checkpoint})
    if int(os.environ.get("RANK", 0)) == 0:
        print(f"resumed from {path} at iteration {checkpoint['iter_num']}")
    return checkpoint


def wrap(model, compile, ddp, local_rank):
    """torch.compile and DDP around a model, as the training loop calls it. DDP broadcasts no buffers: every
    rank keeps its buffers (the codebook's usage) identical itself."""
    if compile:
        model = torch.compile(model)
    if ddp:
        cuda = next(model.parameters()).is_cuda
        with warnings.catch_warnings():  # newer torch names it forward_sync_buffers; older ones know only this name
            warnings.simplefilter("ignore", FutureWarning)
            model = DDP(model, device_ids=[local_rank] if cuda else None, broadcast_buffers=False)
    return model


def evaluating(iter_num, iter_start, eval_interval, max_iters):
    """An evaluation and a checkpoint every eval_interval iterations, and at the end (not at a resume's start)."""
    return (iter_num % eval_interval == 0 and iter_num > iter_start) or iter_num == max_iters


def set_lr(optimizer, lr):
    """-> lr, now the learning rate of every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def sync_gradients(models, now):
    """Under DDP, all-reduce gradients on the last micro-step of a step only."""
    for model in models:
        if isinstance(model, DDP):
            model.require_backward_grad_sync = now


def optimizer_step(parameters, optimizer, grad_clip):
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


class Progress:
    """The progress line every log_interval iterations: the numbers, speed and time left; on CUDA also the peak
    memory so far and, on the first line, the seconds its iterations took (torch.compile's compilation in them)."""

    def __init__(self, iter_num, max_iters, items_per_iter, unit):
        self.start, self.max_iters, self.items, self.unit = iter_num, max_iters, items_per_iter, unit
        self.t_start = self.t = time.time()

    def line(self, iter_num, log_interval, parts):
        now = time.time()
        dt, first, self.t = now - self.t, self.t == self.t_start, now
        eta = (self.t - self.t_start) / (iter_num - self.start) * (self.max_iters - iter_num)
        parts = [*parts, f"{log_interval * self.items / dt:.0f} {self.unit}/s", f"eta {format_time(eta)}"]
        if torch.cuda.is_initialized():  # what sizes a GPU run: its memory, and the cost of compiling
            parts.append(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
            parts += [f"first {iter_num - self.start} iters {dt:.1f} s"] if first else []
        return f"iter {iter_num}/{self.max_iters} | {' | '.join(parts)}"


def global_mean(sums, micro_steps):
    """{name: tensor summed over this process's micro-steps} -> {name: 0-dim tensor} averaged over every
    micro-step of every process: the numbers of the whole global batch, however it is split; on the device
    (no host sync until one is printed)."""
    values = torch.stack([v.float() for v in sums.values()])
    if dist.is_initialized():
        dist.all_reduce(values)
        micro_steps *= dist.get_world_size()
    return dict(zip(sums, (values / micro_steps).unbind()))


def stop_if_not_finite(nonfinite, iter_num, ckpt_path):
    """`nonfinite` is accumulated on the device (no sync per step); checked before logs and saves."""
    if dist.is_initialized():  # all ranks stop together, or the others would hang in the next all-reduce
        nonfinite = nonfinite.clone()
        dist.all_reduce(nonfinite, op=dist.ReduceOp.MAX)
    if nonfinite.item():
        fail(f"the loss became NaN/inf at or before iteration {iter_num}; stopping. "
             f"The last good checkpoint is untouched: {ckpt_path} (resume from it with a lower learning_rate).")


def format_time(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def psnr(x, y):
    """PSNR in dB of each image pair (B,), images in [0, 1] (x is clamped first, as a saved image would be;
    identical images: 100 dB, so that a mean stays finite)."""
    mse = (x.clamp(0, 1) - y).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def block_means_psnr(images, blocks=(4, 8)):
    """What images keep with no learning, as one line: the mean PSNR of their b x b block means
    (block_means), for each b in blocks."""
    return ", ".join(f"{b}x{b} block means {psnr(block_means(images, b), images).mean().item():.2f} dB" for b in blocks)


@torch.no_grad()
def held_out_psnr(reconstruct, batches, grid_path):
    """The tokenizer trainers' evaluation: mean PSNR of reconstruct(images) over `batches` of held-out
    (images, labels), and a grid of the first batch's originals above their reconstructions."""
    scores = []
    for i, (images, _) in enumerate(batches):
        recon = reconstruct(images).float()
        scores.append(psnr(recon, images).mean())
        if i == 0:
            n = min(8, len(images))
            save_grid(torch.cat([images[:n], recon[:n].clamp(0, 1)]), grid_path, nrow=n)
    return torch.stack(scores).mean().item()


def block_means(images, blocks):
    """Each image (B, 3, H, W) replaced by its own blocks x blocks grid of mean colours, upsampled
    bilinearly (blocks=1: its mean colour): what a tokenizer's bits buy with no learning. 4x4 block
    means are 48 numbers, about the bits of 32 codes of 10 bits."""
    if blocks == 1:
        return images.mean((2, 3), keepdim=True).expand_as(images)
    small = F.adaptive_avg_pool2d(images, blocks)
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)


def save_grid(images, path, nrow=8):
    """Save images (N, 3, H, W) in [0, 1] as one PNG, nrow images per row."""
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    grid = torch.ones(rows * nrow, c, h, w)
    grid[:n] = images.detach().float().cpu().clamp(0, 1)
    grid = grid.view(rows, nrow, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, nrow * w, c)
    Image.fromarray((grid * 255).round().byte().numpy()).save(path)
