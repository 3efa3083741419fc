"""
The perceptual loss of the official single-stage recipe (bytedance/1d-tokenizer,
modeling/modules/perceptual_loss.py): LPIPS over VGG16, ConvNeXt-S's ImageNet logits, or a weighted mix of
both. VGG16 and ConvNeXt-S are written out in plain PyTorch with torchvision's module names, so that
torchvision's weight files load as they are; this file never downloads anything. train_tokenizer.py imports
it only when perceptual_weight > 0.
"""
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import find_file, load_exact, read_state_dict
from losses import perceptual_mix

# kind -> (file name, where it is published, what it is)
WEIGHTS = {
    "vgg16": ("vgg16-397923af.pth", "https://download.pytorch.org/models/vgg16-397923af.pth",
              "torchvision's VGG16 weights"),
    "convnext_s": ("convnext_small-0c510722.pth", "https://download.pytorch.org/models/convnext_small-0c510722.pth",
                   "torchvision's ConvNeXt-Small weights"),
    "lpips": ("vgg.pth", "https://github.com/richzhang/PerceptualSimilarity/tree/master/lpips/weights/v0.1 (the pip "
              "package lpips ships it as lpips/weights/v0.1/vgg.pth)", "LPIPS' linear heads for VGG16"),
}


def load_weights(module, path, kind):
    """Load the `kind` weights at `path` (a file, or a directory holding it under its published name;
    default: torch's hub cache, where torchvision downloads) into `module`, every key and shape checked."""
    name, published, what = WEIGHTS[kind]
    file = find_file(path or Path(torch.hub.get_dir()) / "checkpoints" / name, [name], f"{name} ({what})", published)
    sd = read_state_dict(file)
    if kind == "vgg16":  # its classifier is not part of LPIPS
        sd = {k: v for k, v in sd.items() if not k.startswith("classifier.")}
    try:
        load_exact(module, sd, source=str(file))
    except ValueError as e:  # one line first (the trainer prints it), then load_exact's list of keys
        details = str(e).splitlines()[1:]
        more = [f"  ... and {len(details) - 10} more"] if len(details) > 10 else []
        raise ValueError(f"{file} is not {name} ({what}): {len(details)} keys or shapes do not fit; "
                         f"pass {name}, published at {published}\n" + "\n".join(details[:10] + more)) from None
    return module


# ----------------------------------------------------------------------------------------------
# LPIPS (Zhang et al. 2018) over VGG16, as the official lpips.py

VGG16 = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
TAPS = (3, 8, 15, 22, 29)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
CHANNELS = (64, 128, 256, 512, 512)


class VGG16Features(nn.Module):
    """torchvision's vgg16().features up to relu5_3 (its last max pool, features.30, is never used);
    forward -> the five LPIPS taps."""

    def __init__(self):
        super().__init__()
        layers, cin = [], 3
        for v in VGG16:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:  # inplace ReLUs as torchvision's: a tap is a ReLU output that only a max pool reads after
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)

    def forward(self, x):
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


def unit_channels(x, eps=1e-10):
    return x / (torch.sqrt(torch.sum(x ** 2, dim=1, keepdim=True)) + eps)  # lpips' normalize_tensor


class LPIPS(nn.Module):
    """Images in [0, 1] -> their LPIPS distance (B, 1, 1, 1): VGG features, unit-normalised over
    channels, squared differences, a learned non-negative 1x1 conv per tap, spatial mean, summed."""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        self.net = VGG16Features()
        for i, c in enumerate(CHANNELS):  # lpips' NetLinLayer: its Dropout (model.0) is a no-op, always in eval
            head = nn.Sequential(nn.Dropout(), nn.Conv2d(c, 1, 1, bias=False))
            setattr(self, f"lin{i}", nn.Sequential(OrderedDict(model=head)))  # keys lin{i}.model.1.weight

    @property
    def lins(self):
        return [getattr(self, f"lin{i}") for i in range(len(CHANNELS))]

    def taps(self, x):
        """The VGG taps of images in [0, 1], scaled to [-1, 1] (what LPIPS was trained on), then shifted."""
        return self.net((x * 2 - 1 - self.shift) / self.scale)

    def forward(self, input, target):
        pairs = zip(self.taps(input), self.taps(target))
        diffs = [(unit_channels(a) - unit_channels(b)) ** 2 for a, b in pairs]
        return sum(lin(d).mean((2, 3), keepdim=True) for lin, d in zip(self.lins, diffs))


# ----------------------------------------------------------------------------------------------
# ConvNeXt-S (Liu et al. 2022), as torchvision's convnext_small


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, H, W) tensor."""

    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class Permute(nn.Module):
    def __init__(self, *dims):
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(*self.dims)


class CNBlock(nn.Module):
    """x + layer_scale * (7x7 depthwise conv, LayerNorm, 4x MLP). Stochastic depth, a no-op in eval, is left out."""

    def __init__(self, dim):
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(dim, dim, 7, padding=3, groups=dim), Permute(0, 2, 3, 1), nn.LayerNorm(dim, eps=1e-6),
            nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), Permute(0, 3, 1, 2))
        self.layer_scale = nn.Parameter(torch.full((dim, 1, 1), 1e-6))

    def forward(self, x):
        return self.layer_scale * self.block(x) + x


class ConvNeXtSmall(nn.Module):
    """ImageNet-normalised 224x224 images -> 1,000 logits. features: stem, then per stage its blocks
    and (but after the last) a LayerNorm2d + 2x2 stride-2 conv downsampling."""

    def __init__(self, widths=(96, 192, 384, 768), depths=(3, 3, 27, 3)):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=4), LayerNorm2d(widths[0], eps=1e-6))]
        for i, (w, d) in enumerate(zip(widths, depths)):
            layers.append(nn.Sequential(*[CNBlock(w) for _ in range(d)]))
            if i + 1 < len(widths):
                layers.append(nn.Sequential(LayerNorm2d(w, eps=1e-6), nn.Conv2d(w, widths[i + 1], 2, stride=2)))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(LayerNorm2d(widths[-1], eps=1e-6), nn.Flatten(1), nn.Linear(widths[-1], 1000))

    def forward(self, x):
        return self.classifier(self.avgpool(self.features(x)))


class PerceptualLoss(nn.Module):
    """name 'lpips': LPIPS per image (B, 1, 1, 1); 'convnext_s': the MSE of ConvNeXt-S's logits, a
    scalar; 'lpips-convnext_s-A-B': (A * LPIPS + B * ConvNeXt) / (A + B), per image. Frozen, always
    in eval. The weight paths: a file or a directory holding it (default: torch's hub cache)."""

    def __init__(self, name, vgg16_weights=None, lpips_weights=None, convnext_weights=None, load=True):
        """load=False: random weights (tools/bench.py's speed measurements), no files read."""
        super().__init__()
        self.mix = perceptual_mix(name)
        self.lpips = self.convnext = None
        if name != "convnext_s":
            self.lpips = LPIPS()
            if load:
                load_weights(self.lpips.net, vgg16_weights, "vgg16")
                heads = nn.ModuleDict({f"lin{i}": lin for i, lin in enumerate(self.lpips.lins)})  # vgg.pth's keys
                load_weights(heads, lpips_weights, "lpips")
        if name != "lpips":
            self.convnext = ConvNeXtSmall()
            if load:
                load_weights(self.convnext, convnext_weights, "convnext_s")
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    def train(self, mode=True):
        return super().train(False)  # always eval: LPIPS' dropout off, whatever the trainer's mode

    def logits(self, x):
        """ConvNeXt-S's logits of images in [0, 1], resized to 224 and normalised as in its training."""
        x = F.interpolate(x, size=224, mode="bilinear", align_corners=False, antialias=True)
        return self.convnext((x - self.mean) / self.std)

    def convnext_loss(self, input, target):
        return F.mse_loss(self.logits(input), self.logits(target))

    def forward(self, input, target):
        losses = [self.lpips(input, target)] if self.lpips is not None else []
        losses += [self.convnext_loss(input, target)] if self.convnext is not None else []
        if self.mix is None:
            return losses[0]
        a, b = self.mix
        return (a * losses[0] + b * losses[1]) / (a + b)
