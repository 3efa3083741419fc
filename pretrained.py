"""
The released TiTok tokenizers (bytedance/1d-tokenizer, on the Hugging Face hub: yucornetto/
tokenizer_titok_l32_imagenet, ..._b64_..., ..._s128_...) as models of this repository: their
config.json read into our configs, their parameter names mapped to ours, and the one quirk of their
code that their weights depend on (ScrambledLinear). All of them are "legacy" models in the official
code's words: stage-2 models of the two-stage recipe (two_stage.py).
"""
from dataclasses import dataclass

import torch.nn as nn

from model import PRESETS, TiTok, TiTokConfig
from two_stage import TwoStageConfig, TwoStageTiTok
from weights import find_file, load_exact, read_config, read_state_dict


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
        (all released ones) is a ReleasedTiTok, a non-legacy one a plain TiTok (a pixel head)."""
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
        args = dict(image_size=config.get("dataset", {}).get("preprocessing", {}).get("crop_size", 256),
                    patch_size=vq["vit_enc_patch_size"], num_latent_tokens=vq["num_latent_tokens"],
                    token_size=vq["token_size"], codebook_size=vq["codebook_size"],
                    commitment_cost=vq.get("commitment_cost", 0.25), **enc)
        if vq.get("is_legacy", True):  # the official default: every released tokenizer is legacy
            pixel_decoder = (vq.get("pixel_decoder") or {}) if vq.get("finetune_decoder", False) else None
            model = ReleasedTiTok(ReleasedConfig(**args, pixel_decoder=pixel_decoder))
        elif vq.get("finetune_decoder", False):
            raise ValueError("non-legacy with finetune_decoder is not supported: a pixel decoder reads proxy logits")
        else:
            model = TiTok(TiTokConfig(**args))
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
