"""
The single-stage tokenizer's reconstruction losses, as TiTok's official code computes them
(bytedance/1d-tokenizer, modeling/modules/losses.py): pixel L1/L2, a perceptual loss (LPIPS over
VGG16, ConvNeXt-S's ImageNet logits, or a weighted mix of both), the quantizer's (or VAE's KL) loss,
and a patch-GAN with hinge loss and the LeCam regulariser (Tseng et al. 2021), which keeps the
discriminator's outputs near running means of its outputs on the other kind of image.
VGG16 and ConvNeXt-S are written out in plain PyTorch with torchvision's module names, so that
torchvision's weight files load as they are; this file never downloads anything.
"""
import math
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from weights import find_file, load_exact, read_state_dict

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


# ----------------------------------------------------------------------------------------------
# The perceptual loss, as the official perceptual_loss.py

PERCEPTUAL_NAMES = "'lpips', 'convnext_s' or 'lpips-convnext_s-A-B' (weights A, B >= 0 of the two, A + B > 0)"


def perceptual_mix(name):
    """The weights (A, B) of 'lpips-convnext_s-A-B', None for 'lpips' or 'convnext_s'; ValueError for other names."""
    if name in ("lpips", "convnext_s"):
        return None
    parts = name.split("-")
    try:
        mix = (float(parts[2]), float(parts[3])) if len(parts) == 4 and parts[:2] == ["lpips", "convnext_s"] else None
    except ValueError:
        mix = None
    if mix is None or min(mix) < 0 or sum(mix) <= 0:
        raise ValueError(f"unknown perceptual loss {name!r}, the names are {PERCEPTUAL_NAMES}; pick one of them")
    return mix


class PerceptualLoss(nn.Module):
    """name 'lpips': LPIPS per image (B, 1, 1, 1); 'convnext_s': the MSE of ConvNeXt-S's logits, a
    scalar; 'lpips-convnext_s-A-B': (A * LPIPS + B * ConvNeXt) / (A + B), per image. Frozen, always
    in eval. The weight paths: a file or a directory holding it (default: torch's hub cache)."""

    def __init__(self, name, vgg16_weights=None, lpips_weights=None, convnext_weights=None, load=True):
        """load=False: random weights (bench.py's speed measurements), no files read."""
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


# ----------------------------------------------------------------------------------------------
# The discriminator and its losses, as the official discriminator.py and losses.py


class BlurBlock(nn.Module):
    """2x downsampling by a depthwise (1,3,3,1)^2 / 64 blur, "same"-padded TensorFlow-style (for odd sizes the
    extra pixel goes bottom/right). `kernel` is a buffer in the state dict, as in the official."""

    def __init__(self):
        super().__init__()
        k = torch.tensor([1.0, 3.0, 3.0, 1.0])
        self.register_buffer("kernel", (k[None, :] * k[:, None] / 64)[None, None])

    def forward(self, x):
        ph, pw = [max((math.ceil(i / 2) - 1) * 2 + 4 - i, 0) for i in x.shape[-2:]]
        x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.kernel.expand(x.shape[1], -1, -1, -1), stride=2, groups=x.shape[1])


class NLayerDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> logits (B, 1, 16, 16): 5x5 stem, per stage a 3x3 conv, blur 2x
    downsampling, GroupNorm, LeakyReLU 0.1; adaptive max-pool to 16x16; 1x1 conv, 5x5 conv to one logit.
    The official Conv2dSame pads TensorFlow-style; at stride 1, as all its convs here, that is padding="same"."""

    def __init__(self, hidden_channels=128, num_stages=3):
        super().__init__()
        mult = [1] + [2 ** i for i in range(num_stages)]
        self.block_in = nn.Sequential(nn.Conv2d(3, hidden_channels, 5, padding="same"), nn.LeakyReLU(0.1))
        self.blocks = nn.ModuleList(nn.Sequential(
            nn.Conv2d(hidden_channels * mult[i], hidden_channels * mult[i + 1], 3, padding="same"), BlurBlock(),
            nn.GroupNorm(32, hidden_channels * mult[i + 1]), nn.LeakyReLU(0.1)) for i in range(num_stages))
        c = hidden_channels * mult[-1]
        self.pool = nn.AdaptiveMaxPool2d((16, 16))
        self.to_logits = nn.Sequential(nn.Conv2d(c, c, 1), nn.LeakyReLU(0.1), nn.Conv2d(c, 1, 5, padding="same"))

    def forward(self, x):
        x = self.block_in(x)
        for block in self.blocks:
            x = block(x)
        return self.to_logits(self.pool(x))


def hinge_d_loss(logits_real, logits_fake):
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())  # the official 0.5


def lecam_loss(real_mean, fake_mean, ema_real, ema_fake):
    """Penalise the real logits' mean above the fakes' running mean, and the fakes' below the reals'."""
    return torch.mean(F.relu(real_mean - ema_fake) ** 2) + torch.mean(F.relu(ema_real - fake_mean) ** 2)


def adversarial_loss(logits_fake):
    """The tokenizer's side of the GAN (the official 'generator loss'): raise the discriminator's logits."""
    return -torch.mean(logits_fake)


# ----------------------------------------------------------------------------------------------
# The whole loss, as the official ReconstructionLoss_Stage2 / ReconstructionLoss_Single_Stage


class ReconstructionLoss(nn.Module):
    """The tokenizer's loss (rec + perceptual + quantizer or KL + GAN; the official 'generator mode') and the
    discriminator's (hinge + LeCam),
    in fp32. It holds the PerceptualLoss (None when perceptual_weight == 0) and the LeCam running means,
    not the discriminator: the trainer owns that. Each term in the returned dicts is as it enters the total
    (weighted), and detached; commitment, codebook, gan_raw and the logits' means are the unweighted extras."""

    def __init__(self, reconstruction_loss="l2", reconstruction_weight=1.0, perceptual=None, perceptual_weight=1.1,
                 discriminator_start=0, discriminator_weight=0.1, discriminator_factor=1.0,
                 lecam_weight=0.001, lecam_decay=0.999, quantizer_weight=1.0, kl_weight=1e-6):
        super().__init__()
        if reconstruction_loss not in ("l1", "l2"):
            raise ValueError(f"reconstruction_loss {reconstruction_loss!r} is not 'l1' or 'l2'; pick one of them")
        if perceptual_weight > 0 and perceptual is None:
            raise ValueError(f"perceptual_weight is {perceptual_weight} but no PerceptualLoss was given; "
                             "pass one, or set perceptual_weight=0")
        self.reconstruction_loss, self.reconstruction_weight = reconstruction_loss, reconstruction_weight
        self.perceptual, self.perceptual_weight = (perceptual if perceptual_weight > 0 else None), perceptual_weight
        self.discriminator_start, self.discriminator_weight = discriminator_start, discriminator_weight
        self.discriminator_factor, self.lecam_weight, self.lecam_decay = discriminator_factor, lecam_weight, lecam_decay
        self.quantizer_weight, self.kl_weight = quantizer_weight, kl_weight
        self.register_buffer("ema_real", torch.zeros(()))  # LeCam: running means of the logits (checkpointed)
        self.register_buffer("ema_fake", torch.zeros(()))

    def factor(self, step):
        return self.discriminator_factor if step >= self.discriminator_start else 0.0

    def gan_on(self, step):
        return self.factor(step) > 0 and self.discriminator_weight > 0

    def tokenizer_loss(self, images, recon, bottleneck_losses, step, discriminator=None):
        """images, recon in [0, 1]; bottleneck_losses {"commitment", "codebook"} (VQ) or {"kl"} (VAE, the sum of
        the KL over a batch / B). The discriminator, called only when gan_on(step), gets no gradient from here."""
        with torch.autocast(images.device.type, enabled=False):
            images, recon = images.float().contiguous(), recon.float().contiguous()
            rec_fn = F.mse_loss if self.reconstruction_loss == "l2" else F.l1_loss
            rec = self.reconstruction_weight * rec_fn(images, recon)
            perceptual = self.perceptual(images, recon).mean() if self.perceptual is not None else images.new_zeros(())
            gan = images.new_zeros(())
            if self.gan_on(step):
                assert discriminator is not None, f"step {step} has the GAN on: pass the discriminator"
                params = list(discriminator.parameters())
                flags = [p.requires_grad for p in params]
                discriminator.requires_grad_(False)
                gan = adversarial_loss(discriminator(recon))
                for p, flag in zip(params, flags):
                    p.requires_grad_(flag)
            if "kl" in bottleneck_losses:  # VAE (the official also divides rec by exp(logvar), logvar fixed at 0)
                bottleneck = self.kl_weight * bottleneck_losses["kl"]
                terms = {"kl": bottleneck}
            else:
                commitment, codebook = bottleneck_losses["commitment"], bottleneck_losses["codebook"]
                bottleneck = self.quantizer_weight * (commitment + codebook)
                terms = {"quantizer": bottleneck, "commitment": commitment, "codebook": codebook}
            weighted_gan = self.discriminator_weight * self.factor(step) * gan
            total = rec + self.perceptual_weight * perceptual + bottleneck + weighted_gan
        terms |= {"total": total, "rec": rec, "perceptual": self.perceptual_weight * perceptual, "gan": weighted_gan,
                  "gan_raw": gan, "d_factor": torch.tensor(self.factor(step))}
        return total, {k: v.detach() for k, v in terms.items()}

    def discriminator_loss(self, images, recon, step, discriminator):
        """factor * hinge + lecam_weight * LeCam against the current running means (update_lecam moves them)."""
        with torch.autocast(images.device.type, enabled=False):
            # one call on both (every layer acts per image): a DDP-wrapped discriminator runs one forward per backward
            logits_real, logits_fake = discriminator(torch.cat([images.float(), recon.float()]).detach()).chunk(2)
            hinge = self.factor(step) * hinge_d_loss(logits_real, logits_fake)
            real, fake = logits_real.mean(), logits_fake.mean()
            lecam = torch.zeros_like(hinge)
            if self.lecam_weight > 0:
                lecam = lecam_loss(real, fake, self.ema_real, self.ema_fake) * self.lecam_weight
            total = hinge + lecam
        terms = {"total": total, "d_hinge": hinge, "lecam": lecam, "logits_real": real, "logits_fake": fake}
        return total, {k: v.detach() for k, v in terms.items()}

    @torch.no_grad()
    def update_lecam(self, real_mean, fake_mean):
        """Move the running means towards this optimizer step's logits means (of the global batch under DDP)."""
        for ema, mean in ((self.ema_real, real_mean), (self.ema_fake, fake_mean)):
            ema.copy_(ema * self.lecam_decay + mean * (1 - self.lecam_decay))  # the official arithmetic
