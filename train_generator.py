"""
Train a MaskGIT generator on the 1D codes of a trained TiTok tokenizer.

First the training set is tokenized once, each image and its horizontal flip, into out_dir/tokens.pt
(a rerun reuses it; a different tokenizer or dataset recomputes it). Then, per step: mask a fraction
arccos(u)*2/pi of each sequence's tokens, replace 10% of the class labels by the null class (for
classifier-free guidance), and minimise the cross-entropy (label smoothing 0.1) of the masked tokens,
plus 0.1 x that of the given ones as in the official recipe. out_dir/samples.png shows samples, one
row per class, at every evaluation; sample.py makes more.

The defaults below are the paper's generator for TiTok-L-32 on ImageNet 256. Examples:
  python train_generator.py config/shapes_generator.py      # the CPU demo, after config/shapes_tokenizer.py
  python train_generator.py --tokenizer=out-tokenizer        # dataset and image size: the tokenizer's
  torchrun --standalone --nproc_per_node=8 train_generator.py --tokenizer=out-tokenizer
  python train_generator.py config/shapes_generator.py --init_from=resume   # continue exactly
  python train_generator.py --init_from=generator_titok_l32_imagenet --tokenizer=tokenizer_titok_l32_imagenet \
      --dataset=<folder>                                      # fine-tune a released generator on your images
"""
import os
import time

import torch
import torch.distributed as dist

from checkpoints import load_tokenizer, save_checkpoint
from configurator import check, fail, script_config
from data import Reader, as_float, check_dataset, epoch_permutation, make_datasets
from generator import GUIDANCE_DECAYS, MaskGIT, MaskGITConfig, load_generator, loss
from training import (Progress, check_training, end_ddp, evaluating, format_time, get_lr, global_mean, micro_step_rng,
                      optimizer_step, resume, save, save_grid, set_lr, set_rng_state, setup, stop_if_not_finite,
                      sync_gradients, wrap)

# -----------------------------------------------------------------------------
# I/O
out_dir = "out-generator"
# 'scratch'; 'resume' (out_dir/ckpt.pt, exactly); or weights to start from: train_generator.py's out_dir, a released
# generator directory or Hugging Face repo id (its architecture; the sampling settings below apply)
init_from = "scratch"
eval_interval = 10000  # held-out loss, a sample grid and a checkpoint every this many iterations
log_interval = 100
eval_batches = 8  # held-out batches per evaluation
# data
tokenizer = "out-tokenizer"  # train_tokenizer.py's out_dir (or its ckpt.pt), or a released TiTok directory
dataset = ""  # '': the tokenizer's training set (from its checkpoint); else 'shapes' or an image folder
num_train = 0  # size of the synthetic training set; 0: the tokenizer's
tokenize_batch_size = 64
num_workers = 8  # DataLoader worker processes for tokenizing (0: load in the training process)
seed = 0  # the data's order and augmentations, and the initialisation
# the paper's model
hidden_size = 768
depth = 24
heads = 16
mlp_dim = 3072
dropout = 0.1
class_dropout = 0.1  # share of labels replaced by the null class, for classifier-free guidance
model_type = "ViT"  # 'ViT' (the paper's, BERT layout) or 'UViT'
# sampling defaults, stored with the model for sample.py (the released L-32 generator's)
num_steps = 8
guidance_scale = 4.5
guidance_decay = "linear"  # 'constant', 'linear' or 'power-cosine'
randomize_temperature = 9.5
softmax_temperature_annealing = True  # as the official ImageNet sampling script
# loss
unmasked_weight = 0.1  # the official recipe also weighs the given (unmasked) tokens' loss by 0.1; 0 for masked only
# optimizer: AdamW, linear warm-up then cosine decay
batch_size = 64  # per process, per micro-step
gradient_accumulation_steps = 32  # in total, divided between the processes: 64 x 32 = 2048 sequences per step
learning_rate = 2e-4
max_iters = 500_000
weight_decay = 0.03
beta1, beta2 = 0.9, 0.96
grad_clip = 1.0  # 0 disables
warmup_iters = 10_000
lr_decay_iters = 0  # 0: decay until max_iters
min_lr = 1e-5
# the small-budget aids (aids/; not in the paper)
codebook_init = False  # start code embeddings and output rows from the tokenizer's code vectors
# system
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
compile = True  # torch.compile the model (the CPU configs turn it off: there it costs more than it saves)
ddp_timeout = 60  # minutes a process may wait for the others (rank 0 evaluates and writes the checkpoint alone)
# -----------------------------------------------------------------------------
config = script_config(globals())
# every value a user can type, checked before any work: one line `error: ...` and exit status 2
check_training(config)
check(config, "> 0", ["tokenize_batch_size", "hidden_size", "depth", "heads", "mlp_dim", "num_steps"])
check(config, ">= 0", ["num_train", "guidance_scale", "randomize_temperature", "unmasked_weight"])
check(config, "in [0, 1]", ["dropout", "class_dropout"])
check(config, ("ViT", "UViT"), ["model_type"])
check(config, GUIDANCE_DECAYS, ["guidance_decay"])
if hidden_size % heads:
    fail(f"hidden_size={hidden_size} does not divide into heads={heads} attention heads; set --hidden_size to a "
         f"multiple of {heads} (or --heads to a divisor)")
# -----------------------------------------------------------------------------

ddp, rank, local_rank, world_size, device, device_type, dtype, ctx = setup(device, dtype, seed, ddp_timeout)
master = rank == 0
gradient_accumulation_steps //= world_size
lr_decay_iters = lr_decay_iters or max_iters
ckpt_path = os.path.join(out_dir, "ckpt.pt")
cache_path = os.path.join(out_dir, "tokens.pt")

# the tokenizer, the file it came from (for the token cache) and the dataset it was trained on
try:
    titok, tok_config, tok_file = load_tokenizer(tokenizer, device, with_config=True)
except (OSError, ValueError) as e:
    fail(f"cannot load tokenizer {tokenizer}: {e}")
if titok.config.quantize_mode == "vae":
    fail(f"{tokenizer} is a VAE tokenizer: its tokens are continuous vectors, and MaskGIT generates discrete codes; "
         "pass a tokenizer of codes (trained with quantize_mode 'vq' or 'fsq', or a released VQ one)")
dataset = dataset or tok_config.get("dataset", "")
if not dataset:
    fail(f"{tokenizer} does not say which dataset it was trained on; pass --dataset=shapes or an image folder")
check_dataset(dataset)
num_train = num_train or tok_config.get("num_train", 20000)
data_seed = tok_config.get("seed", seed)  # the same synthetic images the tokenizer was trained on
config.update(dataset=dataset, num_train=num_train)
codebook_size, num_tokens, image_size = (titok.config.codebook_size, titok.config.num_latent_tokens,
                                         titok.config.image_size)
train_set, val_set = make_datasets(dataset, image_size, num_train, eval_batches * batch_size, data_seed, labelled=True)
if master and getattr(val_set, "held_out_note", None):
    print(val_set.held_out_note)
# a fixed, evenly spread held-out subset: an image folder's val split can be large and sorted by class
num_val = min(len(val_set), eval_batches * batch_size)
val_set = torch.utils.data.Subset(val_set, torch.linspace(0, len(val_set) - 1, num_val).long().tolist())
num_classes = train_set.num_classes

sampling = dict(num_steps=num_steps, guidance_scale=guidance_scale, guidance_decay=guidance_decay,
                randomize_temperature=randomize_temperature, softmax_temperature_annealing=softmax_temperature_annealing)
model_args = dict(codebook_size=codebook_size, num_tokens=num_tokens, num_classes=num_classes, hidden_size=hidden_size,
                  depth=depth, heads=heads, mlp_dim=mlp_dim, dropout=dropout, attn_dropout=dropout,
                  class_dropout=class_dropout, model_type=model_type, **sampling)
iter_num, checkpoint, start = 0, resume(init_from, out_dir, "generator"), None
if checkpoint is not None:
    model_args, iter_num = checkpoint["model_args"], checkpoint["iter_num"]  # the checkpoint's architecture
elif init_from != "scratch":
    try:
        start = load_generator(init_from)[0]
    except (OSError, ValueError) as e:
        fail(f"cannot load generator {init_from}: {e}")
    model_args = {**vars(start.config), **sampling}  # its architecture, this run's sampling settings
theirs = (model_args["codebook_size"], model_args["num_tokens"], model_args["num_classes"])
if theirs != (codebook_size, num_tokens, num_classes):
    fail(f"{ckpt_path if checkpoint is not None else init_from} models (codebook size, tokens, classes) = {theirs}, but "
         f"the tokenizer and dataset give {(codebook_size, num_tokens, num_classes)}")

# ----------------------------------------------------------------------------------------------
# The training data: the images and their horizontal flips, tokenized once and cached in out_dir/tokens.pt. The
# cache is valid for one tokenizer file and one set of images; a rerun reuses it, a change recomputes it. Under
# DDP each rank encodes every world_size-th image and the shards are gathered, so every rank holds every code.


@torch.no_grad()
def tokenize(titok, images_set, flip, batch_size, workers, ctx, device):
    """Codes of a dataset, (N, 2, K) with the horizontal flip as [:, 1] or (N, K), and labels (N,)."""
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    # items (index, no crop) of a Reader: an image folder's images cross from the workers as uint8
    shard = torch.utils.data.Subset(Reader(images_set), [(i, None) for i in range(rank, len(images_set), world_size)])
    # its own generator: tokenizing (or reading the cache) must not move the training's random stream
    loader = torch.utils.data.DataLoader(shard, batch_size=batch_size, num_workers=workers,
                                         pin_memory=device.startswith("cuda"), generator=torch.Generator())
    codes, labels, done, t, every = [], [], 0, time.time(), max(1, len(loader) // 10)
    for i, (images, y) in enumerate(loader):
        images = images.to(device, non_blocking=True)
        images = as_float(images)
        with ctx:
            c = torch.stack([titok.encode(images), titok.encode(images.flip(3))], 1) if flip else titok.encode(images)
        codes.append(c)
        labels.append(y.to(device))
        done += len(y) * world_size
        if rank == 0 and ((i + 1) % every == 0 or i + 1 == len(loader)):
            speed = done / (time.time() - t)
            print(f"tokenizing: {min(done, len(images_set))}/{len(images_set)} images{' (and flips)' if flip else ''} | "
                  f"{speed:.0f} img/s | eta {format_time((len(images_set) - done) / speed)}")
    codes, labels = torch.cat(codes), torch.cat(labels)
    if world_size > 1:  # pad the shards to one size, gather them, and undo the striding
        n = -(-len(images_set) // world_size)
        gathered = []
        for x in (codes, labels):
            x = torch.cat([x, x[:1].expand(n - len(x), *x.shape[1:])])
            parts = [torch.empty_like(x) for _ in range(world_size)]
            dist.all_gather(parts, x)
            gathered.append(torch.stack(parts, 1).flatten(0, 1)[:len(images_set)])
        codes, labels = gathered
    return codes, labels


def token_cache(titok, tok_file, train_set, val_set, key, path, batch_size, workers, ctx, device):
    """-> {codes (N, 2, K) compact ints, labels, val_codes (M, K), val_labels} on the CPU: from `path` when its
    key (the tokenizer file's name, size and time, and `key`: what identifies the images) is this one, else
    tokenized now and saved there (by rank 0)."""
    stat = tok_file.stat()
    key = dict(tokenizer=str(tok_file.resolve()), tokenizer_size=stat.st_size, tokenizer_mtime=stat.st_mtime_ns,
               **key, num_train=len(train_set), num_val=len(val_set))
    master = not dist.is_initialized() or dist.get_rank() == 0
    cache = torch.load(path, map_location="cpu", weights_only=True) if os.path.isfile(path) else None
    if cache is not None and cache["key"] == key:
        if master:
            print(f"reusing the token cache {path}")
        return cache
    if master:
        changed = [k for k in key if cache["key"].get(k) != key[k]] if cache is not None else []
        print(f"the token cache {path} is out of date ({', '.join(changed)} changed): re-tokenizing" if changed else
              f"tokenizing {len(train_set)} training images with {tok_file} (once; cached in {path})")
    codes, labels = tokenize(titok, train_set, True, batch_size, workers, ctx, device)
    val_codes, val_labels = tokenize(titok, val_set, False, batch_size, workers, ctx, device)
    compact = torch.int16 if titok.config.codebook_size <= 2 ** 15 else torch.int32  # a quarter / half of int64's
    cache = dict(key=key, codes=codes.to(compact).cpu(), labels=labels.cpu(), val_codes=val_codes.cpu(),
                 val_labels=val_labels.cpu())
    if master:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        save_checkpoint(cache, path)
    return cache


cache = token_cache(titok, tok_file, train_set, val_set, dict(dataset=dataset, image_size=image_size, data_seed=data_seed),
                    cache_path, tokenize_batch_size, num_workers, ctx, device)
# every image and its flip are two training sequences (kept compact; made long per batch)
codes = cache["codes"].flatten(0, 1).to(device)
labels = cache["labels"].repeat_interleave(2).long().to(device)
val_codes, val_labels = cache["val_codes"].long().to(device), cache["val_labels"].long().to(device)
cache = None  # free memory

model = MaskGIT(MaskGITConfig(**model_args)).to(device)
optimizer = model.configure_optimizers(weight_decay, learning_rate, (beta1, beta2), device_type)
if checkpoint is not None:
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["resume"]["optimizer"])
    set_rng_state(checkpoint["resume"]["rng"])
    checkpoint = None
elif start is not None:
    model.load_state_dict(start.state_dict())
    start = None
elif codebook_init:  # a small-budget aid (aids/)
    from aids.codebook_init import init_generator_from_codebook
    codebook = titok.quantizer.decode(torch.arange(codebook_size, device=device))
    init_generator_from_codebook(model, codebook, rng=torch.Generator(device).manual_seed(seed))
raw_model = model
model = wrap(model, compile, ddp, local_rank)
if master:
    print(f"MaskGIT: {sum(p.numel() for p in raw_model.parameters()) / 1e6:.2f}M parameters, {len(codes)} training "
          f"sequences of {num_tokens} tokens (codebook {codebook_size}, {num_classes} classes), "
          f"{batch_size * gradient_accumulation_steps * world_size} sequences per step, device {device} ({dtype})")


def device_batches(start_iter):
    """data.batch_indices' batches, as index tensors on the device: the order is copied to the device once per
    epoch, not once per batch (a copy from a Python list waits for the device)."""
    n, pos, first, perm = len(codes), (start_iter * world_size + rank) * batch_size, 0, None
    while True:
        lo, hi = pos // n, (pos + batch_size - 1) // n  # the epochs this batch draws from
        if perm is None or hi >= first + len(perm) // n:
            first, perm = lo, torch.cat([epoch_permutation(n, seed, e)[0] for e in range(lo, hi + 1)]).to(device)
        yield perm[pos - first * n:pos - first * n + batch_size]
        pos += batch_size * world_size


@torch.no_grad()
def evaluate():
    """Held-out loss (with fixed masks); a grid of samples, one row per class (up to 10 classes)."""
    raw_model.eval()
    g, losses = torch.Generator(device).manual_seed(seed), []
    for i in range(0, len(val_codes), batch_size):
        x, y = val_codes[i:i + batch_size], val_labels[i:i + batch_size]
        ids, mask = raw_model.random_mask(x, rng=g)
        with ctx:
            losses.append(loss(raw_model(ids, y), x, mask, unmasked_weight).item())
    classes = torch.linspace(0, num_classes - 1, min(num_classes, 10), device=device).long()
    n = 8
    with ctx:
        samples = titok.decode(raw_model.generate(classes.repeat_interleave(n), rng=g))  # the stored settings
    save_grid(samples.float(), os.path.join(out_dir, "samples.png"), nrow=n)
    raw_model.train()
    return sum(losses) / len(losses)


nonfinite = torch.zeros((), dtype=torch.bool, device=device)
progress, iter_start = Progress(iter_num, max_iters, batch_size * gradient_accumulation_steps * world_size, "seq"), iter_num
sampler = device_batches(iter_num * gradient_accumulation_steps)
while True:
    lr = set_lr(optimizer, get_lr(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters))
    if evaluating(iter_num, iter_start, eval_interval, max_iters):
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        if master:
            val_loss = evaluate()
            print(f"eval {iter_num}: held-out loss {val_loss:.4f}; samples in {out_dir}/samples.png")
            save(ckpt_path, raw_model, model_args, config, iter_num, optimizer=optimizer.state_dict())
    if iter_num >= max_iters:
        break

    sums = {}  # what the progress line shows, summed over this step's micro-steps
    for micro_step in range(gradient_accumulation_steps):
        idx = next(sampler)
        x = codes[idx].long()
        g = micro_step_rng(seed, (iter_num * gradient_accumulation_steps + micro_step) * world_size + rank, device)
        ids, mask = raw_model.random_mask(x, rng=g)
        y = raw_model.drop_labels(labels[idx], rng=g)
        sync_gradients([model], micro_step == gradient_accumulation_steps - 1)
        with ctx:
            logits = model(ids, y)
        loss_value = loss(logits, x, mask, unmasked_weight)
        nonfinite |= ~torch.isfinite(loss_value.detach())
        (loss_value / gradient_accumulation_steps).backward()
        accuracy = ((logits.detach().argmax(-1) == x) & mask).sum() / mask.sum()  # of the masked tokens, no host sync
        sums = {k: sums.get(k, 0) + v for k, v in {"loss": loss_value.detach(), "accuracy": accuracy}.items()}
    optimizer_step(model.parameters(), optimizer, grad_clip)
    iter_num += 1

    if iter_num % log_interval == 0:
        stop_if_not_finite(nonfinite, iter_num, ckpt_path)
        mean = global_mean(sums, gradient_accumulation_steps)  # of the whole global batch, whatever the processes
        if master:
            print(progress.line(iter_num, log_interval, [f"loss {mean['loss']:.4f}",
                                                         f"masked-token accuracy {mean['accuracy']:.1%}", f"lr {lr:.2e}"]))

if ddp:
    end_ddp()
