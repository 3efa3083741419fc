"""
The nine released TiTok tokenizers (bytedance/1d-tokenizer, on the Hugging Face hub as
yucornetto/tokenizer_titok_*: docs/released-weights.md), read into this repository's models, and a trained
tokenizer written back in their layout (released/export.py). Their config.json is read into our configs,
their parameter names mapped to ours, and the one quirk of their code that the legacy weights depend on
(ScrambledLinear) reproduced. The three legacy models are stage-2 models of the two-stage recipe
(two_stage/titok.py); the six single-stage ones (VQ-8k and VAE) are model.py's TiTok as it is.
checkpoints.load_tokenizer imports this file only for a released directory or repo id.
"""
import json
from pathlib import Path

import torch.nn as nn

from checkpoints import find_file, load_exact, read_config, read_state_dict
from model import PRESETS, TiTok, TiTokConfig
from released.hub import local_or_hub
from two_stage.titok import TwoStageConfig, TwoStageTiTok

PUBLISHED = "https://huggingface.co/yucornetto/tokenizer_titok_l32_imagenet and the eight others (docs/released-weights.md)"


class ScrambledLinear(nn.Linear):
    """The released encoders reshaped their output (B, K, w) to (B, w, K) with no transpose before their
    1x1 conv (our proj_out): a scramble that their weights were trained with, reproduced here."""

    def forward(self, x):
        B, K, _ = x.shape
        return super().forward(x.reshape(B, -1, K).transpose(1, 2))


class ReleasedTiTok(TwoStageTiTok):
    """A released legacy TiTok: the two-stage model with the encoder's output scramble."""
    released_legacy = True  # checkpoints.model_args_of records it

    def __init__(self, cfg):
        super().__init__(cfg)
        self.encoder.proj_out = ScrambledLinear(cfg.width, cfg.token_size)

    @staticmethod
    def from_pretrained(path):
        """A released TiTok: a directory with config.json + model.safetensors (or pytorch_model.bin), as
        published on the Hugging Face hub, or a weights file with config.json beside it. A legacy model
        (L-32, B-64, S-128) is a ReleasedTiTok, a non-legacy one (VQ-8k, VAE) a plain TiTok (a pixel head)."""
        file = find_file(path, ["model.safetensors", "pytorch_model.bin"], "TiTok weights", PUBLISHED)
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
    if cfg.ordered_tokens or cfg.quantize_mode == "fsq":
        raise ValueError("the official code has no decoder of ordered tokens (a learned token for each dropped one) and "
                         "no FSQ: a model trained with ordered_tokens or quantize_mode 'fsq' stays in this repository's "
                         "checkpoint")
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


def load_released_tokenizer(path):
    """A released TiTok from its directory, or its Hugging Face repo id (downloaded: released/hub.py) -> (model, the
    weights file read)."""
    p = local_or_hub(path, "tokenizer checkpoint")
    return ReleasedTiTok.from_pretrained(p), find_file(p, ["model.safetensors", "pytorch_model.bin"], "TiTok weights",
                                                       PUBLISHED)
