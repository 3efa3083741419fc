"""
The single-stage tokenizer's reconstruction losses, as TiTok's official code computes them
(bytedance/1d-tokenizer, modeling/modules/losses.py): pixel L1/L2, a perceptual loss (LPIPS over
VGG16, ConvNeXt-S's ImageNet logits, or a weighted mix of both: nets/perceptual.py, loaded only by a run
that uses it), the quantizer's (or VAE's KL) loss, and a patch-GAN with hinge loss and the LeCam
regulariser (Tseng et al. 2021), which keeps the discriminator's outputs near running means of its outputs
on the other kind of image. All of it in float32, as the official code computes it.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# The perceptual loss's name (its networks: nets/perceptual.py)

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
        """images, recon in [0, 1]; bottleneck_losses {"commitment", "codebook"} (VQ), {"kl"} (VAE, the sum of
        the KL over a batch / B) or {} (FSQ). The discriminator, called only when gan_on(step), gets no gradient from
        here."""
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
            elif not bottleneck_losses:  # FSQ: nothing to learn at the bottleneck
                bottleneck, terms = images.new_zeros(()), {}
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
