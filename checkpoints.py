"""
Checkpoints and weight files: writing and reading this repository's checkpoints (weights only, never
code), building a tokenizer from what its checkpoint records, and the strict, named errors every loader
relies on. `load_tokenizer` is the one loader the scripts call; it reads a trainer's checkpoint here and
hands a released TiTok (a directory or a Hugging Face repo id) to released/, imported only then.

A trainer's checkpoint, out_dir/ckpt.pt, is one dict (training.save writes it):
  model       the weights to use (the moving average's, where a trainer keeps one); load_tokenizer reads it
  model_args  what builds the model; config: every setting of the run; iter_num: optimizer steps done
  resume      what only resuming needs: optimizer(s), RNG state, and the trained weights beside an average
The previous checkpoint stays as out_dir/ckpt-prev.pt while the next is written.
"""
import json
import os
import re
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from configurator import fail
from model import TiTok, TiTokConfig

KINDS = {"tokenizer": "num_latent_tokens", "generator": "num_tokens"}  # a model_args key that only that kind has
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w-]+")  # owner/name, as yucornetto/tokenizer_titok_l32_imagenet


# ----------------------------------------------------------------------------------------------
# files


def save_checkpoint(checkpoint, path, keep_previous=False):
    """Write to a temporary file, then rename: a crash mid-write never leaves a broken checkpoint. keep_previous:
    the file it replaces stays beside it (previous(path)), for a crash between the two renames or a bad latest."""
    tmp = f"{path}.tmp"
    torch.save(checkpoint, tmp)
    if keep_previous and os.path.exists(path):
        os.replace(path, previous(path))
    os.replace(tmp, path)


def previous(path):
    """out_dir/ckpt.pt -> out_dir/ckpt-prev.pt."""
    root, ext = os.path.splitext(path)
    return f"{root}-prev{ext}"


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


def load_checkpoint(path, what="checkpoint", kind=None):
    """read_checkpoint, where a missing, damaged or foreign file is a one-line error (configurator.fail)."""
    if not os.path.isfile(path):
        fail(f"{what} {path} does not exist; check the path (a trainer writes its out_dir/ckpt.pt)")
    try:
        return read_checkpoint(path, kind)
    except (OSError, ValueError) as e:
        fail(f"cannot read the {what}: {e}")


def existing(path, what):
    """`path` as a Path when it exists or is a Hugging Face repo id (released/hub.py downloads it); else
    FileNotFoundError, one line."""
    if not Path(path).exists() and not HUB_ID.fullmatch(str(path)):
        raise FileNotFoundError(f"{what} {path} does not exist; check the path (a trainer's out_dir or its ckpt.pt, a "
                                "released directory, or a Hugging Face repo id owner/name)")
    return Path(path)


def checkpoint_file(path):
    """A trainer's out_dir or its ckpt.pt -> the .pt file; None when `path` is not one (a released directory)."""
    p = Path(path)
    p = p / "ckpt.pt" if p.is_dir() else p
    return p if p.is_file() and p.suffix == ".pt" else None


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
    sd = read_checkpoint(file)
    return sd.get("state_dict", sd)


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


# ----------------------------------------------------------------------------------------------
# tokenizers

UPKEEP = ("step", "last_used", "embed_prob")  # quantizer.upkeep's buffers, once the quantizer's own
TRAINING_ARGS = ("usage_window", "dead_code_restart", "clustering_vq", "routing_init", "head")  # not the architecture


def tokenizer_config(model_args):
    """What a checkpoint's model_args describe -> (class, config): model.TiTok; the two-stage model when they
    name a teacher's codebook (stages 1 and 2: two_stage/), a released legacy TiTok when they say so (released/),
    the small-budget head when they name it (aids/pixel_grid.py: older demo and photo checkpoints), each imported
    only then. Older checkpoints' training settings are dropped, `head_stride` renamed. The config checks the
    settings (ValueError, one line)."""
    args = {k: v for k, v in model_args.items() if k not in TRAINING_ARGS}
    if "head_stride" in args:  # its earlier name
        args["head_upsample"] = args.pop("head_stride")
    if args.pop("released_legacy", False):
        from released.titok import ReleasedTiTok
        from two_stage.titok import TwoStageConfig
        return ReleasedTiTok, TwoStageConfig(**args)
    if "proxy_codebook_size" in args:
        from two_stage.titok import TwoStageConfig, TwoStageTiTok
        return TwoStageTiTok, TwoStageConfig(**args)
    if args.get("head_upsample", 1) != 1 or args.get("conv_out_padding", "zeros") != "zeros":
        from aids.pixel_grid import SmallBudgetConfig, SmallBudgetTiTok
        return SmallBudgetTiTok, SmallBudgetConfig(**args)
    return TiTok, TiTokConfig(**{k: v for k, v in args.items() if k not in ("head_upsample", "conv_out_padding")})


def build_tokenizer(model_args):
    cls, cfg = tokenizer_config(model_args)
    return cls(cfg)


def model_args_of(model):
    """What build_tokenizer needs to build `model` again."""
    return {**asdict(model.config), **({"released_legacy": True} if getattr(model, "released_legacy", False) else {})}


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
    """A tokenizer in eval mode from a checkpoint of train_tokenizer.py or two_stage/train_stage1.py (ckpt.pt,
    or its directory), a released TiTok directory (config.json + model.safetensors), or a Hugging Face
    repo id of one (yucornetto/tokenizer_titok_bl64_vq8k_imagenet: downloaded when huggingface_hub is
    installed). A missing, damaged or foreign file: FileNotFoundError or ValueError, named.
    with_config: (model, its training config ({} for a released one), the file read)."""
    file = checkpoint_file(existing(path, "tokenizer checkpoint"))
    if file is not None:
        checkpoint = read_checkpoint(file, "tokenizer")
        model, config = build_tokenizer(checkpoint["model_args"]), checkpoint.get("config", {})
        load_tokenizer_state(model, checkpoint["model"], str(file))
    else:
        from released.titok import load_released_tokenizer
        model, file = load_released_tokenizer(path)
        config = {}
    model = model.to(device).eval()
    return (model, config, file) if with_config else model
