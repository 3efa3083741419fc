"""
The codebook refit, a small-budget aid of the photo recipe (not in any TiTok recipe; EXPERIMENTS.md, "What
each choice bought"): on a finished tokenizer, a few k-means steps on its codebook with its encoder's
outputs on `epochs` augmented passes over its training images (augmented as in its training). Held-out
tokens that fell between codes fit to the training tokens land nearer one.

  python train_tokenizer.py config/photos_tokenizer.py --dataset=<folder>
  python -m aids.refit --tokenizer=out-photos-tokenizer

It prints the held-out PSNR before and after, and rewrites out_dir/ckpt.pt: the codebook of the weights to
use, and of the trained weights beside them, so that a resume continues from the refit codebook (the one
before stays as ckpt-prev.pt).
"""
import itertools
import os

import torch

from checkpoints import build_tokenizer, load_checkpoint, load_tokenizer_state, save_checkpoint
from configurator import check, fail, script_config
from data import batches, make_dataset
from training import held_out_psnr, setup

# -----------------------------------------------------------------------------
tokenizer = ""  # train_tokenizer.py's out_dir (or its ckpt.pt), a VQ tokenizer
epochs = 8  # passes over the training images whose encoder outputs the codes are fit to
steps = 2  # k-means (Lloyd's) steps
max_gigabytes = 8.0  # the encoder outputs are held at once: refuse more than this
device = "auto"  # 'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1', ...
dtype = "auto"  # 'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16'
# -----------------------------------------------------------------------------


@torch.no_grad()
def kmeans(quantizer, z, steps, chunk=4096):
    """Lloyd's steps on quantizer's codebook with points z (N, D) (on the sphere with use_l2_norm): each code that
    some point is nearest to moves to their mean; each other code is re-seeded at a random point (the random
    numbers a function of the step alone), so that every code serves the points. A step never increases the
    points' mean distance to their codes. -> (codes moved, codes re-seeded) at the last step."""
    z = quantizer.norm(z.float())
    for step in range(steps):
        codebook = quantizer.norm(quantizer.codebook.weight.float())
        codes = torch.cat([quantizer.nearest(part, codebook) for part in z.split(chunk)])  # bounded memory
        counts = torch.bincount(codes, minlength=len(codebook))
        new = torch.zeros_like(codebook).index_add_(0, codes, z) / counts.clamp_min(1)[:, None]
        empty = (counts == 0).nonzero().squeeze(1)
        g = torch.Generator(z.device).manual_seed(step)
        new[empty] = z[torch.randint(0, len(z), (len(empty),), device=z.device, generator=g)]
        quantizer.codebook.weight.data.copy_(new)
    return int((counts > 0).sum()), len(empty)


if __name__ == "__main__":
    script_config(globals())
    check(globals(), "> 0", ["epochs", "steps", "max_gigabytes"])
    if not tokenizer:
        fail("pass --tokenizer=<the out_dir of a train_tokenizer.py run>")
    device, device_type, _, ctx = setup(device, dtype, 0)[4:]
    path = os.path.join(tokenizer, "ckpt.pt") if os.path.isdir(tokenizer) else tokenizer
    checkpoint = load_checkpoint(path, "tokenizer checkpoint", "tokenizer")
    train, args = checkpoint.get("config", {}), checkpoint["model_args"]
    if args.get("quantize_mode", "vq") != "vq" or "proxy_codebook_size" in args:
        fail(f"{path} is not a single-stage VQ tokenizer: the refit fits a VQ codebook to its encoder's outputs")
    if not train.get("dataset"):
        fail(f"{path} does not say which images it was trained on (its config has no dataset)")
    model = build_tokenizer(args)
    load_tokenizer_state(model, checkpoint["model"], path)
    model.to(device).eval()
    seed, batch_size = train.get("seed", 0), train.get("batch_size", 32)
    image_size = args["image_size"]
    train_set = make_dataset(train["dataset"], image_size, "train", train.get("num_train", 20000), seed)
    val_set = make_dataset(train["dataset"], image_size, "val", max(train.get("eval_batches", 8) * batch_size, 64), seed)

    def reconstruct(images):
        with ctx:
            return model(images)[0]

    def held_out():
        val = itertools.islice(batches(val_set, batch_size, seed, device=device), train.get("eval_batches", 8))
        return held_out_psnr(reconstruct, val, os.path.join(os.path.dirname(path), "recon.png"))

    passes = max(1, epochs * len(train_set) // batch_size)
    gigabytes = passes * batch_size * args["num_latent_tokens"] * args["token_size"] * 4 / 2 ** 30
    if gigabytes > max_gigabytes:  # every output is held at once: a k-means for small image sets, not ImageNet
        fail(f"the refit would hold {gigabytes:.1f} GB of encoder outputs ({epochs} passes over {len(train_set):,} images), "
             f"more than max_gigabytes={max_gigabytes}; lower --epochs")
    before = held_out()
    # the training's augmentations, another stream of them
    stream = batches(train_set, batch_size, seed + 1, flip=True, brightness_shift=train.get("brightness_shift", 0.0),
                     saturation_shift=train.get("saturation_shift", 0.0), workers=train.get("num_workers", 0),
                     device=device)
    with torch.no_grad(), ctx:
        z = torch.cat([model.encoder(x).float().flatten(0, 1)
                       for x, _ in itertools.islice(stream, max(1, epochs * len(train_set) // batch_size))])
    moved, reseeded = kmeans(model.quantizer, z, steps)
    after = held_out()
    print(f"codebook refit: {steps} k-means steps on {len(z)} encoder outputs of {epochs} passes over the training "
          f"images; at the last, {moved} codes moved to their outputs' mean, {reseeded} re-seeded")
    print(f"held-out PSNR {before:.2f} dB before the refit, {after:.2f} dB after; grid in {os.path.dirname(path)}/recon.png")
    codebook = model.quantizer.codebook.weight.detach().cpu()
    checkpoint["model"] = {**checkpoint["model"], "quantizer.codebook.weight": codebook}
    state = checkpoint.get("resume", {})
    if "raw" in state:  # the trained weights, which a resume continues from
        state["raw"] = {**state["raw"], "quantizer.codebook.weight": codebook}
    save_checkpoint(checkpoint, path, keep_previous=True)
    print(f"wrote {path}")
