"""tools/gpu_check.sh, without a GPU: bash parses it, every --flag it passes is a setting of a script it runs (so that
a renamed setting shows here rather than on the GPU machine), and without a CUDA torch it stops at once with one line.
(GPU_CHECK_DRY=1 runs it all on the CPU at toy sizes, in about two minutes: too long for the suite.)"""
import os
import re
import subprocess
import sys

from conftest import ROOT, script_command

SCRIPT = ROOT / "tools" / "gpu_check.sh"
CALLED = ["train_tokenizer.py", "train_generator.py", "sample.py", "tools/bench.py", "fid.py"]


def test_bash_parses_it():
    p = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_every_flag_is_a_setting_of_a_script_it_runs():
    text = SCRIPT.read_text()
    assert all(" ".join(script_command(name)) in text for name in CALLED)
    assert "-m torch.distributed.run --standalone --nproc_per_node=1 train_tokenizer.py" in text
    settings = {"standalone", "nproc_per_node"}  # torchrun's own
    for name in CALLED:  # the nanoGPT-style scripts' top-level settings, and fid.py's argparse options
        source = (ROOT / name).read_text()
        for names in re.findall(r"^(\w+(?:, \w+)*) = ", source, re.M):
            settings.update(names.split(", "))
        settings.update(re.findall(r'add_argument\("--(\w+)"', source))
    lines = [line for line in text.splitlines() if "nvidia-smi" not in line]  # its own options
    flags = set(re.findall(r"--(\w+)=", "\n".join(lines)))
    assert {"image_size", "discriminator_start", "vgg16_weights", "workloads", "samples_per_class", "weights"} <= flags
    assert flags <= settings, sorted(flags - settings)


def test_without_cuda_it_stops_at_once_with_one_line(tmp_path):
    """This machine's torch has no CUDA: one line on stderr (and in the report), exit status 2, nothing run."""
    env = {**os.environ, "GPU_CHECK_PYTHON": sys.executable, "OUT": str(tmp_path), "OMP_NUM_THREADS": "1"}
    env.pop("GPU_CHECK_DRY", None)
    p = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
    assert re.fullmatch(r"gpu_check: nothing run: torch \S+ \(CUDA None\) sees no CUDA device; .*\n", p.stderr), p.stderr
    assert sorted(os.listdir(tmp_path)) == ["gpu_check.txt"] and (tmp_path / "gpu_check.txt").read_text() == p.stderr
