"""
The pixel-grid head, a small-budget aid of the photo recipe (not in the paper; aids/__init__.py): TiTok with
a pixel head that predicts a (p/u) x (p/u) colour grid per patch, upsampled (head_upsample = u), and the last
3x3 conv's border padding as conv_out_padding says. checkpoints.tokenizer_config builds it for checkpoints
whose model_args name these settings.
"""
from dataclasses import dataclass

import torch.nn as nn
import torch.nn.functional as F

from model import TiTok, TiTokConfig, TiTokDecoder


@dataclass
class SmallBudgetConfig(TiTokConfig):
    head_upsample: int = 1  # u > 1: the pixel head predicts a (p/u) x (p/u) colour grid per patch, upsampled
    conv_out_padding: str = "zeros"  # the pixel head's 3x3 conv at the image border: "zeros" (official) or "replicate"

    def __post_init__(self):
        super().__post_init__()
        p, u = self.patch_size, self.head_upsample
        if self.conv_out_padding not in ("zeros", "replicate"):
            raise ValueError(f"conv_out_padding must be 'zeros' or 'replicate', not {self.conv_out_padding!r}")
        if u < 1 or p % u:
            raise ValueError(f"head_upsample={u} does not divide patch_size={p}: the pixel head predicts a {p}/{u} grid "
                             f"per patch; set head_upsample to a divisor of {p}")


class SmallBudgetDecoder(TiTokDecoder):
    def add_head(self, cfg):
        self.head = nn.Linear(cfg.decoder_width, (cfg.patch_size // cfg.head_upsample) ** 2 * 3)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1, padding_mode=cfg.conv_out_padding)

    def unpatchify(self, x):
        image = super().unpatchify(x)
        u = self.cfg.head_upsample
        return F.interpolate(image, scale_factor=u, mode="bilinear", align_corners=False) if u > 1 else image


class SmallBudgetTiTok(TiTok):
    """TiTok with the pixel-grid head and the conv's padding as SmallBudgetConfig says; the same ViTs."""
    Decoder = SmallBudgetDecoder


