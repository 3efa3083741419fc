"""
TiTok: a 1D image tokenizer. A ViT encoder reads the image patches together with K learned
latent tokens and keeps only the K latent outputs; each is quantized to one integer code. A ViT
decoder reads the K quantized tokens together with H*W mask tokens and predicts the image.
The whole model is in this file, except the vector quantizer (quantizer.py) and the
convolutional MaskGIT-VQGAN pixel decoder used by the two-stage recipe (vqgan.py).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantizer import VectorQuantizer


class Attention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (flash / memory-efficient SDPA)."""

    def __init__(self, dim, heads, qkv_bias=True, dropout=0.0):
        super().__init__()
        assert dim % heads == 0, f"width {dim} is not divisible by {heads} heads"
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
    "micro": dict(width=32, depth=1, heads=2),
}


@dataclass
class TiTokConfig:
    image_size: int = 256
    patch_size: int = 16
    width: int = 1024
    depth: int = 24  # of the encoder, and again of the decoder
    heads: int = 16
    num_latent_tokens: int = 32  # K: the length of the 1D code sequence
    token_size: int = 12  # dimension of a latent token at the bottleneck
    codebook_size: int = 4096
    commitment_cost: float = 0.25
    usage_window: int = 1000
    dead_code_restart: bool = False
    head: str = "pixels"  # "pixels": predict RGB; "proxy": logits over a 2D teacher's codes (stage 1)
    proxy_codebook_size: int = 1024  # size of the teacher's codebook for the "proxy" head
    pixel_decoder: dict = None  # VQGAN decoder config: softmax(proxy logits) . codebook -> pixels (stage 2)
    legacy_reshape: bool = False  # the released checkpoints' encoder output scramble (see TiTokEncoder)

    @property
    def grid_size(self):
        return self.image_size // self.patch_size


def _param(*shape, scale):
    return nn.Parameter(scale * torch.randn(*shape))


class TiTokEncoder(nn.Module):
    """[class token, image patches, K latent tokens] -> ViT -> the K latent outputs -> token_size."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale = cfg.width, cfg.width ** -0.5
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=scale)
        self.latent_tokens = _param(cfg.num_latent_tokens, w, scale=scale)
        self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, cfg.token_size)

    def forward(self, images):
        B, K = images.shape[0], self.cfg.num_latent_tokens
        x = self.patch_embed(images).flatten(2).transpose(1, 2)  # B, g*g, w
        x = torch.cat([self.class_embedding.expand(B, -1, -1), x], dim=1) + self.positional_embedding
        latents = (self.latent_tokens + self.latent_token_positional_embedding).expand(B, -1, -1)
        x = self.ln_pre(torch.cat([x, latents], dim=1))
        for block in self.blocks:
            x = block(x)
        x = self.ln_post(x[:, -K:])  # keep only the latent tokens: the image is now a 1D sequence
        if self.cfg.legacy_reshape:
            # the released models reshaped (B, K, w) to (B, w, K) with no transpose before their
            # 1x1 conv; reproduce that scramble to use their weights
            x = x.reshape(B, -1, K).transpose(1, 2)
        return self.proj_out(x)  # B, K, token_size


class TiTokDecoder(nn.Module):
    """[class token, g*g mask tokens, K quantized tokens] -> ViT -> the g*g patch outputs -> head."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale, p = cfg.width, cfg.width ** -0.5, cfg.patch_size
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=scale)
        self.mask_token = _param(1, 1, w, scale=scale)
        self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        if cfg.head == "proxy":  # per patch, logits over the teacher's codebook (the official "ffn")
            self.head = nn.Sequential(nn.Linear(w, 2 * w), nn.Tanh(), nn.Linear(2 * w, cfg.proxy_codebook_size))
        else:  # per patch, p*p RGB values; a 3x3 conv then smooths the seams between patches
            self.head = nn.Linear(w, p * p * 3)
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, z_q):
        B, g, p = z_q.shape[0], self.cfg.grid_size, self.cfg.patch_size
        masks = torch.cat([self.class_embedding.expand(B, -1, -1), self.mask_token.expand(B, g * g, -1)], dim=1)
        latents = self.decoder_embed(z_q) + self.latent_token_positional_embedding
        x = self.ln_pre(torch.cat([masks + self.positional_embedding, latents], dim=1))
        for block in self.blocks:
            x = block(x)
        x = self.head(self.ln_post(x[:, 1:1 + g * g]))  # the mask tokens' outputs, one per patch
        if self.cfg.head == "proxy":
            return x.transpose(1, 2).reshape(B, -1, g, g)  # B, teacher codebook, g, g
        x = x.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
        return self.conv_out(x)


class TiTok(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.image_size % cfg.patch_size == 0, "image_size must be a multiple of patch_size"
        assert cfg.pixel_decoder is None or cfg.head == "proxy", "a pixel decoder reads proxy logits"
        self.config = cfg
        self.encoder = TiTokEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost,
                                         cfg.usage_window, cfg.dead_code_restart)
        self.decoder = TiTokDecoder(cfg)
        if cfg.pixel_decoder is not None:
            from vqgan import Decoder, VQGANConfig  # only the two-stage / released models need it
            vq_cfg = VQGANConfig.from_dict(cfg.pixel_decoder)
            self.pixel_codebook = nn.Parameter(torch.zeros(cfg.proxy_codebook_size, vq_cfg.z_channels))
            self.pixel_decoder = Decoder(vq_cfg)

    def encode(self, images):
        """images (B, 3, H, W) in [0, 1] -> codes (B, K): a 1D sequence of integers."""
        return self.quantizer(self.encoder(images))[1]

    def decode(self, codes):
        """codes (B, K) -> images (B, 3, H, W), nominally in [0, 1] (not clamped)."""
        return self.decode_tokens(self.quantizer.lookup(codes))

    def decode_tokens(self, z_q):
        x = self.decoder(z_q)
        if self.config.pixel_decoder is not None:
            # a soft, differentiable lookup of the teacher's codebook, then its convolutional decoder
            x = self.pixel_decoder(torch.einsum("bnhw,nd->bdhw", x.softmax(1), self.pixel_codebook))
        return x

    def forward(self, images):
        """images -> (decoder output, quantizer losses, codebook stats)."""
        z_q, codes, losses, stats = self.quantizer(self.encoder(images))
        return self.decode_tokens(z_q), losses, stats

    def configure_optimizers(self, weight_decay, learning_rate, betas, device_type):
        # decay the weights of linear and conv layers; not biases, norms, embeddings, tokens, codebooks
        decay = {id(m.weight) for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
        params = [p for p in self.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if id(p) in decay], "weight_decay": weight_decay},
                  {"params": [p for p in params if id(p) not in decay], "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=learning_rate, betas=betas, fused=device_type == "cuda")
