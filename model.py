"""
TiTok: a 1D image tokenizer. A ViT encoder reads the image patches together with K learned
latent tokens and keeps only the K latent outputs; each is quantized to one integer code. A ViT
decoder reads the K quantized tokens together with H*W mask tokens and predicts the image.
layout '2d' is the paper's 2D baseline with the same ViTs: the g*g patch outputs are the tokens.
Two settings, off by default, are not in the paper: ordered_tokens (the decoder learns to read any first k of the K
tokens: coarse to fine) and quantize_mode 'fsq' (quantizer.FiniteScalarQuantizer).
This file is the model of the paper and of the released single-stage tokenizers (the bottlenecks are in
quantizer.py). The paper's two-stage recipe extends it in two_stage/, checkpoints.py loads trained weights into
it and released/ the released ones, and aids/ holds what only a CPU budget needs.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantizer import FiniteScalarQuantizer, GaussianBottleneck, VectorQuantizer


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (flash / memory-efficient SDPA)."""

    def __init__(self, dim, heads, qkv_bias=True, dropout=0.0):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, dim, hidden, dropout=0.0):
        super().__init__()
        self.fc = nn.Linear(dim, hidden)
        self.proj = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim, heads, mlp_ratio=4.0, qkv_bias=True, eps=1e-5):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.ln_2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------------------------
# TiTok

PRESETS = {  # ViT sizes of the paper, and the tiny ones the CPU demo and the tests use
    "S": dict(width=512, depth=8, heads=8),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "tiny": dict(width=128, depth=4, heads=4),
    "mini": dict(width=64, depth=2, heads=2),
    "micro": dict(width=32, depth=1, heads=2),
}


@dataclass
class TiTokConfig:
    image_size: int = 256
    patch_size: int = 16
    width: int = 1024  # the encoder's ViT, and the decoder's unless decoder_* say otherwise
    depth: int = 24
    heads: int = 16
    decoder_width: int = None  # None: as the encoder (the released single-stage models: a ViT-L decoder)
    decoder_depth: int = None
    decoder_heads: int = None
    num_latent_tokens: int = 32  # K: the length of the code sequence (layout '2d': must be g*g)
    token_size: int = 12  # dimension of a latent token at the bottleneck
    quantize_mode: str = "vq"  # "vq": K integer codes; "fsq": K integer codes of a fixed grid; "vae": K continuous tokens
    codebook_size: int = 4096
    fsq_levels: list = None  # fsq: the values of each of the token_size dims, e.g. [8, 5, 5, 5]: 1,000 codes of 4 dims
    use_l2_norm: bool = True  # vq: nearest code on the unit sphere (the paper) or by raw distance (VQ-8k models)
    commitment_cost: float = 0.25
    layout: str = "1d"  # "1d": K latent tokens; "2d": the g*g patch tokens are the codes (2D baseline)
    ordered_tokens: bool = False  # the decoder reads a learned token in place of each dropped one: decode(first k codes)

    def __post_init__(self):
        """Fills the decoder's size, and checks what a user can set wrong: ValueError, one line."""
        self.decoder_width = self.decoder_width or self.width
        self.decoder_depth = self.decoder_depth or self.depth
        self.decoder_heads = self.decoder_heads or self.heads
        p, g, levels = self.patch_size, self.grid_size, self.fsq_levels or []
        fsq = self.quantize_mode == "fsq"
        grid = math.prod(levels) if levels and all(type(n) is int and n >= 2 for n in levels) else 0  # FSQ's codes
        problems = [
            (self.image_size % p, f"image_size={self.image_size} is not a multiple of patch_size={p}: the encoder cuts the "
                                  f"image into {p}x{p} patches; set image_size to a multiple of {p} (or patch_size to a divisor)"),
            (self.layout not in ("1d", "2d"), f"layout must be '1d' or '2d', not {self.layout!r}"),
            (self.layout == "2d" and self.num_latent_tokens != g * g,
             f"layout '2d' has one token per patch: num_latent_tokens must be {g * g}, not {self.num_latent_tokens}"),
            (self.quantize_mode not in ("vq", "fsq", "vae"),
             f"quantize_mode must be 'vq', 'fsq' or 'vae', not {self.quantize_mode!r}"),
            (fsq and not grid, f"fsq_levels must be a list of integers >= 2 (the values of each dim), not {levels!r}"),
            (fsq and grid and (self.token_size, self.codebook_size) != (len(levels), grid), f"fsq_levels={levels} make "
             f"{grid} codes of {len(levels)} dims: set token_size={len(levels)} and codebook_size={grid} to agree"),
            (self.ordered_tokens and self.layout != "1d", f"ordered_tokens drops the tail of a 1D token sequence, and "
             f"layout={self.layout!r} has none: set layout='1d' or ordered_tokens=False"),
            (self.width % self.heads or self.decoder_width % self.decoder_heads,
             f"a ViT's width ({self.width}, {self.decoder_width}) must be a multiple of its heads ({self.heads}, "
             f"{self.decoder_heads})")]
        for bad, message in problems:
            if bad:
                raise ValueError(message)

    @property
    def grid_size(self):
        return self.image_size // self.patch_size


def _param(*shape, scale):
    return nn.Parameter(scale * torch.randn(*shape))


class TiTokEncoder(nn.Module):
    """[class token, image patches, K latent tokens] -> ViT -> the K latent outputs -> token_size.
    Layout '2d': [class token, image patches] -> ViT -> the g*g patch outputs -> token_size."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale = cfg.width, cfg.width ** -0.5
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=scale)
        if cfg.layout == "1d":
            self.latent_tokens = _param(cfg.num_latent_tokens, w, scale=scale)
            self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        # a VAE's encoder gives a mean and a log-variance per token dim
        self.proj_out = nn.Linear(w, cfg.token_size * (2 if cfg.quantize_mode == "vae" else 1))

    def forward(self, images):
        B, K = images.shape[0], self.cfg.num_latent_tokens
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # B, g*g, w
        x = torch.cat([self.class_embedding.expand(B, -1, -1), x], dim=1) + self.positional_embedding
        if self.cfg.layout == "1d":
            latents = (self.latent_tokens + self.latent_token_positional_embedding).expand(B, -1, -1)
            x = torch.cat([x, latents], dim=1)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        # keep the last K outputs: the latent tokens (the image is now a 1D sequence), or in the 2D
        # layout, where K = g*g, the patch outputs in raster order
        return self.proj_out(self.ln_post(x[:, -K:]))  # B, K, token_size (vae: 2 * token_size)


class TiTokDecoder(nn.Module):
    """[class token, g*g mask tokens, K quantized tokens] -> ViT -> the g*g patch outputs -> pixels.
    Layout '2d': [class token, g*g quantized tokens at their patches] -> ViT -> the same outputs.
    ordered_tokens: an image's first k tokens, then the learned dropped_token in each of the K - k places after."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale = cfg.decoder_width, cfg.decoder_width ** -0.5
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=scale)
        if cfg.layout == "1d":
            self.mask_token = _param(1, 1, w, scale=scale)
            self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        if cfg.ordered_tokens:
            self.dropped_token = _param(1, 1, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.decoder_heads) for _ in range(cfg.decoder_depth))
        self.ln_post = nn.LayerNorm(w)
        self.add_head(cfg)

    def add_head(self, cfg):
        """The pixel head (two_stage.ProxyDecoder overrides it): per patch, p*p RGB values, then a 3x3 conv
        that smooths the seams between patches."""
        self.head = nn.Linear(cfg.decoder_width, cfg.patch_size ** 2 * 3)
        self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z_q, keep=None):
        """z_q (B, K, token_size) -> images (B, 3, H, W); ordered_tokens: patch_outputs' k <= K tokens and keep."""
        return self.conv_out(self.unpatchify(self.head(self.patch_outputs(z_q, keep))))

    def unpatchify(self, x):
        """(B, g*g, p*p*3) -> (B, 3, g*p, g*p): each patch's values in place."""
        B, g = x.shape[0], self.cfg.grid_size
        p = round((x.shape[-1] // 3) ** 0.5)
        return x.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)

    def patch_outputs(self, z_q, keep=None):
        """The ViT: z_q (B, K, token_size) -> (B, g*g, width), one output per patch. ordered_tokens: z_q may hold only
        the first k <= K tokens, and keep (B,) says how many of them each image keeps (None: all)."""
        B, g = z_q.shape[0], self.cfg.grid_size
        cls = self.class_embedding.expand(B, -1, -1)
        if self.cfg.layout == "2d":  # each token sits at its own patch: no mask tokens needed
            x = torch.cat([cls, self.decoder_embed(z_q)], dim=1) + self.positional_embedding
        else:
            masks = torch.cat([cls, self.mask_token.expand(B, g * g, -1)], dim=1) + self.positional_embedding
            tokens = self.decoder_embed(z_q)
            if self.cfg.ordered_tokens:  # the learned dropped_token past the first k tokens, or past an image's keep
                K = self.cfg.num_latent_tokens
                tokens = torch.cat([tokens, self.dropped_token.expand(B, K - tokens.shape[1], -1)], dim=1)
                if keep is not None:
                    kept = torch.arange(K, device=tokens.device) < keep[:, None]
                    tokens = torch.where(kept[..., None], tokens, self.dropped_token)
            x = torch.cat([masks, tokens + self.latent_token_positional_embedding], dim=1)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 1:1 + g * g])


class TiTok(nn.Module):
    Decoder = TiTokDecoder  # two_stage.TwoStageTiTok's predicts the proxy codes of a 2D teacher instead of pixels

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.encoder = TiTokEncoder(cfg)
        if cfg.quantize_mode == "vq":
            self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost, cfg.use_l2_norm)
        elif cfg.quantize_mode == "fsq":
            self.quantizer = FiniteScalarQuantizer(cfg.fsq_levels)
        else:
            self.quantizer = GaussianBottleneck()
        self.decoder = self.Decoder(cfg)
        self.encoder_frozen = False

    def encode(self, images):
        """images (B, 3, H, W) in [0, 1] -> codes (B, K): a 1D sequence of integers (vae: the posterior
        means (B, K, token_size)). No side effects: the codebook's usage bookkeeping is the training forward's."""
        return self.quantizer.encode(self.encoder(images))

    def decode(self, tokens):
        """codes (B, K) (vae: latents (B, K, token_size)) -> images (B, 3, H, W), nominally in [0, 1] (not clamped).
        ordered_tokens: the first k <= K codes (B, k) of each image."""
        k, K, ordered = tokens.shape[1], self.config.num_latent_tokens, self.config.ordered_tokens
        if not (k == K or ordered and k < K):  # a wrong count fails here, not as a shape deep in the decoder
            raise ValueError(f"{k} codes per image: this model decodes {'at most' if ordered else 'exactly'} K={K}")
        return self.decoder(self.quantizer.decode(tokens))

    def forward(self, images, keep=None):
        """images -> (reconstruction, bottleneck losses); in training mode a VAE samples its latent. ordered_tokens:
        keep (B,) decodes image b from its first keep[b] tokens (the trainer draws it; None: all K)."""
        z_q, codes, losses = self.quantizer(self.encoder(images))
        return self.decoder(z_q, keep), losses

    def freeze_encoder(self):
        """The encoder and the quantizer, and so the codes, stay as they are (the paper's stage 2, or a fine-tuning
        that keeps a generator's codes valid); they also stay in eval mode (a VAE encodes its mean)."""
        self.encoder.requires_grad_(False)
        self.quantizer.requires_grad_(False)
        self.encoder_frozen = True
        return self.train(self.training)

    def train(self, mode=True):
        super().train(mode)
        if self.encoder_frozen:
            self.encoder.eval()
            self.quantizer.eval()
        return self

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay the weights of linear and conv layers; not biases, norms, embeddings, tokens, codebooks
        decay = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
