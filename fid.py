"""
The Inception metrics of TiTok's tables in one file, without TensorFlow: the FID Inception-v3 (the TF graph
of Heusel et al. 2017, pytorch-fid's weights file) in plain PyTorch, and from its features the numbers of
the two evaluators behind the paper (docs/evaluation.md says which table uses which):

- ADM's (openai/guided-diffusion evaluations/evaluator.py), for generated samples against a reference
  batch such as VIRTUAL_imagenet256_labeled.npz: Inception Score, FID, sFID, precision and recall,
  printed one a line as ADM prints them (the samples come first here, second in ADM's command). FID and
  sFID use the reference's stored statistics (mu, sigma; mu_s, sigma_s) where it has them, precision and
  recall its images (arr_0), with float64 distances (ADM's float16 ones depend on the hardware).
- the official TiTok evaluator (bytedance/1d-tokenizer evaluator/evaluator.py), for a tokenizer's
  reconstructions: TokenizerEvaluator, which studies/reconstruct.py --fid_weights runs.

    python fid.py samples.npz VIRTUAL_imagenet256_labeled.npz   # gFID etc. of sample.py's samples
    python fid.py folder_a folder_b                              # two image folders
    python fid.py folder --save_stats=stats.npz                  # write mu, sigma, mu_s, sigma_s

Both evaluators resize uint8 images to 299 with TF1's bilinear resize (no half-pixel centres) and scale
by (x - 128) / 128: --pipeline=tf1, the default. --pipeline=pytorch-fid is pytorch-fid's input (PyTorch's
resize, 2x/255 - 1), whose FID it reproduces. A side is an image folder (one image size), an .npz of
uint8 images arr_0 (N x H x W x 3, as sample.py and the ADM suite write), of statistics, or of both.
The weights are pytorch-fid's pt_inception-2015-12-05-6726825d.pth, found at --weights, else
$FID_WEIGHTS, else in torch's hub cache; this file never downloads anything. In code:
`model = load_inception(path)`, `features(model, uint8 images)` -> (pool_3, spatial, logits),
`Moments`, `frechet_distance`, `InceptionScore`, `precision_recall`, `TokenizerEvaluator`.
"""
import argparse
import contextlib
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

from training import set_tf32

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + WEIGHTS_FILE
IMAGE_EXTENSIONS = {".bmp", ".jpg", ".jpeg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp"}  # pytorch-fid's
PIPELINES = ("tf1", "pytorch-fid")  # the input pipelines of `inception_input`; the first is the paper's
IS_SPLIT = 5000  # ADM's Inception Score: the mean over splits of this many images
NEIGHBOURS = 3  # ADM's precision and recall: k of the k-nearest-neighbour manifolds
BLOCK = 1 << 24  # distances computed at once by precision_recall (float64: 128 MiB)

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

    def branches(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7dbl = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7dbl = conv(b7dbl)
        return [self.branch1x1(x), b7, b7dbl, self.branch_pool(avg_pool(x))]  # FID avg pool

    def forward(self, x):
        return torch.cat(self.branches(x), 1)


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
    """The FID Inception-v3. Input: B x 3 x 299 x 299 as `inception_input` makes it. Output: pool_3
    (B x 2048), the spatial features of ADM's sFID (B x 2023) and the logits without the bias (B x 1008)."""

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
        self.fc = nn.Linear(2048, 1008)  # the bias stays unused: both evaluators' IS takes the logits without it

    def forward(self, x):
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # 147x147
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 73x73
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71
        x = F.max_pool2d(x, kernel_size=3, stride=2)  # 35x35
        for name in ("5b", "5c", "5d", "6a", "6b", "6c"):
            x = getattr(self, "Mixed_" + name)(x)
        branches = self.Mixed_6d.branches(x)
        # the TF graph's mixed_6/conv (Mixed_6d's 1x1 branch after its BN and ReLU), as ADM's sFID takes it:
        # the first 7 channels, flattened in TensorFlow's order (height, width, channel)
        spatial = branches[0][:, :7].permute(0, 2, 3, 1).flatten(1)
        x = torch.cat(branches, 1)
        for name in ("6e", "7a", "7b", "7c"):
            x = getattr(self, "Mixed_" + name)(x)
        pool = x.mean((2, 3))  # global average pool: pool_3
        return pool, spatial, pool @ self.fc.weight.T


def load_inception(weights=None, device="cpu", dtype=torch.float32):
    """The FID Inception in `dtype` with the weights file at `weights`, else $FID_WEIGHTS, else torch's hub
    cache."""
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
    skip = lambda k: k.endswith("num_batches_tracked")  # unused in eval
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
    # channels-first, as torch-fidelity runs it: on a CPU its float32 features come out bit for bit
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# The input pipelines: uint8 images to the Inception's input


def resize_tf1(x, size=299):
    """Bilinear resize of B x C x H x W to size x size as TensorFlow 1's resize_bilinear (align_corners
    False, no half-pixel centres) computes it, after torch-fidelity's port: output pixel i reads input
    position i * (in / out), that scale rounded to float32 as TF holds it, corners mixed along x, then y."""
    def axis(n):
        pos = torch.arange(size, dtype=x.dtype, device=x.device) * float(np.float32(n / size))
        lo = pos.long()
        return lo, (lo + 1).clamp_max(n - 1), pos - lo
    y0, y1, dy = axis(x.shape[2])
    x0, x1, dx = axis(x.shape[3])
    top, bottom = x[:, :, y0], x[:, :, y1]
    top = top[..., x0] + (top[..., x1] - top[..., x0]) * dx
    bottom = bottom[..., x0] + (bottom[..., x1] - bottom[..., x0]) * dx
    return top + (bottom - top) * dy[:, None]


def inception_input(images, pipeline="tf1", dtype=torch.float32):
    """uint8 images B x 3 x H x W -> the Inception's input, B x 3 x 299 x 299 in `dtype`.
    'tf1': TF1's bilinear resize of 0..255, then (x - 128) / 128, as the TF graph of ADM's evaluator and
    torch-fidelity's Inception (the official evaluator's) compute it. 'pytorch-fid': x / 255, PyTorch's
    bilinear resize (half-pixel centres), then 2x - 1."""
    x = images.to(dtype)
    if pipeline == "tf1":
        x = (resize_tf1(x) - 128) / 128
    elif pipeline == "pytorch-fid":
        x = 2 * F.interpolate(x / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    else:
        raise ValueError(f"pipeline {pipeline!r} is not one of {', '.join(PIPELINES)}")
    return x


@contextlib.contextmanager
def exact_float32():
    """Convolutions and matmuls in full float32 within, whatever the caller set (TF32 would keep 10
    mantissa bits and move the features off the reference statistics); the caller's settings are restored
    after."""
    restore = set_tf32(False)
    try:
        yield
    finally:
        restore()


@torch.no_grad()
def features(model, images, pipeline="tf1"):
    """(pool_3 B x 2048, spatial B x 2023, logits B x 1008) of uint8 images B x 3 x H x W, in the model's
    dtype and exactly so: TF32 and autocast off whatever the caller set."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"features needs uint8 images B x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
    weight = next(model.parameters())
    x = inception_input(images.to(weight.device), pipeline, weight.dtype)
    with exact_float32(), torch.autocast(x.device.type, enabled=False):
        return model(x)


# ----------------------------------------------------------------------------------------------
# The metrics, from the features


class Moments:
    """Mean and covariance of feature vectors streamed batch by batch, in float64: the sums of the vectors
    and of their outer products, as the official evaluator keeps them (the covariance normalised by N - 1,
    as np.cov), taken about the first batch's mean so that a large common offset cannot cancel the spread."""

    def __init__(self, feats=None):
        self.n, self.shift, self.total, self.outer = 0, None, 0, 0
        if feats is not None:
            self.update(feats)

    def update(self, feats):
        x = torch.as_tensor(feats).double()
        if x.ndim != 2:
            raise ValueError(f"FID statistics need feature vectors N x D, got shape {tuple(x.shape)}")
        if self.shift is None:
            self.shift = x.mean(0)
        x = x - self.shift
        self.n += len(x)
        self.total = self.total + x.sum(0)
        self.outer = self.outer + x.T @ x

    def statistics(self):
        """(mu, sigma) as float64 numpy arrays."""
        if self.n < 2:
            raise ValueError(f"FID statistics need at least 2 feature vectors, got {self.n}")
        mean = self.total / self.n
        sigma = (self.outer - torch.outer(self.total, mean)) / (self.n - 1)
        return (self.shift + mean).cpu().numpy(), sigma.cpu().numpy()


def statistics(feats):
    """Mean and covariance (float64) of N x D features."""
    return Moments(feats).statistics()


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2). The trace of the principal
    root is the sum of the roots of the product's eigenvalues: the number scipy's sqrtm gives pytorch-fid,
    ADM and the official evaluator, in a fraction of the time. Rounding leaves a singular product's zero
    eigenvalues slightly negative or complex; an imaginary part of the trace beyond pytorch-fid's tolerance
    means the covariances are not valid."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"statistics do not match: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {sigma1.shape} vs {sigma2.shape}")
    if not all(np.isfinite(a).all() for a in (mu1, sigma1, mu2, sigma2)):
        raise ValueError("statistics contain NaN or infinity")
    tr_covmean = np.sqrt(np.linalg.eigvals(sigma1 @ sigma2).astype(np.complex128)).sum()
    if abs(tr_covmean.imag) > 1e-3:
        raise ValueError(f"matrix square root has a large imaginary part ({tr_covmean.imag:.3g}): "
                         "the covariances are not valid (too few images, or non-finite features?)")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean.real)


class InceptionScore:
    """exp(mean KL(p(y|x) || p(y))) from the logits, streamed: per split of `split_size` consecutive
    images (None: all in one) the sums of p(y|x) and of p log p, in float64; the score is the mean over
    splits. ADM: splits of IS_SPLIT, the last one partial, eps 0; the official evaluator: one split,
    eps 1e-16 inside the logarithms."""

    def __init__(self, split_size=IS_SPLIT, eps=0.0):
        self.split_size, self.eps = split_size or sys.maxsize, eps
        self.splits = []  # [images, sum of p, sum of p log p] per split

    def update(self, logits):
        p = torch.softmax(torch.as_tensor(logits).double(), 1)
        while len(p):
            if not self.splits or self.splits[-1][0] == self.split_size:
                self.splits.append([0, 0, 0])
            split = self.splits[-1]
            part, p = p[:self.split_size - split[0]], p[self.split_size - split[0]:]
            split[0] += len(part)
            split[1] = split[1] + part.sum(0)
            split[2] = split[2] + torch.xlogy(part, part + self.eps).sum()

    def score(self):
        if not self.splits:
            raise ValueError("the Inception Score needs at least one image")
        kl = [(plogp - torch.xlogy(total, total / n + self.eps).sum()) / n for n, total, plogp in self.splits]
        return float(torch.stack(kl).exp().mean())


def inception_score(logits, split_size=IS_SPLIT, eps=0.0):
    """The Inception Score of N x 1008 logits (see InceptionScore)."""
    score = InceptionScore(split_size, eps)
    score.update(logits)
    return score.score()


def squared_distances(u, v):
    """Pairwise squared Euclidean distances as ADM's DistanceBlock computes them, |u|^2 - 2 u.v + |v|^2
    clamped at 0, in float64 where ADM's float16 makes its own results depend on the hardware."""
    u, v = u.double(), v.double()
    return ((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None]).clamp_min(0)


def manifold_radii(feats, k=NEIGHBOURS):
    """Squared distance of each vector to its k-th nearest neighbour (itself not counted), in row blocks."""
    if len(feats) <= k:
        raise ValueError(f"precision and recall need more than {k} images on each side, got {len(feats)}")
    rows = max(1, BLOCK // len(feats))
    return torch.cat([squared_distances(feats[i:i + rows], feats).kthvalue(k + 1, 1).values
                      for i in range(0, len(feats), rows)])


@torch.no_grad()
def precision_recall(ref, sample, k=NEIGHBOURS):
    """Improved precision and recall (Kynkaenniemi et al. 2019) as ADM computes them, with exact
    distances, on N x D features (on any device): precision, the share of samples inside some reference
    vector's k-NN ball; recall, the share of reference vectors inside some sample's. Distances in blocks
    of BLOCK, never all pairs at once."""
    ref_radii, sample_radii = manifold_radii(ref, k), manifold_radii(sample, k)
    sample_in = torch.zeros(len(sample), dtype=torch.bool, device=sample.device)
    ref_in = torch.zeros(len(ref), dtype=torch.bool, device=ref.device)
    rows = max(1, BLOCK // len(ref))
    for i in range(0, len(sample), rows):
        d = squared_distances(sample[i:i + rows], ref)
        sample_in[i:i + rows] = (d <= ref_radii[None]).any(1)
        ref_in |= (d <= sample_radii[i:i + rows, None]).any(0)
    return sample_in.double().mean().item(), ref_in.double().mean().item()


# ----------------------------------------------------------------------------------------------
# The official TiTok evaluator: a tokenizer's reconstructions against the originals


def truncate_uint8(images):
    """Float images in [0, 1] to uint8 as the official evaluator converts them: (x * 255).to(uint8), which
    truncates (reconstructions rounded to k / 255 first, as the official trainer does, stay k)."""
    return (images * 255).to(torch.uint8)


class TokenizerEvaluator:
    """The official evaluator's numbers (bytedance/1d-tokenizer evaluator/evaluator.py, the released
    tokenizers' rFID): with `model` (load_inception in float64, as it runs torch-fidelity's Inception) the
    rFID, from float64 sums, and the reconstructions' Inception Score over all images in one split; with
    `codebook_size`, the codebook's usage (share of its codes used) and entropy (bits) of the codes.
    `update(real, fake, codes)` takes float images in [0, 1] and truncates them as it does."""

    def __init__(self, model=None, codebook_size=0, pipeline="tf1"):
        self.model, self.codebook_size, self.pipeline = model, codebook_size, pipeline
        self.real, self.fake, self.score = Moments(), Moments(), InceptionScore(split_size=None, eps=1e-16)
        self.counts = torch.zeros(codebook_size, dtype=torch.float64)

    def update(self, real, fake, codes=None):
        if self.model is not None:
            pool_fake, _, logits = features(self.model, truncate_uint8(fake), self.pipeline)
            self.real.update(features(self.model, truncate_uint8(real), self.pipeline)[0])
            self.fake.update(pool_fake)
            self.score.update(logits)
        if self.codebook_size and codes is not None:
            self.counts += torch.bincount(codes.flatten().cpu(), minlength=self.codebook_size).double()

    def result(self):
        """{'rfid', 'inception_score'} with a model, {'codebook_usage', 'codebook_entropy'} with a codebook."""
        out = {}
        if self.model is not None:
            out["rfid"] = frechet_distance(*self.real.statistics(), *self.fake.statistics())
            out["inception_score"] = self.score.score()
        if self.codebook_size:
            p = self.counts / self.counts.sum()
            out["codebook_usage"] = (self.counts > 0).double().mean().item()
            out["codebook_entropy"] = -(p * torch.log2(p + 1e-8)).sum().item()
        return out


def to_uint8(images):
    """Float images in [0, 1] to uint8, as saving them to PNG would."""
    return images.clamp(0, 1).mul(255).round().to(torch.uint8)


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


def must_exist(path):
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} does not exist; pass an image folder or an .npz")


def stored_statistics(path):
    """What a side holds besides images: {'pool': (mu, sigma), 'spatial': (mu_s, sigma_s)}, each where the
    .npz has it (ADM's reference batches hold both), and whether it holds images (an image folder, or
    arr_0 in the .npz)."""
    must_exist(path)
    if Path(path).suffix != ".npz":
        if not Path(path).is_dir():
            raise FileNotFoundError(f"{path} is neither an image folder nor an .npz file")
        return {}, True
    try:
        f = np.load(path)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path} is damaged or not an .npz ({type(e).__name__}: {str(e).split('. ')[0]}); pass "
                         "images (arr_0, as sample.py writes) or statistics (mu, sigma, as --save_stats writes)") from e
    with f:
        stored = {kind: (f[mu].astype(np.float64), f[sigma].astype(np.float64))
                  for kind, mu, sigma in (("pool", "mu", "sigma"), ("spatial", "mu_s", "sigma_s"))
                  if mu in f.files and sigma in f.files}
        if not stored and "arr_0" not in f.files:
            raise ValueError(f"{path} holds neither images (arr_0) nor statistics (mu, sigma): keys {f.files}")
        return stored, "arr_0" in f.files


def progress(n, total, t0):
    print(f"\r{n}/{total} images, {n / (time.time() - t0):.1f} images/s", end="", file=sys.stderr, flush=True)


def activations(model, total, batches, pipeline="tf1"):
    """One pass of the Inception over uint8 batches, with a progress line on stderr -> {'pool', 'spatial':
    Moments, 'score': InceptionScore (ADM's splits), 'features': pool_3 (N x 2048, on the CPU, for
    precision and recall)}."""
    out, feats, t0 = {"pool": Moments(), "spatial": Moments(), "score": InceptionScore()}, [], time.time()
    for images in batches:
        pool, spatial, logits = features(model, images, pipeline)
        out["pool"].update(pool)
        out["spatial"].update(spatial)
        out["score"].update(logits)
        feats.append(pool.float().cpu())
        progress(sum(map(len, feats)), total, t0)
    print(file=sys.stderr)
    out["features"] = torch.cat(feats) if feats else torch.zeros(0, 2048)
    return out


def measure(path, model, batch_size=50, workers=0, pipeline="tf1"):
    """What the metrics need of one side: {'pool': (mu, sigma) or None, 'spatial': (mu_s, sigma_s) or
    None, 'score': Inception Score or None, 'features': pool_3 or None}. Stored statistics are used where
    present, as ADM does; images are run through `model` (None: the side must be statistics)."""
    stored, has_images = stored_statistics(path)
    side = {"score": None, "features": None, **{kind: stored.get(kind) for kind in ("pool", "spatial")}}
    if stored and has_images:
        print(f"{path}: the FID and sFID use its stored statistics (as ADM's evaluator does), its images "
              "(arr_0) the Inception Score and precision and recall", file=sys.stderr)
    if has_images:
        total, batches = npz_batches(path, batch_size) if Path(path).suffix == ".npz" else \
            folder_batches(path, batch_size, workers)
        acts = activations(model, total, batches, pipeline)
        for kind in ("pool", "spatial"):
            side[kind] = side[kind] or acts[kind].statistics()
        side["score"], side["features"] = acts["score"].score(), acts["features"]
    return side


def report(sample, ref, names, device="cpu"):
    """ADM's five lines (Inception Score, FID, sFID, Precision, Recall), each metric the two sides allow;
    one line instead for each that they do not, saying why."""
    lines = []
    if sample["score"] is not None:
        lines.append(f"Inception Score: {sample['score']}")
    else:
        lines.append(f"skipped the Inception Score: {names[0]} holds statistics, not images")
    for kind, metric, keys in (("pool", "FID", "mu, sigma"), ("spatial", "sFID", "mu_s, sigma_s")):
        missing = [name for name, side in zip(names, (sample, ref)) if side[kind] is None]
        if missing:
            lines.append(f"skipped the {metric}: no images nor {keys} in {' and '.join(missing)}")
        else:
            lines.append(f"{metric}: {frechet_distance(*sample[kind], *ref[kind])}")
    missing = [name for name, side in zip(names, (sample, ref)) if side["features"] is None]
    if missing:
        lines.append(f"skipped precision and recall: no images (arr_0) in {' and '.join(missing)}, only statistics")
    else:
        precision, recall = precision_recall(ref["features"].to(device), sample["features"].to(device))
        lines += [f"Precision: {precision}", f"Recall: {recall}"]
    if all(line.startswith("skipped") for line in lines):
        raise ValueError(f"{names[0]} and {names[1]} share no statistics to compare: " + "; ".join(lines))
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("paths", nargs="*", help="samples and reference (folder, images .npz, statistics .npz or both); "
                                            "one with --save_stats")
    p.add_argument("--weights", help=f"path of {WEIGHTS_FILE} (default: $FID_WEIGHTS, then torch's hub cache)")
    p.add_argument("--save_stats", help="write the statistics (mu, sigma, mu_s, sigma_s) of the one side to this .npz")
    p.add_argument("--pipeline", default=PIPELINES[0],
                   help="the Inception's input: 'tf1' (ADM's and the official evaluator's: the paper's numbers) "
                        "or 'pytorch-fid'")
    p.add_argument("--batch_size", type=int, default=50)
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="image decoding processes")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    if len(args.paths) != (1 if args.save_stats else 2):
        raise ValueError(f"give two sides, SAMPLES REFERENCE, or one side and --save_stats=OUT.npz "
                         f"({len(args.paths)} given)")
    if args.pipeline not in PIPELINES:
        raise ValueError(f"--pipeline={args.pipeline}: pass one of {', '.join(PIPELINES)}")
    if args.batch_size < 1 or args.workers < 0:
        raise ValueError(f"--batch_size={args.batch_size} and --workers={args.workers}: the batch size must be > 0 and "
                         "the number of workers >= 0; pass such values")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device={args.device}, but torch sees no CUDA device; pass --device=cpu")
    for path in args.paths:  # before any file is read
        must_exist(path)
    needs_model = [stored_statistics(path)[1] for path in args.paths]  # every file checked before the weights load
    model = load_inception(args.weights, args.device) if any(needs_model) else None
    sides = [measure(path, model, args.batch_size, args.workers, args.pipeline) for path in args.paths]
    if args.save_stats:
        keys = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}  # ADM's reference batches' names
        np.savez(args.save_stats, **{key: value for kind, names in keys.items() if sides[0][kind] is not None
                                     for key, value in zip(names, sides[0][kind])})
        print(f"wrote {args.save_stats}")
        return
    for line in report(*sides, args.paths, args.device):
        print(line)


if __name__ == "__main__":
    try:
        main()
    except (OSError, ValueError, zipfile.BadZipFile) as e:  # missing or wrong files and values: the message says which
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)  # as argparse's own errors, and the other scripts' (configurator.fail)
