"""
The generator's training data: a dataset's images, and their horizontal flips, tokenized once by a TiTok
and cached in out_dir/tokens.pt (train_generator.py). The cache is valid for one tokenizer file and one set
of images; a rerun reuses it, a change recomputes it. Under DDP each rank encodes every world_size-th image
and the shards are gathered, so every rank holds every code.
"""
import os
import time

import torch
import torch.distributed as dist

from data import Reader, as_float
from training import format_time, save_checkpoint


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
