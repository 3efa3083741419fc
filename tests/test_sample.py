"""sample.py end to end with tiny checkpoints: outputs, determinism, and the errors that come before any work."""
import contextlib
import io
import os
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, official_fixture
from generator import MaskGIT, MaskGITConfig
from test_train_generator import make_tokenizer


def make_generator(path, tokenizer, codebook_size=64, num_tokens=8):
    """A train_generator.py checkpoint of an untrained tiny MaskGIT for 10 classes."""
    args = dict(codebook_size=codebook_size, num_tokens=num_tokens, num_classes=10, hidden_size=32, depth=1, heads=2,
                mlp_dim=64, num_steps=4)
    torch.manual_seed(0)
    model = MaskGIT(MaskGITConfig(**args))
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "model_args": args, "iter_num": 0, "config": {"tokenizer": str(tokenizer)}},
               os.path.join(path, "ckpt.pt"))
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    tokenizer = make_tokenizer(root / "tokenizer")
    return tokenizer, make_generator(root / "generator", tokenizer)


def run(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_grid_npz_and_same_seed_same_images(tmp_path, ckpts):
    _, generator = ckpts  # the tokenizer comes from the generator's checkpoint
    p = run(f"--generator={generator}", "--samples_per_class=3", "--batch_size=8", f"--out={tmp_path}/a")
    run(f"--generator={generator}", "--samples_per_class=3", "--batch_size=8", f"--out={tmp_path}/b")
    assert "samples/s" in p.stdout
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["arr_0"].shape == (30, 32, 32, 3) and a["arr_0"].dtype == np.uint8
    assert a["labels"].tolist() == [c for c in range(10) for _ in range(3)]
    assert np.array_equal(a["arr_0"], b["arr_0"])
    assert Image.open(tmp_path / "a.png").size == (3 * 32, 10 * 32)  # one row per class

    c = run(f"--generator={generator}", f"--tokenizer={ckpts[0]}", "--classes=7,2", "--samples_per_class=2",
            "--seed=1", "--guidance_scale=0", "--num_steps=2", f"--out={tmp_path}/c")
    assert "num_steps 2, guidance_scale 0" in c.stdout
    c = np.load(tmp_path / "c.npz")
    assert c["labels"].tolist() == [7, 7, 2, 2] and c["arr_0"].shape == (4, 32, 32, 3)
    assert Image.open(tmp_path / "c.png").size == (2 * 32, 2 * 32)


@pytest.mark.parametrize("model_type", ["ViT", "UViT"])
def test_fixed_shape_sampling_draws_the_same_codes(model_type):
    """generate(fixed_shape=True), as sample.py runs it compiled: the unconditional half also at the unguided
    steps (2B rows at every step). The conditional rows' logits, and so the codes, are the same bit for bit."""
    torch.manual_seed(0)
    gen = MaskGIT(MaskGITConfig(codebook_size=64, num_tokens=8, num_classes=10, hidden_size=32, depth=2, heads=2,
                                mlp_dim=64, num_steps=4, model_type=model_type)).eval()
    rows, forward = [], gen.forward
    gen.forward = lambda ids, labels: rows.append(len(ids)) or forward(ids, labels)
    labels = torch.arange(7) % 10
    for decay in ("linear", "power-cosine", "constant"):
        codes = []
        for fixed in (False, True):
            rows.clear()
            codes.append(gen.generate(labels, guidance_decay=decay, rng=torch.Generator().manual_seed(1),
                                      fixed_shape=fixed))
            assert rows == [14] * 4 if fixed or decay == "constant" else rows == [7, 14, 14, 14], (decay, fixed, rows)
        assert torch.equal(*codes), decay


def test_two_processes_draw_the_images_of_one(tmp_path, ckpts):
    """Under torchrun (gloo on CPU) the batches are shared between the processes, each drawn with its own seed, and
    rank 0 gathers and writes them: the .npz of one process, bit for bit. 30 samples in batches of 7: the last
    batch is short, and in the last round rank 1 has none."""
    _, generator = ckpts
    args = [f"--generator={generator}", "--samples_per_class=3", "--batch_size=7", "--randomize_temperature=2.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    started = [subprocess.Popen([*command, "sample.py", *args, f"--out={tmp_path}/{name}"], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, command in (("one", [sys.executable]), ("two", launch))]
    for p in started:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, out + err
    lines = [line for line in out.splitlines() if line]  # the two-process run's
    assert "2 processes" in lines[0] and len(set(lines)) == len(lines), out  # only rank 0 prints
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["labels"], two["labels"]) and one["arr_0"].shape == (30, 32, 32, 3)
    assert np.array_equal(one["arr_0"], two["arr_0"])
    assert len(np.unique(one["arr_0"].reshape(30, -1), axis=0)) > 1  # not a constant image
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.npz", "one.png", "two.npz", "two.png"]


def sample_in_process(monkeypatch, *args):
    """Run sample.py in this process: much faster than a subprocess for the short runs below."""
    monkeypatch.setattr(sys, "argv", ["sample.py", *args])
    runpy.run_path(str(ROOT / "sample.py"), run_name="__main__")


def sample_error(monkeypatch, tmp_path, *args):
    """sample.py's error line (exit status 2); it must not have written anything."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(err):
        sample_in_process(monkeypatch, *args, f"--out={tmp_path}/s")
    assert e.value.code == 2 and err.getvalue().splitlines()[-1].startswith("error: "), err.getvalue()
    assert not list(tmp_path.glob("s.*"))
    return err.getvalue().splitlines()[-1]


def test_released_checkpoints(monkeypatch, tmp_path, capsys, ckpts):
    """Directories in the Hugging Face layout, as `--tokenizer=tokenizer_titok_l32_imagenet
    --generator=generator_titok_l32_imagenet`; their sampling settings come from the generator's config."""
    tokenizer, generator = official_fixture("tokenizer"), official_fixture("generator")
    sample_in_process(monkeypatch, f"--tokenizer={tokenizer}", f"--generator={generator}", "--classes=0,9",
                      "--samples_per_class=2", "--num_steps=4", f"--out={tmp_path}/s")
    assert "num_steps 4, guidance_scale 4.5, guidance_decay linear" in capsys.readouterr().out
    z = np.load(tmp_path / "s.npz")
    assert z["arr_0"].shape == (4, 64, 64, 3) and z["labels"].tolist() == [0, 0, 9, 9]
    err = sample_error(monkeypatch, tmp_path / "e", f"--tokenizer={ckpts[0]}", f"--generator={generator}")
    assert "codebook of 4096" in err and "do not belong together" in err


def test_clear_errors_before_any_work(monkeypatch, tmp_path, ckpts):
    tokenizer, generator = ckpts
    err = sample_error(monkeypatch, tmp_path, f"--generator={generator}", "--classes=3,10")
    assert "class labels must be in [0, 10)" in err and "[3, 10]" in err
    err = sample_error(monkeypatch, tmp_path, f"--generator={generator}", "--classes=a")
    assert "comma-separated integers" in err
    other = make_generator(tmp_path / "g128", tokenizer, codebook_size=128)
    err = sample_error(monkeypatch, tmp_path, f"--generator={other}")
    assert "codebook of 128" in err and "codebook of 64" in err and "do not belong together" in err
    other = make_generator(tmp_path / "k16", tokenizer, num_tokens=16)
    err = sample_error(monkeypatch, tmp_path, f"--generator={other}")
    assert "16 tokens" in err and "8 tokens" in err
    err = sample_error(monkeypatch, tmp_path, f"--generator={tmp_path}/nowhere")
    assert "generator checkpoint" in err and "does not exist" in err
    err = sample_error(monkeypatch, tmp_path, f"--generator={generator}", f"--tokenizer={tmp_path}/nowhere")
    assert "tokenizer checkpoint" in err and "does not exist" in err
    err = sample_error(monkeypatch, tmp_path, f"--generator={tokenizer}")  # a tokenizer is not a generator
    assert "not a generator checkpoint" in err
    err = sample_error(monkeypatch, tmp_path, f"--generator={generator}", "--guidance_decay=cosine")
    assert "guidance_decay must be one of" in err
