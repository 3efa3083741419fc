"""
Models from disk. Tokenizers: load_tokenizer, the one loader every script calls, for checkpoints of this
repository's trainers and for the nine released TiTok tokenizers (bytedance/1d-tokenizer, on the Hugging
Face hub as yucornetto/tokenizer_titok_*: docs/released-weights.md), and the two-stage recipe's teacher.
For the released ones: their config.json read into our configs, their parameter names mapped to ours,
and the one quirk of their code that the legacy weights depend on (ScrambledLinear). The three legacy
models are stage-2 models of the two-stage recipe (two_stage.py); the six single-stage ones (VQ-8k and
VAE) are model.py's TiTok as it is.
"""
import json
import sys
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn

from aids import SmallBudgetConfig, SmallBudgetTiTok
from generator import MaskGIT, MaskGITConfig
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
            model = ReleasedTiTok(TwoStageConfig(**args, pixel_decoder=pixel_decoder))
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
    size = SIZES
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


# official TiTok parameter names <-> ours (their 1x1 convs are our linear layers)
WHOLE = {"latent_tokens": "encoder.latent_tokens", "pixel_quantize.embedding.weight": "pixel_codebook",
         "quantize.embedding.weight": "quantizer.codebook.weight"}
PARTS = [(".transformer.", ".blocks."), ("attn.in_proj_", "attn.qkv."), ("attn.out_proj.", "attn.proj."),
         ("mlp.c_fc.", "mlp.fc."), ("mlp.c_proj.", "mlp.proj."), ("encoder.conv_out.", "encoder.proj_out."),
         ("decoder.ffn.0.", "decoder.head.0."), ("decoder.ffn.2.", "decoder.head.2.")]
SIZES = {"small": "S", "base": "B", "large": "L"}


def _from_official(sd):
    out = {}
    for key, value in sd.items():
        if key == "quantize.embed_prob":  # clustering_vq's training state, where a file holds it
            continue
        if key in WHOLE:
            key = WHOLE[key]
        elif not key.startswith("pixel_decoder."):
            for old, new in PARTS:
                key = key.replace(old, new)
            if value.dim() == 4 and value.shape[2:] == (1, 1) and "conv_out" not in key:
                value = value.flatten(1)
        out[key] = value
    if "decoder.head.0.weight" in out and "decoder.head.2.weight" not in out:  # non-legacy: ffn.0 is the pixel head
        out["decoder.head.weight"], out["decoder.head.bias"] = out.pop("decoder.head.0.weight"), out.pop("decoder.head.0.bias")
    return out


def to_released(model):
    """A single-stage TiTok (layout '1d', the paper's pixel head) -> (config.json dict, state dict) in the official
    layout of the released single-stage tokenizers (is_legacy false), which the official TiTok class loads (for
    the sizes it knows: small, base, large); ValueError for what that layout cannot hold."""
    cfg = model.config
    if type(model) is not TiTok or cfg.layout != "1d":
        raise ValueError("the official layout holds single-stage 1D TiToks with the paper's pixel head: not a two-stage "
                         "model, layout '2d', or the small-budget head (head_upsample > 1, conv_out_padding 'replicate')")
    vq = {"quantize_mode": cfg.quantize_mode, "token_size": cfg.token_size, "vit_enc_patch_size": cfg.patch_size,
          "vit_dec_patch_size": cfg.patch_size, "num_latent_tokens": cfg.num_latent_tokens, "finetune_decoder": False,
          "is_legacy": False}
    if cfg.quantize_mode == "vq":
        vq.update(codebook_size=cfg.codebook_size, use_l2_norm=cfg.use_l2_norm, commitment_cost=cfg.commitment_cost)
    for part, vit in (("enc", (cfg.width, cfg.depth, cfg.heads)), ("dec", (cfg.decoder_width, cfg.decoder_depth,
                                                                           cfg.decoder_heads))):
        name = next((n for n, p in SIZES.items() if tuple(PRESETS[p].values()) == vit), None)
        vq[f"vit_{part}_model_size"] = name or "custom"
        if name is None:  # not a size the official code knows: the numbers, as its test fixtures give them
            vq.update({f"vit_{part}_{k}": v for k, v in zip(("width", "depth", "heads"), vit)})
    return {"model": {"vq_model": vq}, "dataset": {"preprocessing": {"crop_size": cfg.image_size}}}, _to_official(model.state_dict())


def _to_official(sd):
    back = {v: k for k, v in WHOLE.items()}
    out = {}
    for key, value in sd.items():
        if ".upkeep." in key:  # training state
            continue
        if key in back:
            key = back[key]
        else:
            key = key.replace("decoder.head.", "decoder.ffn.0.")  # the non-legacy pixel head
            for old, new in PARTS:
                key = key.replace(new, old)
        if key in ("encoder.conv_out.weight", "decoder.ffn.0.weight"):  # their 1x1 convs
            value = value[..., None, None]
        out[key] = value.contiguous()
    return out


def save_released(model, out):
    """Write `model` as a released-layout directory: config.json + model.safetensors (to_released)."""
    from safetensors.torch import save_file  # only needed for the released .safetensors files
    config, sd = to_released(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=4))
    save_file(sd, str(out / "model.safetensors"))


UPKEEP = ("step", "last_used", "embed_prob")  # quantizer.upkeep's buffers, once the quantizer's own
TRAINING_ARGS = ("usage_window", "dead_code_restart", "clustering_vq", "routing_init", "head")  # not the architecture


def tokenizer_config(model_args):
    """What a checkpoint's model_args describe -> (class, config): a TiTok; aids.SmallBudgetTiTok when they name
    its head; two_stage.py's TwoStageTiTok when they name a teacher's codebook (stages 1 and 2); a ReleasedTiTok
    when they say so. Older checkpoints' training settings are dropped, `head_stride` renamed. The config
    checks the settings (ValueError, one line)."""
    args = {k: v for k, v in model_args.items() if k not in TRAINING_ARGS}
    if "head_stride" in args:  # its earlier name
        args["head_upsample"] = args.pop("head_stride")
    if args.pop("released_legacy", False):
        return ReleasedTiTok, TwoStageConfig(**args)
    if "proxy_codebook_size" in args:
        return TwoStageTiTok, TwoStageConfig(**args)
    if args.get("head_upsample", 1) != 1 or args.get("conv_out_padding", "zeros") != "zeros":
        return SmallBudgetTiTok, SmallBudgetConfig(**args)
    return TiTok, TiTokConfig(**{k: v for k, v in args.items() if k not in ("head_upsample", "conv_out_padding")})


def build_tokenizer(model_args):
    cls, cfg = tokenizer_config(model_args)
    return cls(cfg)


def model_args_of(model):
    """What build_tokenizer needs to build `model` again."""
    return {**asdict(model.config), **({"released_legacy": True} if isinstance(model, ReleasedTiTok) else {})}


def upgrade_state_dict(sd):
    """A tokenizer state dict of any version of this project's trainers, in today's names: the codebook's
    usage buffers now live in quantizer.upkeep."""
    old = {f"quantizer.{name}" for name in UPKEEP}
    return {k.replace("quantizer.", "quantizer.upkeep.") if k in old else k: v for k, v in sd.items()}


def load_tokenizer_state(model, sd, source):
    """load_exact of a checkpoint's weights, with or without the codebook upkeep's state (training state, which
    `model` takes where it has an upkeep attached, and skips where not)."""
    sd = upgrade_state_dict(sd)
    if not any(".upkeep." in k for k in model.state_dict()):
        sd = {k: v for k, v in sd.items() if ".upkeep." not in k}
    load_exact(model, sd, source)


def load_tokenizer(path, device="cpu", with_config=False):
    """A tokenizer in eval mode from a checkpoint of train_tokenizer.py or train_stage1.py (ckpt.pt,
    or its directory), a released TiTok directory (config.json + model.safetensors), or a Hugging Face
    repo id of one (yucornetto/tokenizer_titok_bl64_vq8k_imagenet: downloaded when huggingface_hub is
    installed). A missing, damaged or foreign file: FileNotFoundError or ValueError, named.
    with_config: (model, its training config ({} for a released one), the file read)."""
    p = local_or_hub(path, "tokenizer checkpoint")
    ckpt = p / "ckpt.pt" if p.is_dir() and (p / "ckpt.pt").is_file() else p
    if ckpt.is_file() and ckpt.suffix == ".pt":
        checkpoint = read_checkpoint(ckpt, "tokenizer")
        model, config, file = build_tokenizer(checkpoint["model_args"]), checkpoint.get("config", {}), ckpt
        load_tokenizer_state(model, checkpoint["model"], str(ckpt))
    else:
        model, config = ReleasedTiTok.from_pretrained(p), {}
        file = find_file(p, ["model.safetensors", "pytorch_model.bin"], "TiTok weights", "")
    model = model.to(device).eval()
    return (model, config, file) if with_config else model


def load_generator(path):
    """(MaskGIT in eval mode, training config) from train_generator.py's ckpt.pt or its directory, or
    (MaskGIT, {}) from a released generator directory or its Hugging Face repo id."""
    p = local_or_hub(path, "generator checkpoint")
    ckpt = p / "ckpt.pt" if p.is_dir() and (p / "ckpt.pt").is_file() else p
    if ckpt.is_file() and ckpt.suffix == ".pt":
        checkpoint = read_checkpoint(ckpt, "generator")  # a damaged or foreign file: ValueError, named
        model = MaskGIT(MaskGITConfig(**checkpoint["model_args"]))
        load_exact(model, checkpoint["model"], str(ckpt))
        return model.eval(), checkpoint.get("config", {})
    return MaskGIT.from_pretrained(p).eval(), {}


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


def start_from(path, teacher="", device="cpu"):
    """The weights a tokenizer run starts from (train_tokenizer.py's init_from): a trainer's out_dir or ckpt.pt, a
    released TiTok directory, or a Hugging Face repo id; a stage-1 checkpoint (train_stage1.py) is the paper's
    stage 2 at its start: with its teacher's pixel decoder attached (softmax(proxy logits) . the teacher's
    codebook -> the teacher's decoder). -> (model in training mode, model_args). FileNotFoundError or
    ValueError when the path, or the teacher, does not fit."""
    model = load_tokenizer(path, device)
    args = model_args_of(model)
    if "proxy_codebook_size" in args and args.get("pixel_decoder") is None:
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
    elif teacher:
        raise ValueError(f"{path} is not a stage-1 checkpoint (of train_stage1.py), which stage 2 with teacher={teacher!r} "
                         "starts from; drop --teacher to fine-tune it")
    return model.train(), args


if __name__ == "__main__":  # python pretrained.py --checkpoint=<out_dir> --out=<dir>: a trained tokenizer, released layout
    from configurator import configure, fail
    args = configure(sys.argv[1:], {"checkpoint": "", "out": ""})
    if not args.get("checkpoint") or not args.get("out"):
        fail("pass --checkpoint=<a trainer's out_dir or ckpt.pt> and --out=<directory to write>")
    try:
        save_released(load_tokenizer(args["checkpoint"]), args["out"])
    except (OSError, ValueError) as e:
        fail(str(e).splitlines()[0])
    print(f"wrote {args['out']}/config.json and model.safetensors (the official layout; load_tokenizer reads it)")
