"""Two processes (torchrun, gloo on CPU) train what one process trains with the same global batch, 4 images
x 2 micro-steps, which each of the 2 ranks runs as 1 micro-step: the same loss at every step and the same
weights (float tolerance: sums in another order), also across a 2-process interruption and resume; only
rank 0 logs and writes. The one-process and the first 2-process run go side by side (2 cores)."""
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, logged_losses
from test_train_generator import TINY as GENERATOR, make_tokenizer
from test_train_tokenizer import TINY as TOKENIZER


@pytest.fixture
def start():
    """start(script, *args, nproc=1): `script` as a user runs it, in one process or under torchrun with `nproc`,
    one thread each; whatever still runs when the test ends (it failed) is stopped."""
    started = []

    def start(script, *args, nproc=1):
        launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
        started.append(subprocess.Popen([sys.executable, *launcher, script, *args], cwd=ROOT, text=True,
                                        env={**os.environ, "OMP_NUM_THREADS": "1"},
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
        return started[-1]
    yield start
    for p in started:
        if p.poll() is None:
            p.terminate()  # torchrun stops its workers
            p.wait()


def finish(p):
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, out + err
    lines = [line for line in out.splitlines() if line]
    assert len(set(lines)) == len(lines), out  # under torchrun, only rank 0 prints
    return out


def same_losses(a, b):
    """Equal up to the last printed digit."""
    assert len(a) == len(b) and a == pytest.approx(b, abs=1.01e-4), (a, b)


def same_weights(one, two):
    a, b = torch.load(one, weights_only=True), torch.load(two, weights_only=True)
    assert a["iter_num"] == b["iter_num"]
    for k, v in a["model"].items():
        assert torch.allclose(v.float(), b["model"][k].float(), rtol=1e-4, atol=1e-6), k


def test_tokenizer_two_processes_equal_one_across_a_resume(tmp_path, start):
    # dead-code restart on, with a window short enough that codes are re-seeded within the run
    args = [*TOKENIZER, "--dead_code_restart=True", "--usage_window=2", "--eval_interval=3", "--lr_decay_iters=6"]
    one = start("train_tokenizer.py", *args, "--max_iters=6", f"--out_dir={tmp_path}/one")
    first = finish(start("train_tokenizer.py", *args, "--max_iters=3", f"--out_dir={tmp_path}/two", nproc=2))
    one = finish(one)
    usage = [float(line.split("codebook usage ")[1].split("%")[0]) for line in one.splitlines() if line.startswith("iter")]
    assert usage[2] > usage[1] + 50, usage  # codes re-seeded at step 2
    assert "iter 3/3 |" in first and "eval 3:" in first  # printed once (finish), and written once:
    assert sorted(os.listdir(tmp_path / "two")) == ["ckpt.pt", "recon.png"]
    second = finish(start("train_tokenizer.py", *args, "--max_iters=6", "--init_from=resume", f"--out_dir={tmp_path}/two",
                          nproc=2))
    assert "resumed from" in second
    same_losses(logged_losses(first) + logged_losses(second), logged_losses(one))
    same_weights(tmp_path / "one" / "ckpt.pt", tmp_path / "two" / "ckpt.pt")


def test_generator_two_processes_equal_one(tmp_path, start):
    tok = make_tokenizer(tmp_path / "tok")
    args = [*GENERATOR, f"--tokenizer={tok}", "--max_iters=4", "--eval_interval=4", "--dropout=0.1"]
    one = start("train_generator.py", *args, f"--out_dir={tmp_path}/one")
    two = finish(start("train_generator.py", *args, f"--out_dir={tmp_path}/two", nproc=2))
    one = finish(one)
    # the same codes (tokenized in shards and gathered), then the same losses, dropout on, and weights
    a, b = (torch.load(tmp_path / d / "tokens.pt", weights_only=True) for d in ("one", "two"))
    assert torch.equal(a["codes"], b["codes"]) and torch.equal(a["labels"], b["labels"])
    same_losses(logged_losses(two), logged_losses(one))
    same_weights(tmp_path / "one" / "ckpt.pt", tmp_path / "two" / "ckpt.pt")
    assert "iter 4/4 |" in two and "eval 4:" in two
    assert sorted(os.listdir(tmp_path / "two")) == ["ckpt.pt", "samples.png", "tokens.pt"]
