"""
Fréchet Inception Distance, self-contained: the FID Inception-v3 (the TensorFlow graph of
Heusel et al. 2017 as ported by pytorch-fid) written out in plain PyTorch, its input pipeline,
and the Fréchet distance. With the same weights and images it gives pytorch-fid's number.

    python fid.py samples.npz VIRTUAL_imagenet256_labeled.npz   # gFID against the ADM reference
    python fid.py folder_a folder_b                              # FID of two image folders
    python fid.py folder --save_stats=stats.npz                  # write mu/sigma for later use

(A tokenizer's rFID: reconstruct.py --fid_weights.)

A side is an image folder (one image size, as pytorch-fid), an .npz of uint8 images `arr_0`
(N x H x W x 3, as sample.py and the ADM suite write), or an .npz of statistics `mu`, `sigma`
(preferred when a file has both, as the ADM reference batches do). The last line printed is the
FID. The weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`, found at --weights,
else $FID_WEIGHTS, else in torch's hub cache where pytorch-fid downloads it; this file never
downloads anything. In code: `model = load_inception(path)`, `features(model, uint8 images)`,
`statistics(feats)`, `frechet_distance(mu1, sigma1, mu2, sigma2)`.
"""
import argparse
import os
import pickle
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from scipy import linalg

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
IMAGE_EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}  # pytorch-fid's

# ----------------------------------------------------------------------------------------------
# The FID Inception-v3. Module names are those of the weights file (torchvision's Inception3).
# Where the FID graph differs from torchvision's, the block says so.


class BasicConv2d(nn.Module):
    def __init__(self, cin, cout, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


def avg_pool(x):
    # TensorFlow's average pool divides by the number of real pixels, not counting the padding
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):  # Mixed_5b..5d, 35x35
    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

    def forward(self, x):
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(avg_pool(x)),  # FID variant: padding not counted
        ], 1)


class InceptionB(nn.Module):  # Mixed_6a, 35x35 -> 17x17
    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class InceptionC(nn.Module):  # Mixed_6b..6e, 17x17, factorized 7x7 convolutions
    def __init__(self, cin, channels_7x7):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return torch.cat([self.branch1x1(x), b7, b7dbl, self.branch_pool(avg_pool(x))], 1)  # FID avg pool


class InceptionD(nn.Module):  # Mixed_7a, 17x17 -> 8x8
    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):  # Mixed_7b, 7c, 8x8, expanded filter bank
    def __init__(self, cin, max_pool):
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3dbl = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        # FID variant: Mixed_7c of the TF graph max-pools here (most likely a bug in that graph,
        # kept because it defines the metric); Mixed_7b uses the uncounted-padding average pool
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else avg_pool(x)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(b3), self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(b3dbl), self.branch3x3dbl_3b(b3dbl),
            self.branch_pool(pooled),
        ], 1)


class InceptionV3(nn.Module):
    """The FID Inception-v3 up to its 2048-d pool features (pool_3 of the TF graph). Input:
    B x 3 x 299 x 299 in [-1, 1]; `features` does the resize and scaling from uint8 images."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, max_pool=False)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147x147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73x73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35x35
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        return x.mean((2, 3))  # global average pool: B x 2048


def load_inception(weights=None, device="cpu"):
    """The FID Inception with the weights file at `weights`, else $FID_WEIGHTS, else torch's hub cache."""
    path = Path(weights or os.environ.get("FID_WEIGHTS") or Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE)
    if not path.is_file():
        raise FileNotFoundError(f"FID Inception weights not found at {path}. Download {WEIGHTS_FILE} "
                                f"(published with pytorch-fid's releases: {WEIGHTS_URL}) and pass "
                                "--weights=PATH or set FID_WEIGHTS=PATH")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as e:
        raise ValueError(f"{path} is not a PyTorch weights file like {WEIGHTS_FILE}: {e}") from e
    if not isinstance(sd, dict):
        raise ValueError(f"{path} holds a {type(sd).__name__}, not the state dict of {WEIGHTS_FILE}")
    model = InceptionV3()
    # the 1008-way classifier `fc` is not part of the FID graph; num_batches_tracked is unused in eval
    skip = lambda k: k.startswith("fc.") or k.endswith("num_batches_tracked")
    ours = {k: v.shape for k, v in model.state_dict().items() if not skip(k)}
    theirs = {k: v for k, v in sd.items() if not skip(k)}
    missing = sorted(ours.keys() - theirs.keys())
    if missing:
        raise ValueError(f"{path} is not the FID Inception weights ({WEIGHTS_FILE}): it lacks key {missing[0]}"
                         + (f" and {len(missing) - 1} more" if len(missing) > 1 else ""))
    for k, v in theirs.items():
        if k not in ours:
            raise ValueError(f"{path} is not the FID Inception weights ({WEIGHTS_FILE}): unexpected key {k}")
        if v.shape != ours[k]:
            raise ValueError(f"{path}: key {k} has shape {tuple(v.shape)}, the FID Inception needs {tuple(ours[k])}")
    model.load_state_dict(theirs, strict=False)  # every remaining key was checked above
    # channels-last convolutions are ~1.4x faster on CPU (oneDNN) and use tensor cores on CUDA
    return model.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


def inception_input(x):
    """Float images B x 3 x H x W in [0, 1] -> the Inception's input: bilinear resize to 299
    (align_corners False), then [-1, 1], channels_last."""
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
    return (2 * x - 1).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def features(model, images):
    """Pool features (float32, B x 2048) of uint8 images B x 3 x H x W, pytorch-fid's pipeline:
    scale to [0, 1], bilinear resize to 299 (align_corners False), then to [-1, 1]."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"features needs uint8 images B x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
    x = images.to(next(model.parameters()).device).float() / 255
    with torch.autocast(x.device.type, enabled=False):  # float32 even inside a caller's autocast
        return model(inception_input(x))


# ----------------------------------------------------------------------------------------------
# Statistics and the Fréchet distance


def statistics(feats):
    """Mean and covariance (float64) of N x D features, as pytorch-fid: np.mean, np.cov."""
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or len(feats) < 2:
        raise ValueError(f"FID statistics need at least 2 feature vectors (N x D), got shape {feats.shape}")
    return feats.mean(0), np.cov(feats, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2)), guarded as pytorch-fid:
    when the product is too singular for sqrtm to return finite values (e.g. fewer images than
    dimensions) eps*I is added to both covariances; a matrix root with a large imaginary part
    (diagonal beyond 1e-3) is an error, a small one is rounding and dropped."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("statistics contain NaN or infinity")
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        print(f"warning: singular covariance product; adding {eps} to the diagonals", file=sys.stderr)
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"matrix square root has a large imaginary part ({np.abs(covmean.imag).max():.3g}): "
                             "the covariances are not valid (too few images, or non-finite features?)")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


# ----------------------------------------------------------------------------------------------
# Inputs: image folders and .npz files, read in uint8 batches


def _read(path):
    try:
        with Image.open(path) as img:
            return path, torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # corrupt, truncated, not an image
        print(f"\nwarning: skipping unreadable image {path}: {e}", file=sys.stderr)
        return path, None


def folder_batches(root, batch_size=50, workers=0):
    """(number of files, iterator of uint8 batches B x 3 x H x W) of the images under `root`
    (recursive); unreadable files are skipped with a warning and counted."""
    files = sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    if not files:
        raise FileNotFoundError(f"no images ({' '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    # batch_size=None: the workers decode single files, batches are stacked here
    loader = torch.utils.data.DataLoader(files, batch_size=None, num_workers=workers, collate_fn=_read)

    def batches():
        batch, skipped, first = [], 0, None
        for path, image in loader:
            if image is None:
                skipped += 1
                continue
            first = first or (path, image.shape)
            if image.shape != first[1]:
                raise ValueError(f"images differ in size ({first[0]} is {tuple(first[1])}, {path} is "
                                 f"{tuple(image.shape)}); resize them to one size first, as pytorch-fid requires")
            batch.append(image)
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
        if batch:
            yield torch.stack(batch)
        if skipped:
            print(f"\nwarning: skipped {skipped} of {len(files)} files under {root} as unreadable", file=sys.stderr)
    return len(files), batches()


def npz_batches(path, batch_size=50):
    """(N, iterator of uint8 batches B x 3 x H x W) of the N x H x W x 3 array `arr_0` in an .npz,
    read from the archive batch by batch: 50k samples at 256 are 10 GB, too much to load at once."""
    z = zipfile.ZipFile(path)
    f = z.open("arr_0.npy")
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(f)
    if dtype != np.uint8 or len(shape) != 4 or shape[3] != 3 or fortran_order:
        raise ValueError(f"{path}: arr_0 must be uint8 images N x H x W x 3, got {dtype} {shape}")

    def batches():
        with z, f:
            for i in range(0, shape[0], batch_size):
                n = min(batch_size, shape[0] - i)
                data = bytearray(f.read(n * int(np.prod(shape[1:]))))
                yield torch.frombuffer(data, dtype=torch.uint8).view(n, *shape[1:]).permute(0, 3, 1, 2).contiguous()
    return shape[0], batches()


def progress(n, total, t0):
    print(f"\r{n}/{total} images, {n / (time.time() - t0):.1f} images/s", end="", file=sys.stderr, flush=True)


def activations(model, total, batches):
    """Pool features (N x 2048, float32 numpy) of uint8 batches, with a progress line on stderr."""
    feats, t0 = [], time.time()
    for images in batches:
        feats.append(features(model, images).cpu().numpy())
        progress(sum(map(len, feats)), total, t0)
    print(file=sys.stderr)
    return np.concatenate(feats) if feats else np.zeros((0, 2048), np.float32)


def saved_statistics(path):
    """(mu, sigma) stored in an .npz, or None when `path` holds images instead."""
    if Path(path).suffix != ".npz":
        return None
    try:
        f = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is damaged or not an .npz ({type(e).__name__}: {str(e).split('. ')[0]}); pass "
                         "images (arr_0, as sample.py writes) or statistics (mu, sigma, as --save_stats writes)") from e
    with f:
        if "mu" in f.files and "sigma" in f.files:
            return f["mu"].astype(np.float64), f["sigma"].astype(np.float64)
        if "arr_0" not in f.files:
            raise ValueError(f"{path} holds neither statistics (mu, sigma) nor images (arr_0): keys {f.files}")
    return None


def path_statistics(path, model, batch_size=50, workers=0):
    """(mu, sigma) of an image folder or an .npz of images or statistics."""
    stats = saved_statistics(path)
    if stats is not None:
        return stats
    if Path(path).suffix == ".npz":
        total, batches = npz_batches(path, batch_size)
    elif Path(path).is_dir():
        total, batches = folder_batches(path, batch_size, workers)
    else:
        raise FileNotFoundError(f"{path} is neither an image folder nor an .npz file")
    return statistics(activations(model, total, batches))


# ----------------------------------------------------------------------------------------------
# rFID: reconstruct a folder with a tokenizer, then FID of the reconstructions against the originals


def to_uint8(images):
    """Float images in [0, 1] to uint8, as saving them to PNG would."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="two sides (folder, images .npz or statistics .npz); one with --save_stats")
    p.add_argument("--weights", help=f"path of {WEIGHTS_FILE} (default: $FID_WEIGHTS, then torch's hub cache)")
    p.add_argument("--save_stats", help="write the statistics (mu, sigma) of the one side to this .npz")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if len(args.paths) != (1 if args.save_stats else 2):
        p.error("give two sides A B; or one side and --save_stats=OUT.npz")
    for path in args.paths:  # before loading the Inception weights
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist; pass an image folder or an .npz")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch_size={args.batch_size} and --workers={args.workers}: the batch size must be > 0 and "
                         "the number of workers >= 0; pass such values")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device={args.device}, but torch sees no CUDA device; pass --device=cpu")

    stats = [saved_statistics(path) for path in args.paths]
    model = load_inception(args.weights, args.device) if any(s is None for s in stats) else None
    stats = [s or path_statistics(path, model, args.batch_size, args.workers) for s, path in zip(stats, args.paths)]
    if args.save_stats:
        np.savez(args.save_stats, mu=stats[0][0], sigma=stats[0][1])
        print(f"wrote {args.save_stats}")
        return
    print(f"FID: {frechet_distance(*stats[0], *stats[1]):.4f}")


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # missing or wrong files and values: the message says which
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # as argparse's own errors, and the other scripts' (configurator.fail)
