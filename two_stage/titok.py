"""
The paper's two-stage recipe (EXPERIMENTS.md, "The two-stage recipe"), built on the single-stage TiTok of model.py.

  stage 1  proxy codes: a frozen 2D teacher (the MaskGIT-VQGAN of two_stage/vqgan.py, or a layout-'2d' tokenizer
           trained by train_tokenizer.py) codes each image as a g x g grid; TiTok's decoder predicts,
           per patch, logits over the teacher's codebook (ProxyDecoder, proxy_loss).
  stage 2  decoder finetuning: encoder and quantizer frozen; softmax(logits) . teacher codebook ->
           the teacher's decoder -> pixels (TwoStageTiTok's pixel decoder).

two_stage/train_stage1.py trains stage 1, train_tokenizer.py stage 2 (init_from a stage-1 checkpoint, with its teacher:
start_stage2); the released two-stage tokenizers are stage-2 models (released/titok.py).
"""
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from checkpoints import build_tokenizer, load_tokenizer, model_args_of
from model import TiTok, TiTokConfig, TiTokDecoder


@dataclass
class TwoStageConfig(TiTokConfig):
    proxy_codebook_size: int = 1024  # N: size of the teacher's codebook, over which the decoder predicts
    # stage 2: softmax(proxy logits) . pixel codebook -> pixel decoder: a VQGAN decoder config, or
    # {"titok": config of a layout-'2d' TiTok} whose ViT decoder reads its own 12-dim codes
    pixel_decoder: dict = None


class ProxyDecoder(TiTokDecoder):
    """TiTok's decoder with a proxy head (the official "ffn"): per patch, logits over the teacher's codebook."""

    def add_head(self, cfg):
        w = cfg.decoder_width
        self.head = nn.Sequential(nn.Linear(w, 2 * w), nn.Tanh(), nn.Linear(2 * w, cfg.proxy_codebook_size))

    def forward(self, z_q, keep=None):
        """z_q (B, K, token_size) -> logits (B, N, g, g)."""
        g = self.cfg.grid_size
        return self.head(self.patch_outputs(z_q, keep)).transpose(1, 2).reshape(len(z_q), -1, g, g)


class TwoStageTiTok(TiTok):
    """Stage 1: TiTok whose decoder predicts proxy codes. Stage 2 (cfg.pixel_decoder set): those logits
    -> soft lookup of the teacher's codebook (pixel_codebook) -> the teacher's decoder -> pixels."""

    Decoder = ProxyDecoder

    def __init__(self, cfg):
        super().__init__(cfg)
        if cfg.pixel_decoder is not None:
            if "titok" in cfg.pixel_decoder:  # a 2D teacher trained here: its ViT decoder
                # its architecture (older checkpoints record more fields of the teacher: not needed here)
                names = {f.name for f in fields(TiTokConfig)}
                teacher = TiTokConfig(**{k: v for k, v in cfg.pixel_decoder["titok"].items() if k in names})
                dim, decoder = teacher.token_size, TiTokDecoder(teacher)
            else:  # the MaskGIT-VQGAN's convolutional decoder
                from two_stage.vqgan import Decoder, VQGANConfig
                vq_cfg = VQGANConfig.from_dict(cfg.pixel_decoder)
                dim, decoder = vq_cfg.z_channels, Decoder(vq_cfg)
            self.pixel_codebook = nn.Parameter(torch.zeros(cfg.proxy_codebook_size, dim))
            self.pixel_decoder = decoder

    def to_pixels(self, logits):
        """Stage 2: a soft, differentiable lookup of the teacher's codebook, then the teacher's decoder.
        Stage 1 (no pixel decoder): the logits themselves."""
        if self.config.pixel_decoder is None:
            return logits
        x = torch.einsum("bnhw,nd->bdhw", logits.softmax(1), self.pixel_codebook)
        if isinstance(self.pixel_decoder, TiTokDecoder):  # a ViT reads the g*g vectors as a sequence
            x = x.flatten(2).transpose(1, 2)
        return self.pixel_decoder(x)

    def decode(self, codes):
        return self.to_pixels(super().decode(codes))

    def forward(self, images, keep=None):
        logits, losses = super().forward(images, keep)
        return self.to_pixels(logits), losses


@torch.no_grad()
def proxy_codes(teacher, images):
    """Stage 1's targets: the teacher's codes of `images` (B, g*g), in fp32 whatever the autocast around, as the
    official code computes them: an argmin over near-equal distances must not depend on the precision."""
    with torch.autocast(images.device.type, enabled=False):
        return teacher.encode(images.float())


def proxy_loss(logits, codes):
    """Stage 1: the cross-entropy of the decoder's per-patch logits (B, N, g, g) to the teacher's codes
    (B, g*g, raster order), and the accuracy of their argmax (the proxy-code accuracy)."""
    target = codes.view(-1, *logits.shape[2:])
    return F.cross_entropy(logits.float(), target), (logits.argmax(1) == target).float().mean()


def load_teacher(path, image_size, device="cpu"):
    """The frozen 2D teacher: a MaskGIT-VQGAN (its .bin, two_stage/vqgan.py) or a layout-'2d' tokenizer trained
    by train_tokenizer.py (ckpt.pt or its directory). Returns (teacher, grid, codebook, pixel_decoder):
    teacher.encode(images) gives (B, grid*grid) codes in raster order; `codebook` (N, D) is what
    teacher.decoder reads, and `pixel_decoder` the TwoStageConfig.pixel_decoder that attaches that
    decoder to a stage-2 model."""
    p = Path(path)
    if p.suffix == ".pt" or (p / "ckpt.pt").is_file():
        t = load_tokenizer(p, device).requires_grad_(False)
        if type(t) is not TiTok or t.config.layout != "2d" or t.config.quantize_mode != "vq":
            kind = "two-stage" if isinstance(t, TwoStageTiTok) else f"'{t.config.layout}' {t.config.quantize_mode}"
            raise ValueError(f"the teacher {path} is a {kind} tokenizer; a teacher gives one code per patch: "
                             "train one with --layout=2d (train_tokenizer.py)")
        if t.config.image_size != image_size:
            raise ValueError(f"the teacher {path} was trained on {t.config.image_size}px images, not {image_size}px")
        codebook = t.quantizer.decode(torch.arange(t.config.codebook_size, device=device))  # what its decoder reads
        return t, t.config.grid_size, codebook, {"titok": asdict(t.config)}
    from two_stage.vqgan import VQGAN
    t = VQGAN.from_pretrained(p).to(device)
    if image_size % t.downsample_factor:
        raise ValueError(f"the teacher {path} downsamples by {t.downsample_factor}; {image_size} is not a multiple")
    return t, image_size // t.downsample_factor, t.codebook, asdict(t.config)


def start_stage2(model, path, teacher, device="cpu"):
    """The paper's stage 2 at its start (train_tokenizer.py's init_from a stage-1 checkpoint, with its teacher):
    the stage-1 `model` read from `path`, with its teacher's pixel decoder attached (softmax(proxy logits) . the
    teacher's codebook -> the teacher's decoder). -> (model, model_args). ValueError when `path` is not a stage-1
    checkpoint, or the teacher does not fit it."""
    args = model_args_of(model)
    if "proxy_codebook_size" not in args or args.get("pixel_decoder") is not None:
        raise ValueError(f"{path} is not a stage-1 checkpoint (of two_stage/train_stage1.py), which stage 2 with "
                         f"teacher={teacher!r} starts from; drop --teacher to fine-tune it")
    if not teacher:
        raise ValueError(f"{path} is a stage-1 checkpoint: stage 2 attaches its teacher's decoder, so pass "
                         "--teacher=PATH (the teacher stage 1 was trained against)")
    t, _, codebook, pixel_decoder = load_teacher(teacher, args["image_size"], device)
    if len(codebook) != args["proxy_codebook_size"]:
        raise ValueError(f"the teacher {teacher} has {len(codebook)} codes, but the stage-1 model {path} predicts "
                         f"{args['proxy_codebook_size']}: it was trained against another teacher")
    stage1 = model.state_dict()
    args["pixel_decoder"] = pixel_decoder
    model = build_tokenizer(args).to(device)
    model.load_state_dict({**stage1, "pixel_codebook": codebook,
                           **{f"pixel_decoder.{k}": v for k, v in t.decoder.state_dict().items()}})
    return model, args
