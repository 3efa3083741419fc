"""
MaskGIT-VQGAN: the convolutional VQGAN of MaskGIT (without VQGAN's attention layers), as ported to
PyTorch by open-muse and used by TiTok (bytedance/1d-tokenizer, modeling/modules/maskgit_vqgan.py).
TiTok needs it twice:
  - stage 1: its encoder + quantizer turn an image into a 16x16 grid of "proxy codes" (1024-way),
    the targets the 1D tokenizer learns to predict;
  - stage 2 / the released tokenizers: its Decoder is TiTok's `pixel_decoder`, reading
    softmax(proxy logits) . codebook.
Parameter names equal the official ones, so released weights load as they are. Images are
B x 3 x H x W in [0, 1] on both sides: the official model does no [-1, 1] rescaling.
"""
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import find_file, load_exact, read_config, read_state_dict

RELEASED_FILE = "maskgit-vqgan-imagenet-f16-256.bin"
RELEASED_URL = f"https://huggingface.co/fun-research/TiTok/resolve/main/{RELEASED_FILE}"


@dataclass
class VQGANConfig:
    """Defaults are the released ImageNet model (f16: a 256x256 image gives 16x16 codes)."""
    num_channels: int = 3  # image channels
    hidden_channels: int = 128  # widths are hidden_channels * channel_mult, multiples of 32 (GroupNorm)
    channel_mult: tuple = (1, 1, 2, 2, 4)  # one entry per resolution; each but the last halves H, W
    num_res_blocks: int = 2
    z_channels: int = 256  # dimension of a code vector
    num_embeddings: int = 1024  # codebook size
    dropout: float = 0.0

    def __post_init__(self):
        self.channel_mult = tuple(self.channel_mult)  # JSON gives a list

    @property
    def downsample_factor(self):
        return 2 ** (len(self.channel_mult) - 1)

    @classmethod
    def from_dict(cls, d):
        """From an official config dict: `num_resolutions` must agree with channel_mult and
        `resolution` is ignored (the model is fully convolutional); any other unknown key is an error."""
        d = dict(d)
        n = d.pop("num_resolutions", None)
        d.pop("resolution", None)
        if n is not None and n != len(d.get("channel_mult", cls.channel_mult)):
            raise ValueError(f"num_resolutions={n} disagrees with channel_mult={d.get('channel_mult')}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown VQGAN config keys: {sorted(unknown)}")
        return cls(**d)


def group_norm(channels):
    return nn.GroupNorm(32, channels, eps=1e-6)


def conv3x3(cin, cout, bias=True):
    return nn.Conv2d(cin, cout, 3, padding=1, bias=bias)  # = the official Conv2dSame at stride 1


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout, dropout=0.0):
        super().__init__()
        self.norm1 = group_norm(cin)
        self.conv1 = conv3x3(cin, cout, bias=False)
        self.norm2 = group_norm(cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(cout, cout, bias=False)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cout, cout, 1, bias=False)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        # When the width changes, the "shortcut" is applied to h, not to x: the input is dropped and
        # the block returns h + W h. That is a quirk of MaskGIT's original JAX code, which the
        # released weights were trained with and the PyTorch port keeps (hence W is cout x cout).
        return h + (self.nin_shortcut(h) if hasattr(self, "nin_shortcut") else x)


class DownBlock(nn.Module):
    def __init__(self, cin, cout, cfg, downsample):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, cfg.dropout)
                                   for i in range(cfg.num_res_blocks))
        self.downsample = downsample

    def forward(self, x):
        for block in self.block:
            x = block(x)
        return F.avg_pool2d(x, 2) if self.downsample else x


class UpBlock(nn.Module):
    def __init__(self, cin, cout, cfg, upsample):
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(cin if i == 0 else cout, cout, cfg.dropout)
                                   for i in range(cfg.num_res_blocks))
        if upsample:
            self.upsample_conv = conv3x3(cout, cout)

    def forward(self, x):
        for block in self.block:
            x = block(x)
        if hasattr(self, "upsample_conv"):
            x = self.upsample_conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        return x


class Encoder(nn.Module):
    """Images (B, 3, H, W) in [0, 1] -> latents (B, z_channels, H/f, W/f)."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in (1,) + cfg.channel_mult]  # conv_in width first
        n = len(cfg.channel_mult)
        self.conv_in = conv3x3(cfg.num_channels, widths[0], bias=False)
        self.down = nn.ModuleList(DownBlock(widths[i], widths[i + 1], cfg, downsample=i < n - 1) for i in range(n))
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1], cfg.dropout) for _ in range(cfg.num_res_blocks))
        self.norm_out = group_norm(widths[-1])
        self.conv_out = nn.Conv2d(widths[-1], cfg.z_channels, 1)

    def forward(self, x):
        x = self.conv_in(x)
        for block in [*self.down, *self.mid]:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    """Latents (B, z_channels, h, w) -> images (B, 3, h*f, w*f), nominally in [0, 1], unclamped."""

    def __init__(self, cfg):
        super().__init__()
        widths = [cfg.hidden_channels * m for m in cfg.channel_mult]
        n = len(widths)
        self.conv_in = conv3x3(cfg.z_channels, widths[-1])
        self.mid = nn.ModuleList(ResnetBlock(widths[-1], widths[-1], cfg.dropout) for _ in range(cfg.num_res_blocks))
        # up[i] works at the resolution of down[i], so up[n-1] (the coarsest) runs first and
        # up[0] (full resolution, no upsampling) last; that is the official parameter numbering
        self.up = nn.ModuleList(UpBlock(widths[min(i + 1, n - 1)], widths[i], cfg, upsample=i > 0) for i in range(n))
        self.norm_out = group_norm(widths[0])
        self.conv_out = conv3x3(widths[0], cfg.num_channels)

    def forward(self, z):
        x = self.conv_in(z)
        for block in [*self.mid, *reversed(self.up)]:
            x = block(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VQGAN(nn.Module):
    def __init__(self, cfg=None):
        super().__init__()
        self.config = cfg = cfg or VQGANConfig()
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        self.codebook = nn.Parameter(torch.zeros(cfg.num_embeddings, cfg.z_channels))  # official: quantize.embedding.weight

    @property
    def codebook_size(self):
        return self.config.num_embeddings

    @property
    def downsample_factor(self):
        """encode() gives (H / f) * (W / f) codes per image."""
        return self.config.downsample_factor

    @torch.no_grad()
    def encode(self, images):
        """Images (B, 3, H, W) in [0, 1] -> codes (B, H/f * W/f), raster order. In fp32 whatever the enclosing
        autocast, as the official code computes them: in bf16 near-ties round to other codes, and these codes
        are stage 1's targets."""
        with torch.autocast(images.device.type, enabled=False):
            z = self.encoder(images.float())
            B, C, h, w = z.shape
            z = z.permute(0, 2, 3, 1).reshape(-1, C)
            e = self.codebook.float()
            # plain nearest neighbour (no l2 normalisation); ||z||^2 + ||e||^2 - 2 z.e as the official code
            # computes it, so that near-ties round the same way
            dist = torch.addmm(z.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1), z, e.t(), alpha=-2.0)
            return dist.argmin(1).view(B, h * w)

    def decode(self, codes):
        """Codes (B, h*w) of a square grid, or (B, h, w) -> images (B, 3, h*f, w*f), unclamped."""
        if codes.dim() == 2:
            g = int(codes.shape[1] ** 0.5)
            assert g * g == codes.shape[1], f"{codes.shape[1]} codes do not form a square grid; pass (B, h, w)"
            codes = codes.view(-1, g, g)
        return self.decoder(self.codebook[codes].permute(0, 3, 1, 2))

    @classmethod
    def from_pretrained(cls, path, config=None):
        """`path`: the official .bin state dict, or a directory holding it. The config comes from
        `config` (a VQGANConfig or dict), else a config.json beside the weights, else the released one.
        Returns a frozen model in eval mode (it is a teacher / a fixed decoder)."""
        file = find_file(path, [RELEASED_FILE, "maskgit-vqgan.bin"], "MaskGIT-VQGAN weights", RELEASED_URL)
        config = config if config is not None else read_config(path)
        cfg = config if isinstance(config, VQGANConfig) else VQGANConfig.from_dict(config)
        sd = dict(read_state_dict(file))
        if "quantize.embedding.weight" in sd:
            sd["codebook"] = sd.pop("quantize.embedding.weight")
        model = cls(cfg)
        load_exact(model, sd, source=str(file))
        return model.eval().requires_grad_(False)
