"""
Reading weight files, released ones and this project's checkpoints: one place for file formats and for
the strict, named errors that every from_pretrained() and checkpoint loader relies on. The official-name
-> our-name mappings live next to each model (TiTok's: pretrained.py).
"""
import json
import re
import warnings
from pathlib import Path

import torch

KINDS = {"tokenizer": "num_latent_tokens", "generator": "num_tokens"}  # a model_args key that only that kind has


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


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w-]+")  # owner/name, as yucornetto/tokenizer_titok_l32_imagenet


def local_or_hub(path, what):
    """`path` as a Path when it exists; for a Hugging Face repo id (owner/name) with no such local directory, its
    snapshot, downloaded by huggingface_hub (an optional dependency; HF_HUB_OFFLINE=1 reads its cache only).
    Otherwise FileNotFoundError: the path does not exist, or the command that downloads the repo id."""
    p = Path(path)
    if p.exists():
        return p
    if not HUB_ID.fullmatch(str(path)):
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (a trainer's out_dir or its ckpt.pt, a "
                                "released directory, or a Hugging Face repo id owner/name)")
    command = f"hf download {path} --local-dir {p.name}"  # huggingface_hub < 1.0: huggingface-cli download
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise FileNotFoundError(f"{what} {path}: no such directory here, and huggingface_hub is not installed to download "
                                f"it from the Hugging Face hub; run `{command}` and pass {p.name}") from None
    try:
        return Path(snapshot_download(str(path)))
    except Exception as e:  # offline, no such repository, no network: the hub library has many errors
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise FileNotFoundError(f"{what} {path}: no such directory here, and the Hugging Face hub download failed "
                                f"({reason}); check the name, or run `{command}` and pass {p.name}") from e


def read_state_dict(file):
    """A state dict from .safetensors (via the safetensors package) or a torch pickle (weights only)."""
    file = Path(file)
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file  # only needed for the released .safetensors files
        return load_file(str(file))
    sd = read_checkpoint(file)
    return sd.get("state_dict", sd)


def read_checkpoint(path, kind=None):
    """A dict of tensors and plain values read weights-only (never code). Raises ValueError naming `path`
    as damaged when torch cannot read it, and, with `kind` ('tokenizer' or 'generator'), as what it is
    when it is not a checkpoint of train_<kind>.py."""
    try:
        with warnings.catch_warnings():  # a foreign pickle makes torch warn before it fails; the error says it
            warnings.simplefilter("ignore")
            # memory-mapped: tensors are read as they are used, not the whole file into RAM on every rank
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except OSError:
        raise
    except Exception as e:  # a damaged file fails in many ways (zip, unpickling, EOF, ...)
        reason = f"{type(e).__name__}: {str(e).splitlines()[0].split('. ')[0]}" if str(e) else type(e).__name__
        raise ValueError(f"{path} is damaged or not a PyTorch checkpoint ({reason}); copy it again or pass another "
                         "checkpoint") from e
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a dict of weights: it is not a checkpoint "
                         "of this project; pass another checkpoint")
    if kind is not None:
        args = checkpoint.get("model_args")
        found = next((k for k, key in KINDS.items() if isinstance(args, dict) and key in args), None)
        if found != kind:
            what = f"a {found} checkpoint of train_{found}.py" if found else "not a checkpoint of this project's trainers"
            tokenizer = checkpoint.get("config", {}).get("tokenizer") if found == "generator" else None
            what += f" (its tokenizer is {tokenizer})" if tokenizer else ""
            raise ValueError(f"{path} is {what}, not a {kind} checkpoint; pass a checkpoint of train_{kind}.py")
    return checkpoint


def read_config(path):
    """config.json in a checkpoint directory (or beside a weights file); {} when there is none."""
    path = Path(path)
    file = path / "config.json" if path.is_dir() else path.parent / "config.json"
    return json.loads(file.read_text()) if file.is_file() else {}


def load_exact(module, state_dict, source="checkpoint"):
    """load_state_dict that names every missing key, unexpected key and shape mismatch."""
    own = module.state_dict()
    shape = lambda v: tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__  # a foreign file holds anything
    problems = [f"missing key {k} (expected shape {shape(v)})" for k, v in own.items() if k not in state_dict]
    problems += [f"unexpected key {k} (shape {shape(v)})" for k, v in state_dict.items() if k not in own]
    problems += [f"shape mismatch for {k}: {source} has {shape(v)}, model expects {shape(own[k])}"
                 for k, v in state_dict.items() if k in own and shape(v) != shape(own[k])]
    if problems:
        raise ValueError(f"cannot load {source} into {type(module).__name__}: {len(problems)} keys or shapes do not fit, "
                         f"the first: {problems[0]}\n  " + "\n  ".join(problems))
    module.load_state_dict(state_dict)
