"""
TiTok: a 1D image tokenizer. A ViT encoder reads the image patches together with K learned
latent tokens and keeps only the K latent outputs; each is quantized to one integer code. A ViT
decoder reads the K quantized tokens together with H*W mask tokens and predicts the image.
layout '2d' is the paper's 2D baseline with the same ViTs: the g*g patch outputs are the tokens.
The whole model is in this file, except the vector quantizer (quantizer.py) and the
convolutional MaskGIT-VQGAN pixel decoder used by the two-stage recipe (vqgan.py).
"""
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from quantizer import VectorQuantizer
from weights import find_file, load_exact, read_checkpoint, read_config, read_state_dict


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
    num_latent_tokens: int = 32  # K: the length of the code sequence (layout '2d': must be g*g)
    token_size: int = 12  # dimension of a latent token at the bottleneck
    codebook_size: int = 4096
    commitment_cost: float = 0.25
    usage_window: int = 1000
    dead_code_restart: bool = False
    layout: str = "1d"  # "1d": K latent tokens; "2d": the g*g patch tokens are the codes (2D baseline)
    head: str = "pixels"  # "pixels": predict RGB; "proxy": logits over a 2D teacher's codes (stage 1)
    proxy_codebook_size: int = 1024  # size of the teacher's codebook for the "proxy" head
    # softmax(proxy logits) . pixel codebook -> pixel decoder (stage 2): a VQGAN decoder config, or
    # {"titok": config of a layout-'2d' TiTok} whose ViT decoder reads its own 12-dim codes
    pixel_decoder: dict = None
    legacy_reshape: bool = False  # the released checkpoints' encoder output scramble (see TiTokEncoder)
    # layout '1d', init only: start the latents routed like a 2D tokenizer's tokens (see route_by_position)
    routing_init: bool = False

    @property
    def grid_size(self):
        return self.image_size // self.patch_size


def _param(*shape, scale):
    return nn.Parameter(scale * torch.randn(*shape))


@torch.no_grad()
def route_by_position(block, positional_embedding, latent_pos, latents_query, gain=3.0, copy=4.0):
    """TiTokConfig.routing_init: an init, no change to the architecture. With the default init every
    attention is near uniform, so every latent holds the same blend of the image and a small 1D
    tokenizer learns only the mean image for its first ~1,500 steps (README, "Results"). Here the
    first block starts as a router: latent j gets the position of patch j*g*g//K turned by a random
    rotation R, and attention scores R*position against position, so in the encoder latent j reads
    its patch and in the decoder each mask token reads the latents of its patch (> 90% of their
    attention; tests/test_model.py); value and output projections copy what is read (x `copy`).
    The model starts as a 2D tokenizer and is free to learn global tokens. R is what keeps a latent
    from reading itself: its own key (R*p) scores ~0 against its query (p), its patch's scores p . p."""
    w, K, n = latent_pos.shape[1], latent_pos.shape[0], positional_embedding.shape[0] - 1  # row 0: class
    R, eye = torch.linalg.qr(torch.randn(w, w))[0], torch.eye(w)
    latent_pos.copy_(positional_embedding[1 + torch.arange(K) * n // K] @ R.T)
    # q . k = x^T Wq^T Wk y: (Wq, Wk) = (R^T, I) when rotated latents query patches, (I, R^T) when
    # mask tokens (at their positions) query rotated latents; both give gain^2 * position . position
    wq, wk = (R.T, eye) if latents_query else (eye, R.T)
    block.attn.qkv.weight.copy_(torch.cat([gain * wq, gain * wk, copy * eye]))
    block.attn.qkv.bias.zero_()
    block.attn.proj.weight.copy_(eye)
    block.attn.proj.bias.zero_()


class TiTokEncoder(nn.Module):
    """[class token, image patches, K latent tokens] -> ViT -> the K latent outputs -> token_size.
    Layout '2d': [class token, image patches] -> ViT -> the g*g patch outputs -> token_size."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale = cfg.width, cfg.width ** -0.5
        route = cfg.routing_init and cfg.layout == "1d"
        self.patch_embed = nn.Conv2d(3, w, cfg.patch_size, stride=cfg.patch_size)
        self.class_embedding = _param(1, w, scale=scale)
        # routing by position needs positions that stand out from the patches' content
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=3 * scale if route else scale)
        if cfg.layout == "1d":  # small latent tokens when routing: just enough to tell apart latents of one patch
            self.latent_tokens = _param(cfg.num_latent_tokens, w, scale=0.1 * scale if route else scale)
            self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        self.proj_out = nn.Linear(w, cfg.token_size)
        if route:
            route_by_position(self.blocks[0], self.positional_embedding, self.latent_token_positional_embedding,
                              latents_query=True)

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
        x = self.ln_post(x[:, -K:])
        if self.cfg.legacy_reshape:
            # the released models reshaped (B, K, w) to (B, w, K) with no transpose before their
            # 1x1 conv; reproduce that scramble to use their weights
            x = x.reshape(B, -1, K).transpose(1, 2)
        return self.proj_out(x)  # B, K, token_size


class TiTokDecoder(nn.Module):
    """[class token, g*g mask tokens, K quantized tokens] -> ViT -> the g*g patch outputs -> head.
    Layout '2d': [class token, g*g quantized tokens at their patches] -> ViT -> the same outputs."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        w, scale, p = cfg.width, cfg.width ** -0.5, cfg.patch_size
        route = cfg.routing_init and cfg.layout == "1d"
        self.decoder_embed = nn.Linear(cfg.token_size, w)
        self.class_embedding = _param(1, w, scale=scale)
        self.positional_embedding = _param(cfg.grid_size ** 2 + 1, w, scale=3 * scale if route else scale)
        if cfg.layout == "1d":  # routing: mask tokens are their positions only
            self.mask_token = _param(1, 1, w, scale=0.0 if route else scale)
            self.latent_token_positional_embedding = _param(cfg.num_latent_tokens, w, scale=scale)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.heads) for _ in range(cfg.depth))
        self.ln_post = nn.LayerNorm(w)
        if cfg.head == "proxy":  # per patch, logits over the teacher's codebook (the official "ffn")
            self.head = nn.Sequential(nn.Linear(w, 2 * w), nn.Tanh(), nn.Linear(2 * w, cfg.proxy_codebook_size))
        else:  # per patch, p*p RGB values; a 3x3 conv then smooths the seams between patches
            self.head = nn.Linear(w, p * p * 3)
            self.conv_out = nn.Conv2d(3, 3, 3, padding=1)
        if route:
            route_by_position(self.blocks[0], self.positional_embedding, self.latent_token_positional_embedding,
                              latents_query=False)

    def forward(self, z_q):
        B, g, p = z_q.shape[0], self.cfg.grid_size, self.cfg.patch_size
        cls = self.class_embedding.expand(B, -1, -1)
        if self.cfg.layout == "2d":  # each token sits at its own patch: no mask tokens needed
            x = torch.cat([cls, self.decoder_embed(z_q)], dim=1) + self.positional_embedding
        else:
            masks = torch.cat([cls, self.mask_token.expand(B, g * g, -1)], dim=1) + self.positional_embedding
            x = torch.cat([masks, self.decoder_embed(z_q) + self.latent_token_positional_embedding], dim=1)
        x = self.ln_pre(x)
        for block in self.blocks:
            x = block(x)
        x = self.head(self.ln_post(x[:, 1:1 + g * g]))  # one output per patch
        if self.cfg.head == "proxy":
            return x.transpose(1, 2).reshape(B, -1, g, g)  # B, teacher codebook, g, g
        x = x.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
        return self.conv_out(x)


class TiTok(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        assert cfg.image_size % cfg.patch_size == 0, "image_size must be a multiple of patch_size"
        assert cfg.pixel_decoder is None or cfg.head == "proxy", "a pixel decoder reads proxy logits"
        assert cfg.layout in ("1d", "2d"), f"layout must be '1d' or '2d', not {cfg.layout!r}"
        assert cfg.layout == "1d" or cfg.num_latent_tokens == cfg.grid_size ** 2, \
            f"layout '2d' has one token per patch: num_latent_tokens must be {cfg.grid_size ** 2}"
        self.config = cfg
        self.encoder = TiTokEncoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.token_size, cfg.commitment_cost,
                                         cfg.usage_window, cfg.dead_code_restart)
        self.decoder = TiTokDecoder(cfg)
        self.encoder_frozen = False  # stage 2 (see freeze_encoder)
        if cfg.pixel_decoder is not None:
            if "titok" in cfg.pixel_decoder:  # a 2D teacher trained here: its ViT decoder
                teacher = TiTokConfig(**cfg.pixel_decoder["titok"])
                dim, decoder = teacher.token_size, TiTokDecoder(teacher)
            else:  # the MaskGIT-VQGAN's convolutional decoder
                from vqgan import Decoder, VQGANConfig  # only the two-stage / released models need it
                vq_cfg = VQGANConfig.from_dict(cfg.pixel_decoder)
                dim, decoder = vq_cfg.z_channels, Decoder(vq_cfg)
            self.pixel_codebook = nn.Parameter(torch.zeros(cfg.proxy_codebook_size, dim))
            self.pixel_decoder = decoder

    def encode(self, images):
        """images (B, 3, H, W) in [0, 1] -> codes (B, K): a 1D sequence of integers."""
        return self.quantizer(self.encoder(images))[1]

    def decode(self, codes):
        """codes (B, K) -> images (B, 3, H, W), nominally in [0, 1] (not clamped)."""
        return self.decode_tokens(self.quantizer.lookup(codes))

    def decode_tokens(self, z_q):
        x = self.decoder(z_q)
        if self.config.pixel_decoder is not None:
            # a soft, differentiable lookup of the teacher's codebook, then the teacher's decoder
            x = torch.einsum("bnhw,nd->bdhw", x.softmax(1), self.pixel_codebook)
            if isinstance(self.pixel_decoder, TiTokDecoder):  # a ViT reads the g*g vectors as a sequence
                x = x.flatten(2).transpose(1, 2)
            x = self.pixel_decoder(x)
        return x

    def forward(self, images):
        """images -> (decoder output, quantizer losses, codebook stats)."""
        z_q, codes, losses, stats = self.quantizer(self.encoder(images))
        return self.decode_tokens(z_q), losses, stats

    def freeze_encoder(self):
        """Stage 2: the encoder and the quantizer, and so the codes, stay as stage 1 left them. The
        quantizer also stays in eval mode: no usage bookkeeping, no dead-code restarts."""
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

    @classmethod
    def from_pretrained(cls, path):
        """A released TiTok: a directory with config.json + model.safetensors (or pytorch_model.bin),
        as published on the Hugging Face hub (yucornetto/tokenizer_titok_l32_imagenet, ..._b64_...,
        ..._s128_...), or a weights file with config.json beside it."""
        file = find_file(path, ["model.safetensors", "pytorch_model.bin"], "TiTok weights",
                         "https://huggingface.co/yucornetto/tokenizer_titok_l32_imagenet (and _b64_, _s128_)")
        config = read_config(file)
        vq = config.get("model", {}).get("vq_model")
        if vq is None:
            raise FileNotFoundError(f"no config.json with model.vq_model beside {file}")
        if not vq.get("use_l2_norm", True):
            raise ValueError("only l2-normalised codebooks (use_l2_norm: true, as released) are supported")
        size = {"small": "S", "base": "B", "large": "L"}
        enc = dict(PRESETS[size[vq["vit_enc_model_size"]]]) if vq["vit_enc_model_size"] in size else {}
        enc.update({k[4:]: vq[k] for k in ("vit_width", "vit_depth", "vit_heads") if k in vq})  # explicit sizes win
        if vq.get("vit_dec_model_size", vq["vit_enc_model_size"]) != vq["vit_enc_model_size"]:
            raise ValueError("encoder and decoder of different sizes are not supported")
        legacy = vq.get("is_legacy", True)  # the official default: every released tokenizer is legacy
        pixel_decoder = (vq.get("pixel_decoder") or {}) if vq.get("finetune_decoder", False) else None
        cfg = TiTokConfig(image_size=config.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256),
                          patch_size=vq["vit_enc_patch_size"], num_latent_tokens=vq["num_latent_tokens"],
                          token_size=vq["token_size"], codebook_size=vq["codebook_size"],
                          commitment_cost=vq.get("commitment_cost", 0.25), head="proxy" if legacy else "pixels",
                          pixel_decoder=pixel_decoder, legacy_reshape=legacy, **enc)
        model = cls(cfg)
        sd = _from_official(read_state_dict(file))
        for name, buffer in model.named_buffers():  # our codebook-usage bookkeeping is not in their files
            sd.setdefault(name, buffer)
        load_exact(model, sd, str(file))
        return model.eval()


def _from_official(sd):
    """Official TiTok parameter names -> ours (their 1x1 convs are our linear layers)."""
    whole = {"latent_tokens": "encoder.latent_tokens", "pixel_quantize.embedding.weight": "pixel_codebook",
             "quantize.embedding.weight": "quantizer.codebook.weight"}
    parts = [(".transformer.", ".blocks."), ("attn.in_proj_", "attn.qkv."), ("attn.out_proj.", "attn.proj."),
             ("mlp.c_fc.", "mlp.fc."), ("mlp.c_proj.", "mlp.proj."), ("encoder.conv_out.", "encoder.proj_out."),
             ("decoder.ffn.0.", "decoder.head.0."), ("decoder.ffn.2.", "decoder.head.2.")]
    out = {}
    for key, value in sd.items():
        if key in whole:
            key = whole[key]
        elif not key.startswith("pixel_decoder."):
            for old, new in parts:
                key = key.replace(old, new)
            if value.dim() == 4 and value.shape[2:] == (1, 1) and "conv_out" not in key:
                value = value.flatten(1)
        out[key] = value
    if "decoder.head.0.weight" in out and "decoder.head.2.weight" not in out:  # non-legacy: ffn.0 is the pixel head
        out["decoder.head.weight"], out["decoder.head.bias"] = out.pop("decoder.head.0.weight"), out.pop("decoder.head.0.bias")
    return out


def load_tokenizer(path, device="cpu"):
    """A tokenizer in eval mode from a checkpoint of train_tokenizer.py (ckpt.pt, or its directory) or
    a released TiTok directory (config.json + model.safetensors)."""
    p = Path(path)
    ckpt = p / "ckpt.pt" if p.is_dir() and (p / "ckpt.pt").is_file() else p
    if ckpt.is_file() and ckpt.suffix == ".pt":
        checkpoint = read_checkpoint(ckpt, "tokenizer")  # a damaged or foreign file: ValueError, named
        model = TiTok(TiTokConfig(**checkpoint["model_args"]))
        model.load_state_dict(checkpoint["model"])
    else:
        model = TiTok.from_pretrained(p)
    return model.to(device).eval()


def load_teacher(path, image_size, device="cpu"):
    """The frozen 2D teacher of the two-stage recipe: a MaskGIT-VQGAN (its .bin, vqgan.py) or a
    layout-'2d' tokenizer trained by train_tokenizer.py (ckpt.pt or its directory). Returns
    (teacher, grid, codebook, pixel_decoder): teacher.encode(images) gives (B, grid*grid) codes in
    raster order; `codebook` (N, D) is what teacher.decoder reads, and `pixel_decoder` the
    TiTokConfig.pixel_decoder that attaches that decoder to a stage-2 TiTok."""
    p = Path(path)
    if p.suffix == ".pt" or (p / "ckpt.pt").is_file():
        t = load_tokenizer(p, device).requires_grad_(False)
        if t.config.layout != "2d" or t.config.head != "pixels":
            raise ValueError(f"the teacher {path} is a '{t.config.layout}' tokenizer with a '{t.config.head}' head; "
                             "a teacher gives one code per patch: train one with --layout=2d (stage 0)")
        if t.config.image_size != image_size:
            raise ValueError(f"the teacher {path} was trained on {t.config.image_size}px images, not {image_size}px")
        # TiTok's quantizer looks up l2-normalised codes
        return t, t.config.grid_size, F.normalize(t.quantizer.codebook.weight, dim=-1), {"titok": asdict(t.config)}
    from vqgan import VQGAN
    t = VQGAN.from_pretrained(p).to(device)
    if image_size % t.downsample_factor:
        raise ValueError(f"the teacher {path} downsamples by {t.downsample_factor}; {image_size} is not a multiple")
    return t, image_size // t.downsample_factor, t.codebook, asdict(t.config)


def proxy_loss(logits, codes):
    """Stage 1: the cross-entropy of the decoder's per-patch logits (B, N, g, g) to the teacher's codes
    (B, g*g, raster order), and the accuracy of their argmax (the proxy-code accuracy)."""
    target = codes.view(-1, *logits.shape[2:])
    return F.cross_entropy(logits.float(), target), (logits.argmax(1) == target).float().mean()
