"""
Released weights from the Hugging Face hub: a repo id (owner/name, checkpoints.HUB_ID) with no such local
directory is downloaded by huggingface_hub, an optional dependency (HF_HUB_OFFLINE=1 reads its cache only).
"""
from pathlib import Path

from checkpoints import existing


def local_or_hub(path, what):
    """`path` as a Path when it exists; for a Hugging Face repo id, its snapshot. Otherwise FileNotFoundError: the
    path does not exist, or the command that downloads the repo id."""
    p = existing(path, what)
    if p.exists():
        return p
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
