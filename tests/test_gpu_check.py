"""tools/gpu_check.sh, without a GPU: bash parses it, and every --flag it passes is a setting of a script it runs, so
that a renamed setting shows here rather than on the GPU machine. (GPU_CHECK_DRY=1 runs it all on the CPU at toy
sizes, in about a minute: too long for the suite.)"""
import re
import subprocess

from conftest import ROOT, script_command

SCRIPT = ROOT / "tools" / "gpu_check.sh"
CALLED = ["train_tokenizer.py", "train_generator.py", "sample.py", "tools/bench.py", "fid.py"]


def test_bash_parses_it():
    p = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


def test_every_flag_is_a_setting_of_a_script_it_runs():
    text = SCRIPT.read_text()
    assert all(" ".join(["python", *script_command(name)]) in text for name in CALLED)
    settings = set()
    for name in CALLED:  # the nanoGPT-style scripts' top-level settings, and fid.py's argparse options
        source = (ROOT / name).read_text()
        for names in re.findall(r"^(\w+(?:, \w+)*) = ", source, re.M):
            settings.update(names.split(", "))
        settings.update(re.findall(r'add_argument\("--(\w+)"', source))
    lines = [line for line in text.splitlines() if "nvidia-smi" not in line]  # its own options
    flags = set(re.findall(r"--(\w+)=", "\n".join(lines)))
    assert {"image_size", "discriminator_start", "vgg16_weights", "workloads", "samples_per_class", "weights"} <= flags
    assert flags <= settings, sorted(flags - settings)
