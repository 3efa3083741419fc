"""
The adversarial part of stage 2 (decoder finetuning): a patch-GAN discriminator that scores
overlapping patches of an image, its hinge loss, and the LeCam regulariser (Tseng et al. 2021),
which keeps the discriminator's outputs near running averages of its outputs on the other kind of
image; it stabilises GAN training on limited data. The layout follows TiTok's official
NLayerDiscriminator (5x5 stem, 3x3 conv + 2x downsampling + GroupNorm stages, LeakyReLU 0.1),
with average pooling for its blur and no final resize to 16x16.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> logits (B, 1, H / 2^stages, W / 2^stages), one per patch."""

    def __init__(self, width=128, stages=3, lecam_decay=0.999):
        super().__init__()
        assert width % 32 == 0, "the discriminator width must be a multiple of 32 (GroupNorm)"
        mult = [1] + [2 ** i for i in range(stages)]  # widths: w, w, 2w, 4w, ...
        layers = [nn.Conv2d(3, width, 5, padding=2), nn.LeakyReLU(0.1)]
        for i in range(stages):
            cin, cout = width * mult[i], width * mult[i + 1]
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.AvgPool2d(2), nn.GroupNorm(32, cout), nn.LeakyReLU(0.1)]
        layers += [nn.Conv2d(cout, cout, 1), nn.LeakyReLU(0.1), nn.Conv2d(cout, 1, 5, padding=2)]
        self.net = nn.Sequential(*layers)
        self.lecam_decay = lecam_decay
        # LeCam: running means of the logits on real and on reconstructed images (checkpointed)
        self.register_buffer("ema_real", torch.zeros(()))
        self.register_buffer("ema_fake", torch.zeros(()))

    def forward(self, images):
        return self.net(images)

    def loss(self, logits_real, logits_fake, lecam_weight):
        """The discriminator's loss: hinge + lecam_weight * LeCam. Updates the running means."""
        real, fake = logits_real.float().mean(), logits_fake.float().mean()
        hinge = 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())
        lecam = F.relu(real - self.ema_fake).pow(2) + F.relu(self.ema_real - fake).pow(2)
        with torch.no_grad():
            self.ema_real.lerp_(real, 1.0 - self.lecam_decay)
            self.ema_fake.lerp_(fake, 1.0 - self.lecam_decay)
        return hinge + lecam_weight * lecam


def generator_loss(logits_fake):
    """The adversarial loss of the generator (here: the decoders): raise the discriminator's logits."""
    return -logits_fake.float().mean()
