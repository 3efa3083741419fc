"""torch.compile as the GPU runs it, on the CPU (inductor): each trainer compiles its model for 3 steps of a
micro model, the tokenizer also under 2-process DDP (gloo). No graph break in the model's forward, no
recompilation after the first step (TORCH_LOGS), and the losses of the eager run within float tolerance.
sample.py compiles its two networks once each, however the guidance and the last batch change the batch."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, logged_losses, script_command
from test_sample import make_generator
from test_train_generator import TINY as GENERATOR, make_tokenizer
from test_train_tokenizer import TINY as TOKENIZER

STEPS = ["--max_iters=3", "--eval_interval=3", "--log_interval=1"]


def start(script, *args, nproc=1):
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "graph_breaks,recompiles"}
    return subprocess.Popen([sys.executable, *launcher, *script_command(script), *args, *STEPS], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Compiled and eager runs, started together (compiling is mostly one core's work)."""
    d = tmp_path_factory.mktemp("compile")
    gen = [*GENERATOR, f"--tokenizer={make_tokenizer(d / 'tok')}", "--dropout=0.0"]  # compiled dropout draws otherwise
    tok = [*TOKENIZER, "--clustering_vq=True"]  # the VQ-8k recipe's upkeep: each forward keeps its encoder outputs
    started = {
        "tokenizer": start("train_tokenizer.py", *tok, "--compile=True", f"--out_dir={d}/t1"),
        "tokenizer eager": start("train_tokenizer.py", *tok, f"--out_dir={d}/t0"),
        "tokenizer ddp": start("train_tokenizer.py", *tok, "--compile=True", f"--out_dir={d}/t2", nproc=2),
        "generator": start("train_generator.py", *gen, "--compile=True", f"--out_dir={d}/g1"),
        "generator eager": start("train_generator.py", *gen, f"--out_dir={d}/g0"),
    }
    out = {}
    for name, p in started.items():
        stdout, stderr = p.communicate(timeout=600)
        assert p.returncode == 0, name + stdout + stderr
        out[name] = (stdout, stderr)
    return out


@pytest.mark.parametrize("name", ["tokenizer", "tokenizer ddp", "generator"])
def test_compiled_trainers_have_no_graph_break_nor_recompilation(runs, name):
    stdout, stderr = runs[name]
    assert "Graph break" not in stderr and "Recompiling" not in stderr, stderr[-3000:]
    eager = logged_losses(runs[name.split()[0] + " eager"][0])
    assert logged_losses(stdout) == pytest.approx(eager, rel=1e-3)


def test_compiled_sampling_compiles_each_network_once(tmp_path):
    """10 samples in batches of 4: a short last batch, and the default guidance, unguided at step 0 (a batch of 4
    where the other steps run 8). The compiled run traces gen.forward and tok.decode once each (TORCH_LOGS dynamo:
    a recompilation or a graph break traces again); its full batches are the eager run's images (the padded
    last batch draws other noise), up to the rounding of their last grey level."""
    generator = make_generator(tmp_path / "gen", make_tokenizer(tmp_path / "tok"))
    args = [f"--generator={generator}", "--samples_per_class=1", "--batch_size=4", "--device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_LOGS": "graph_breaks,recompiles,dynamo"}
    started = [subprocess.Popen([sys.executable, "sample.py", *args, *more, f"--out={tmp_path}/{name}"], cwd=ROOT,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for name, more in (("compiled", ["--compile=True"]), ("eager", []))]
    (out, err), _ = [p.communicate(timeout=600) for p in started]
    assert all(p.returncode == 0 for p in started), out + err
    traced = [line.split("start tracing ")[1].split()[0] for line in err.splitlines() if "start tracing" in line]
    assert traced == ["forward", "decode"], err[-3000:]
    assert "Graph break" not in err and "Recompiling" not in err, err[-3000:]
    compiled, eager = (np.load(tmp_path / f"{name}.npz") for name in ("compiled", "eager"))
    assert compiled["arr_0"].shape == (10, 32, 32, 3) and compiled["labels"].tolist() == list(range(10))
    assert np.abs(compiled["arr_0"][:8].astype(int) - eager["arr_0"][:8]).max() <= 1
