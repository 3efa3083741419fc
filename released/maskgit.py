"""
The three released MaskGIT generators (generator_titok_{l32,b64,s128}_imagenet on the Hugging Face hub:
docs/released-weights.md) read into generator.py's MaskGIT: their nested config.json into MaskGITConfig, their
parameter names (Hugging Face BERT for 'ViT', U-ViT's for 'UViT') into ours. generator.load_generator imports
this file only for a released directory or repo id.
"""
import torch

from checkpoints import find_file, load_exact, read_config, read_state_dict
from generator import MaskGIT, MaskGITConfig
from released.hub import local_or_hub

PUBLISHED = ("https://huggingface.co/yucornetto/generator_titok_l32_imagenet "
             "(or ..._b64_imagenet, ..._s128_imagenet)")


def config_from_official(config):
    """The official nested config {"model": {"vq_model": ..., "generator": ...}} -> MaskGITConfig; absent fields keep
    our defaults."""
    vq, g = config["model"]["vq_model"], config["model"]["generator"]
    names = dict(codebook_size=(vq, "codebook_size"), num_tokens=(vq, "num_latent_tokens"),
                 num_classes=(g, "condition_num_classes"), hidden_size=(g, "hidden_size"),
                 depth=(g, "num_hidden_layers"), heads=(g, "num_attention_heads"), mlp_dim=(g, "intermediate_size"),
                 dropout=(g, "dropout"), attn_dropout=(g, "attn_drop"), class_dropout=(g, "class_label_dropout"),
                 model_type=(g, "model_type"), num_steps=(g, "num_steps"), guidance_scale=(g, "guidance_scale"),
                 guidance_decay=(g, "guidance_decay"), guidance_scale_pow=(g, "guidance_scale_pow"),
                 randomize_temperature=(g, "randomize_temperature"),
                 softmax_temperature_annealing=(g, "softmax_temperature_annealing"))
    return MaskGITConfig(**{ours: section[theirs] for ours, (section, theirs) in names.items() if theirs in section})


def load_released_generator(path):
    """A released generator: a directory (config.json + model.safetensors or pytorch_model.bin) as published, a
    weights file with config.json beside it, or the Hugging Face repo id of one."""
    path = local_or_hub(path, "generator checkpoint")
    file = find_file(path, ["model.safetensors", "pytorch_model.bin"], "MaskGIT generator weights", PUBLISHED)
    official = read_config(path)
    if not official:
        raise FileNotFoundError(f"MaskGIT generator config: no config.json beside {file}. "
                                f"It is published at {PUBLISHED}; download it and pass its local path.")
    model = MaskGIT(config_from_official(official))
    sd = read_state_dict(file)
    sd = _from_official_bert(sd, model.config.depth) if model.config.model_type == "ViT" else _from_official_uvit(sd)
    load_exact(model, sd, source=str(file))
    return model


def _from_official_bert(sd, depth):
    """Official ImageBert (Hugging Face BertModel under `model.`) names -> ours."""
    sd = {k.removeprefix("model."): v for k, v in sd.items()}
    for buffer in ("embeddings.position_ids", "embeddings.token_type_ids"):  # saved by old transformers
        sd.pop(buffer, None)
    out = {}
    # one segment only, so token type 0 is a constant: fold it into the positions
    pos, token_type = sd.pop("embeddings.position_embeddings.weight", None), sd.pop("embeddings.token_type_embeddings.weight", None)
    if pos is not None and token_type is not None:
        out["pos_emb"] = pos + token_type[0]
    for i in range(depth):  # separate q, k, v -> one fused qkv
        for p in ("weight", "bias"):
            q, k, v = (sd.pop(f"encoder.layer.{i}.attention.self.{n}.{p}", None) for n in ("query", "key", "value"))
            if q is not None and k is not None and v is not None:
                out[f"blocks.{i}.attn.qkv.{p}"] = torch.cat([q, k, v])
    renames = [("embeddings.word_embeddings", "tok_emb"), ("embeddings.LayerNorm", "ln_emb"),
               ("encoder.layer.", "blocks."), ("attention.output.dense", "attn.proj"),
               ("attention.output.LayerNorm", "ln_1"), ("intermediate.dense", "mlp.fc"),
               ("output.dense", "mlp.proj"), ("output.LayerNorm", "ln_2")]
    for k, v in sd.items():  # anything unmatched keeps its name, so load_exact reports it
        for theirs, ours in renames:
            k = k.replace(theirs, ours)
        out[k] = v
    return out


def _from_official_uvit(sd):
    """Official UViTBert names -> ours (the blocks already use our block layout, bar their names)."""
    renames = [("embeddings", "tok_emb"), ("norm1", "ln_1"), ("norm2", "ln_2"),
               ("mlp.fc1", "mlp.fc"), ("mlp.fc2", "mlp.proj")]
    out = {}
    for k, v in sd.items():
        if k == "pos_embed":
            k, v = "pos_emb", v.squeeze(0)
        elif k.startswith("norm."):
            k = "ln_f" + k[len("norm"):]
        for theirs, ours in renames:
            k = k.replace(theirs, ours)
        out[k] = v
    return out
