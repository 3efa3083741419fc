"""
Reading released weight files: one place for file formats and for the strict, named errors that
every from_pretrained() relies on. The official-name -> our-name mappings live next to each model
(TiTok's: pretrained.py).
"""
import json
from pathlib import Path

import torch


def find_file(path, names, what, published):
    """`path` is a file or a directory holding one of `names`; return the file or explain what is missing."""
    path = Path(path)
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    where = f"{path}/{{{','.join(names)}}}" if path.is_dir() else str(path)
    raise FileNotFoundError(f"{what}: no file at {where}. It is published at {published}; download it and pass its local path.")


def read_state_dict(file):
    """A state dict from .safetensors (via the safetensors package) or a torch pickle (weights only)."""
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file  # only needed for the released .safetensors files
        return load_file(str(file))
    sd = torch.load(file, map_location="cpu", weights_only=True)
    return sd.get("state_dict", sd) if isinstance(sd, dict) else sd


def read_config(path):
    """config.json in a checkpoint directory (or beside a weights file); {} when there is none."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_exact(module, state_dict, source="checkpoint"):
    """load_state_dict that names every missing key, unexpected key and shape mismatch."""
    own = module.state_dict()
    problems = [f"missing key {k} (expected shape {tuple(v.shape)})" for k, v in own.items() if k not in state_dict]
    problems += [f"unexpected key {k} (shape {tuple(v.shape)})" for k, v in state_dict.items() if k not in own]
    problems += [f"shape mismatch for {k}: {source} has {tuple(v.shape)}, model expects {tuple(own[k].shape)}"
                 for k, v in state_dict.items() if k in own and v.shape != own[k].shape]
    if problems:
        raise ValueError(f"cannot load {source} into {type(module).__name__}:\n  " + "\n  ".join(problems))
    module.load_state_dict(state_dict)
