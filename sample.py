"""
Generate class-conditional images with a MaskGIT generator and a TiTok tokenizer: a PNG grid (one
row per class) and an .npz of uint8 images `arr_0` (N x H x W x 3) with their `labels`, which
fid.py reads.

  python sample.py --generator=out-shapes-generator         # the CPU demo; its tokenizer is the one it was trained with
  python sample.py --generator=out-shapes-generator --classes=1,3,7 --samples_per_class=4 --seed=1
  python sample.py --tokenizer=tokenizer_titok_l32_imagenet --generator=generator_titok_l32_imagenet \\
      --samples_per_class=50 --out=titok_l32                # the released L-32: 50k images, then their gFID:
  python fid.py titok_l32.npz VIRTUAL_imagenet256_labeled.npz
  torchrun --standalone --nproc_per_node=8 sample.py ...   # the same images, the batches shared by the GPUs

Released checkpoints are directories in the Hugging Face layout (config.json + model.safetensors).
The sampling settings left at None are the generator's own (its config).
"""
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from checkpoints import HUB_ID, load_tokenizer
from configurator import check, fail, script_config
from generator import GUIDANCE_DECAYS, load_generator
from training import end_ddp, format_time, save_grid, setup

# -----------------------------------------------------------------------------
generator = "out-generator"  # train_generator.py's out_dir (or its ckpt.pt), or a released generator directory
tokenizer = ""  # '': the one the generator was trained with; else train_tokenizer.py's out_dir or a released TiTok
classes = ""  # '': every class; or a comma-separated list, e.g. '1,3,7'
samples_per_class = 8
seed = 0  # the same seed (and batch_size) gives the same images, however many processes draw them
out = "samples"  # writes out.png (at most 16 classes x 16 samples) and out.npz (all of them)
# sampling; None: the generator's config
num_steps = None
guidance_scale = None
guidance_decay = None  # 'constant', 'linear' or 'power-cosine'
guidance_scale_pow = None  # for 'power-cosine'
randomize_temperature = None
softmax_temperature_annealing = None  # None: the generator's (a released one: True, as the official sampling script)
# system
batch_size = 64
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = None  # torch.compile the networks: None on CUDA only, True on any device (CPU: slow to start), False never
# -----------------------------------------------------------------------------
script_config(globals())
# -----------------------------------------------------------------------------

# every check before any work: flags, files, then what the checkpoints say (one line `error: ...`, status 2)
if num_steps is not None and type(num_steps) is not int:
    fail(f"num_steps={num_steps!r} is invalid: it must be an integer > 0; set --num_steps to one")
check(globals(), "> 0", ["num_steps", "samples_per_class", "batch_size"])
check(globals(), ">= 0", ["guidance_scale", "guidance_scale_pow", "randomize_temperature", "seed"])
check(globals(), GUIDANCE_DECAYS, ["guidance_decay"])
check(globals(), (True, False), ["compile"])
try:
    wanted = [int(c) for c in classes.split(",")] if classes else None
except ValueError:
    fail(f"classes={classes!r} is invalid: it must be comma-separated integers; set e.g. --classes=1,3,7")
for what, path in (("generator", generator), ("tokenizer", tokenizer)):
    if path and not Path(path).exists() and not HUB_ID.fullmatch(path):  # a repo id is downloaded
        fail(f"{what} checkpoint {path} does not exist; check --{what} (a trainer's out_dir, or a released directory)")

ddp, rank, _, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed)
master = rank == 0


try:
    gen, gen_config = load_generator(generator)
except (OSError, ValueError) as e:
    fail(f"cannot load generator {generator}: {e}")
cfg = gen.config
labels = list(range(cfg.num_classes)) if wanted is None else wanted
if not labels or min(labels) < 0 or max(labels) >= cfg.num_classes:
    fail(f"class labels must be in [0, {cfg.num_classes}) for {generator}, got {wanted}")
tokenizer = tokenizer or gen_config.get("tokenizer", "")
if not tokenizer:
    fail(f"{generator} does not name its tokenizer; pass --tokenizer=...")
if not Path(tokenizer).exists() and not HUB_ID.fullmatch(tokenizer):
    fail(f"tokenizer checkpoint {tokenizer} (the one {generator} was trained with) does not exist; "
         "pass --tokenizer=...")
try:
    tok = load_tokenizer(tokenizer)  # a path, or a Hugging Face repo id
except (OSError, ValueError) as e:
    fail(f"cannot load tokenizer {tokenizer}: {e}")
if tok.config.quantize_mode == "vae":
    fail(f"{tokenizer} is a VAE tokenizer (continuous tokens): a MaskGIT generator samples discrete codes; pass the VQ "
         f"tokenizer {generator} was trained with")
if (cfg.codebook_size, cfg.num_tokens) != (tok.config.codebook_size, tok.config.num_latent_tokens):
    fail(f"the generator {generator} was trained on {cfg.num_tokens} tokens from a codebook of "
         f"{cfg.codebook_size}, but the tokenizer {tokenizer} gives {tok.config.num_latent_tokens} tokens "
         f"from a codebook of {tok.config.codebook_size}: they do not belong together")

gen, tok = gen.to(device), tok.to(device)
compiled = compile or (compile is None and device_type == "cuda")
if compiled:
    # generate() is a Python loop over steps: compile the networks it calls, not the loop, each for one batch shape
    gen.forward = torch.compile(gen.forward)
    tok.decode = torch.compile(tok.decode)
if softmax_temperature_annealing is None and not gen_config:  # a released generator
    softmax_temperature_annealing = True
settings = dict(num_steps=num_steps, guidance_scale=guidance_scale, guidance_decay=guidance_decay,
                guidance_scale_pow=guidance_scale_pow, randomize_temperature=randomize_temperature,
                softmax_temperature_annealing=softmax_temperature_annealing)
shown = {k: getattr(cfg, k) if v is None else v for k, v in settings.items()}
labels = torch.tensor(labels).repeat_interleave(samples_per_class)
if master:
    print(f"sampling {len(labels)} images ({samples_per_class} per class, {len(labels) // samples_per_class} classes) "
          f"of {tok.config.image_size}x{tok.config.image_size}, device {device} ({dtype}), {world_size} process"
          f"{'es' if world_size > 1 else ''}; " + ", ".join(f"{k} {v}" for k, v in shown.items()))

# batch i is drawn with its own seed, by process i % world_size: the images do not depend on how many draw them
num_batches = math.ceil(len(labels) / batch_size)
batch_seeds = torch.randint(2 ** 62, (num_batches,), generator=torch.Generator().manual_seed(seed)).tolist()
size = tok.config.image_size
images, t_start, t_first = torch.empty(len(labels), size, size, 3, dtype=torch.uint8), time.time(), None
for first in range(0, num_batches, world_size):  # a round: one batch per process
    i = first + rank
    x = torch.zeros(batch_size, size, size, 3, dtype=torch.uint8, device=device)  # past the last batch: padding
    if i < num_batches:
        batch = labels[i * batch_size:(i + 1) * batch_size]
        if compiled:  # a short last batch padded with class-0 rows to the others' size (no recompilation); rank 0 drops them
            batch = torch.cat([batch, labels.new_zeros(min(batch_size, len(labels)) - len(batch))])
        with ctx:
            decoded = tok.decode(gen.generate(batch.to(device), rng=torch.Generator(device).manual_seed(batch_seeds[i]),
                                              fixed_shape=compiled, **settings))
        # clamp, then truncate to uint8, as the official sampling script writes its images
        x[:len(decoded)] = (decoded.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
    rounds = [torch.empty_like(x) for _ in range(world_size)] if master else None
    if ddp:  # rank 0 collects the round's batches (on the device: NCCL needs it)
        dist.gather(x, rounds, dst=0)
    else:
        rounds = [x]
    if not master:
        continue
    for j, batch in enumerate(rounds[:num_batches - first]):
        start = (first + j) * batch_size
        images[start:start + batch_size] = batch[:len(labels) - start].cpu()  # waits for the device: timings below
    done, elapsed = min(len(labels), (first + world_size) * batch_size), time.time() - t_start
    t_first = t_first or time.time()
    if done == len(labels) or (first // world_size) % 10 == 0:
        print(f"{done}/{len(labels)} samples | {done / elapsed:.2f} samples/s | "
              f"eta {format_time((len(labels) - done) / done * elapsed)}")
if ddp:  # the others leave; rank 0 writes alone
    end_ddp()
if not master:
    sys.exit(0)
elapsed = time.time() - t_start
first_round = min(len(labels), world_size * batch_size)
steady = (f", {(len(labels) - first_round) / (time.time() - t_first):.2f} after the first batches (compilation)"
          if compiled and len(labels) > first_round else "")
print(f"generated {len(images)} samples in {elapsed:.1f}s: {len(images) / elapsed:.2f} samples/s (generation + decoding)"
      + steady)

os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
np.savez(f"{out}.npz", arr_0=images.numpy(), labels=labels.numpy())
grid = images.view(-1, samples_per_class, size, size, 3)[:16, :16]  # one row per class
save_grid(grid.flatten(0, 1).permute(0, 3, 1, 2).float() / 255, f"{out}.png", nrow=grid.shape[1])
print(f"wrote {out}.png ({grid.shape[0]} classes x {grid.shape[1]} samples) and {out}.npz "
      f"(arr_0 {tuple(images.shape)} uint8, labels)")
