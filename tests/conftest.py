import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy/scipy load: a 2048x2048 sqrtm on a busy 2-core box

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the scripts are flat files at the repository root
SHARED = ROOT.parent / "shared"  # reference material beside the checkout; absent outside this workplace
OFFICIAL = SHARED / "fixtures" / "official"

torch.set_num_threads(1)  # tiny tensors: threads cost more than they give, and CI has 2 cores


def official_fixture(name):
    """Directory of an official-implementation fixture, or skip the test when it is absent."""
    path = OFFICIAL / name
    if not path.is_dir():
        pytest.skip(f"official fixture {path} not present")
    return path


def script_command(script):
    """How a user runs one of the repository's scripts: `python train_tokenizer.py` at the root, `python -m
    studies.fig4` for studies/fig4.py. -> the arguments after the interpreter (or torchrun)."""
    return [script] if "/" not in script else ["-m", script.removesuffix(".py").replace("/", ".")]


def run_script(script, *args, check=True, env=None):
    """Run one of the repository's scripts as a user would; one thread, so parallel CI jobs don't thrash.
    `env`: variables added to the environment."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    p = subprocess.run([sys.executable, *script_command(script), *args], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def logged_losses(stdout):
    """The losses of a trainer's 'iter ... | loss X | ...' lines."""
    return [float(line.split("| loss ")[1].split()[0]) for line in stdout.splitlines() if line.startswith("iter ")]


@pytest.fixture(scope="session")
def perceptual_weights(tmp_path_factory):
    """Random weights in the layouts of the files a user downloads (torchvision's VGG16, its classifier too, and
    ConvNeXt-S; LPIPS' vgg.pth), so that the trainers run the whole recipe: the mechanics, not the values.
    -> the train_tokenizer.py flags that name them."""
    from nets.perceptual import CHANNELS, ConvNeXtSmall, VGG16Features
    d = tmp_path_factory.mktemp("perceptual")
    torch.manual_seed(0)
    vgg = {**VGG16Features().state_dict(), "classifier.0.weight": torch.zeros(8, 8)}
    torch.save(vgg, d / "vgg16-397923af.pth")
    torch.save({f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) / c ** 0.5 for i, c in enumerate(CHANNELS)}, d / "vgg.pth")
    torch.save(ConvNeXtSmall().state_dict(), d / "convnext_small-0c510722.pth")
    return [f"--vgg16_weights={d}/vgg16-397923af.pth", f"--lpips_weights={d}/vgg.pth",
            f"--convnext_weights={d}/convnext_small-0c510722.pth"]
