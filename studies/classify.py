"""
How recognisable are generated shapes? A small CNN trained on the synthetic shapes scores class-
conditional samples: the share of sample.py's images (an .npz: arr_0 uint8 N x H x W x 3, labels) that
it puts in their class, overall and per class. Chance is 10%. It learns on real images, lightly
blurred so that it also reads a tokenizer's softer output; with --tokenizer it also scores that
tokenizer's reconstructions of held-out images, the most that a generator on its codes can reach.

  python -m studies.classify --npz=samples.npz                                  # the first call trains it (~3 min on a CPU)
  python -m studies.classify --npz=samples.npz --tokenizer=out-shapes-tokenizer # and the reconstructions' score
"""
import os
import zipfile

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import load_checkpoint, load_tokenizer, save_checkpoint
from configurator import check, fail, script_config
from data import SHAPES, Shapes
from training import setup

# -----------------------------------------------------------------------------
npz = "samples.npz"  # sample.py's output ('' to only train the classifier)
tokenizer = ""  # a tokenizer checkpoint: also score its reconstructions of held-out shapes
classifier = ""  # trained on first use, then reused; '': out-shape-classifier-<image_size>px.pt
image_size = 0  # of the images it reads; 0: the samples' (else the tokenizer's, else 64)
num_train = 12000  # real training images (the val split is held out)
steps = 800
batch_size = 64
seed = 0
# -----------------------------------------------------------------------------
script_config(globals())
# -----------------------------------------------------------------------------


def make_classifier():
    conv = lambda i, o: [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]
    return nn.Sequential(*conv(3, 24), nn.MaxPool2d(2), *conv(24, 48), nn.MaxPool2d(2), *conv(48, 96), nn.MaxPool2d(2),
                         *conv(96, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, len(SHAPES)))


def blur(x, g):
    """A separable Gaussian blur of random width (sigma up to 1.5 pixels) per image."""
    B, C, H, W = x.shape
    sigma = torch.rand(B, generator=g) * 1.5 + 1e-3
    k = torch.exp(-torch.arange(-3, 4).float()[None] ** 2 / (2 * sigma[:, None] ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(C, 0)[:, None, None, :]  # (B*C, 1, 1, 7)
    x = F.conv2d(F.pad(x.reshape(1, B * C, H, W), (3, 3, 0, 0), mode="replicate"), k, groups=B * C)
    x = F.conv2d(F.pad(x, (0, 0, 3, 3), mode="replicate"), k.transpose(2, 3), groups=B * C)
    return x.reshape(B, C, H, W)


def real_images(split, n):
    data = Shapes(image_size, split, n, seed)
    images, labels = zip(*(data[i] for i in range(n)))
    return torch.stack(images), torch.tensor(labels)


@torch.no_grad()
def predict(net, images):
    return torch.cat([net(images[i:i + 256]).argmax(1) for i in range(0, len(images), 256)])


def report(what, predicted, labels):
    per_class = " ".join(f"{name} {(predicted[labels == c] == c).float().mean():.0%}"
                         for c, name in enumerate(SHAPES) if (labels == c).any())
    print(f"{what}: {(predicted == labels).float().mean():.1%} of {len(labels)} in their class ({per_class})")


# every check before any work (one line `error: ...`, exit status 2)
check(globals(), "> 0", ["num_train", "steps", "batch_size"])
check(globals(), ">= 0", ["image_size", "seed"])
if 0 < image_size < 8:
    fail(f"image_size={image_size} is too small: the classifier halves it three times; set --image_size to 8 or more")
for what, path in (("samples", npz), ("tokenizer", tokenizer)):
    if path and not os.path.exists(path):
        fail(f"{what} {path} does not exist; check --{'npz' if what == 'samples' else what}")
if npz:  # read (and check) the samples before any work
    try:
        samples = np.load(npz)
        sample_images, sample_labels = samples["arr_0"], samples["labels"]
    except (OSError, ValueError, EOFError, KeyError, IndexError, zipfile.BadZipFile) as e:
        fail(f"cannot read samples {npz} ({type(e).__name__}: {str(e).split('. ')[0]}): it must be an .npz of "
             "sample.py, with uint8 images arr_0 (N x H x W x 3) and their labels; pass --npz=... such a file")
    if sample_images.ndim != 4 or sample_images.shape[3] != 3 or len(sample_labels) != len(sample_images):
        fail(f"{npz} holds arr_0 {sample_images.shape} and labels {sample_labels.shape}, not N x H x W x 3 images "
             "and N labels (as sample.py writes them); pass --npz=... such a file")
    sample_images = torch.from_numpy(sample_images).permute(0, 3, 1, 2).float() / 255
    image_size = image_size or sample_images.shape[-1]
    if sample_images.shape[-1] != image_size:
        fail(f"{npz} holds {sample_images.shape[-1]}px images; the classifier reads {image_size}px "
             "(--image_size)")
if tokenizer:
    try:
        titok = load_tokenizer(tokenizer).eval()
    except (OSError, ValueError) as e:
        fail(f"cannot load tokenizer {tokenizer}: {e}")
    image_size = image_size or titok.config.image_size
    if titok.config.image_size != image_size:
        fail(f"{tokenizer} codes {titok.config.image_size}px images, the classifier reads {image_size}px")
image_size = image_size or 64
classifier = classifier or f"out-shape-classifier-{image_size}px.pt"
setup("cpu", "float32", seed)
net = make_classifier()
if os.path.isfile(classifier):
    saved = load_checkpoint(classifier, "shape classifier")
    if "image_size" not in saved:
        fail(f"{classifier} is not a shape classifier of classify.py; pass --classifier=... another path (trained there)")
    if saved["image_size"] != image_size:
        fail(f"{classifier} reads {saved['image_size']}px images, not {image_size}px; pass --classifier=...")
    net.load_state_dict(saved["model"])
else:
    print(f"training the shape classifier on {num_train} real {image_size}px images (once; saved to {classifier})")
    images, labels = real_images("train", num_train)
    g = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, 3e-3, total_steps=steps)
    for step in range(steps):
        idx = torch.randint(0, num_train, (batch_size,), generator=g)
        x = blur(images[idx], g)
        x = torch.where(torch.rand(batch_size, 1, 1, 1, generator=g) < 0.5, x, x.flip(3))
        loss = F.cross_entropy(net(x), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if (step + 1) % 100 == 0:
            print(f"step {step + 1}/{steps} | loss {loss.item():.4f}")
    save_checkpoint({"model": net.state_dict(), "image_size": image_size}, classifier)
net.eval()

held_out, held_out_labels = real_images("val", 500)
report("held-out real images", predict(net, held_out), held_out_labels)
if tokenizer:
    with torch.no_grad():
        reconstructions = torch.cat([titok.decode(titok.encode(held_out[i:i + 100])) for i in range(0, 500, 100)])
    # truncated to uint8 as sample.py writes its images
    report(f"their reconstructions by {tokenizer}", predict(net, (reconstructions.clamp(0, 1) * 255).byte() / 255),
           held_out_labels)
if npz:
    report(f"samples in {npz}", predict(net, sample_images), torch.from_numpy(sample_labels).long())
