"""
Tokenizers from disk: load_tokenizer, the one loader every script calls, for checkpoints of this
repository's trainers and for the nine released TiTok tokenizers (bytedance/1d-tokenizer, on the Hugging
Face hub as yucornetto/tokenizer_titok_*: README, "Released weights"), and the two-stage recipe's teacher.
For the released ones: their config.json read into our configs, their parameter names mapped to ours,
and the one quirk of their code that the legacy weights depend on (ScrambledLinear). The three legacy
models are stage-2 models of the two-stage recipe (two_stage.py); the six single-stage ones (VQ-8k and
VAE) are model.py's TiTok as it is.
"""
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from model import PRESETS, TiTok, TiTokConfig
from two_stage import TwoStageConfig, TwoStageTiTok
from vqgan import VQGAN
from weights import find_file, load_exact, local_or_hub, read_checkpoint, read_config, read_state_dict


class ScrambledLinear(nn.Linear):
    """The released encoders reshaped their output (B, K, w) to (B, w, K) with no transpose before their
    1x1 conv (our proj_out): a scramble that their weights were trained with, reproduced here."""

    def forward(self, x):
        B, K, _ = x.shape
        return super().forward(x.reshape(B, -1, K).transpose(1, 2))


@dataclass
class ReleasedConfig(TwoStageConfig):
    # not fields: what every legacy model is (the official config.json's is_legacy)
    head = "proxy"  # the decoder predicts proxy codes (TwoStageTiTok)
    legacy_reshape = True  # the encoder output is scrambled (ScrambledLinear)


class ReleasedTiTok(TwoStageTiTok):
    """A released legacy TiTok: the two-stage model with the encoder's output scramble."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder.proj_out = ScrambledLinear(cfg.width, cfg.token_size)

    @staticmethod
    def from_pretrained(path):
        """A released TiTok: a directory with config.json + model.safetensors (or pytorch_model.bin), as
        published on the Hugging Face hub, or a weights file with config.json beside it. A legacy model
        (L-32, B-64, S-128) is a ReleasedTiTok, a non-legacy one (VQ-8k, VAE) a plain TiTok (a pixel head)."""
        file = find_file(path, ["model.safetensors", "pytorch_model.bin"], "TiTok weights",
                         "https://huggingface.co/yucornetto/tokenizer_titok_l32_imagenet and the eight others (README, Released weights)")
        config = read_config(file)
        vq = config.get("model", {}).get("vq_model")
        if vq is None:
            raise FileNotFoundError(f"no config.json with model.vq_model beside {file}")
        args = _config_from_official(vq, config.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256))
        if vq.get("is_legacy", True):  # the official default: the three two-stage tokenizers
            pixel_decoder = (vq.get("pixel_decoder") or {}) if vq.get("finetune_decoder", False) else None
            model = ReleasedTiTok(ReleasedConfig(**args, pixel_decoder=pixel_decoder))
        elif vq.get("finetune_decoder", False):
            raise ValueError("non-legacy with finetune_decoder is not supported: a pixel decoder reads proxy logits")
        else:  # the six single-stage tokenizers: our TiTok as it is
            model = TiTok(TiTokConfig(**args))
        sd = _from_official(read_state_dict(file))
        for name, buffer in model.named_buffers():  # our codebook-usage bookkeeping is not in their files
            sd.setdefault(name, buffer)
        load_exact(model, sd, str(file))
        return model.eval()


def _config_from_official(vq, image_size):
    """The official config.json's model.vq_model -> TiTokConfig arguments. Sizes are named (small, base, large);
    the tiny test fixtures give them as numbers (vit_{enc,dec}_{width,depth,heads}, or vit_* for both), which win."""
    if vq.get("vit_dec_patch_size", vq["vit_enc_patch_size"]) != vq["vit_enc_patch_size"]:
        raise ValueError("encoder and decoder of different patch sizes are not supported")
    size = {"small": "S", "base": "B", "large": "L"}
    vit = {}
    for part, prefix in (("enc", ""), ("dec", "decoder_")):
        name = vq.get(f"vit_{part}_model_size", vq.get("vit_enc_model_size"))
        numbers = dict(PRESETS[size[name]]) if name in size else {}
        for k in ("width", "depth", "heads"):
            numbers[k] = vq.get(f"vit_{part}_{k}", vq.get(f"vit_{k}", numbers.get(k)))
        if None in numbers.values():
            raise ValueError(f"vit_{part}_model_size {name!r} is none of {', '.join(size)}, and no vit_{part}_width/depth/heads")
        vit.update({prefix + k: v for k, v in numbers.items()})
    mode = vq.get("quantize_mode", "vq")
    if mode not in ("vq", "vae"):
        raise ValueError(f"quantize_mode {mode!r} is not supported (only 'vq' and 'vae')")
    return dict(image_size=image_size, patch_size=vq["vit_enc_patch_size"], num_latent_tokens=vq["num_latent_tokens"],
                token_size=vq["token_size"], quantize_mode=mode, codebook_size=vq.get("codebook_size", 4096),
                use_l2_norm=vq.get("use_l2_norm", False), commitment_cost=vq.get("commitment_cost", 0.25), **vit)


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


def build_tokenizer(model_args):
    """The tokenizer that a checkpoint's model_args describe: a TiTok, or two_stage.py's TwoStageTiTok
    when they name a teacher's codebook (stages 1 and 2). Checkpoints written before the two-stage
    code left model.py also record `routing_init` (an init, not the architecture) and `head`
    (implied by the recipe): both are dropped, so those checkpoints load as they are."""
    args = {k: v for k, v in model_args.items() if k not in ("routing_init", "head")}
    if "proxy_codebook_size" in args:
        return TwoStageTiTok(TwoStageConfig(**args))
    return TiTok(TiTokConfig(**args))


def load_tokenizer(path, device="cpu"):
    """A tokenizer in eval mode from a checkpoint of train_tokenizer.py or train_two_stage.py (ckpt.pt,
    or its directory), a released TiTok directory (config.json + model.safetensors), or a Hugging Face
    repo id of one (yucornetto/tokenizer_titok_bl64_vq8k_imagenet: downloaded when huggingface_hub is
    installed). A missing, damaged or foreign file: FileNotFoundError or ValueError, named."""
    p = local_or_hub(path, "tokenizer checkpoint")
    ckpt = p / "ckpt.pt" if p.is_dir() and (p / "ckpt.pt").is_file() else p
    if ckpt.is_file() and ckpt.suffix == ".pt":
        checkpoint = read_checkpoint(ckpt, "tokenizer")
        model = build_tokenizer(checkpoint["model_args"])
        model.load_state_dict(checkpoint["model"])
    else:
        model = ReleasedTiTok.from_pretrained(p)
    return model.to(device).eval()


def load_teacher(path, image_size, device="cpu"):
    """The frozen 2D teacher: a MaskGIT-VQGAN (its .bin, vqgan.py) or a layout-'2d' tokenizer trained
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
    t = VQGAN.from_pretrained(p).to(device)
    if image_size % t.downsample_factor:
        raise ValueError(f"the teacher {path} downsamples by {t.downsample_factor}; {image_size} is not a multiple")
    return t, image_size // t.downsample_factor, t.codebook, asdict(t.config)
