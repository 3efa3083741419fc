"""classify.py: a briefly trained classifier puts real shapes in their class, scores an .npz of samples,
is reused once saved, and names a missing or mismatched input before any work."""
import re

import numpy as np

from conftest import run_script
from data import Shapes


def write_npz(path, size=32, label_shift=0):
    """100 real held-out shapes in sample.py's .npz layout, labelled right (shift 0) or wrong."""
    data = Shapes(size, "val", 100, seed=5)
    images = np.stack([(data[i][0].permute(1, 2, 0).numpy() * 255).astype(np.uint8) for i in range(100)])
    np.savez(path, arr_0=images, labels=(np.arange(100) + label_shift) % 10)
    return path


def score(stdout):
    return float(re.search(r"samples in .*?: ([\d.]+)% of 100 in their class", stdout).group(1))


def test_classify_trains_once_and_scores_samples(tmp_path):
    right, wrong = write_npz(tmp_path / "right.npz"), write_npz(tmp_path / "wrong.npz", label_shift=1)
    args = [f"--classifier={tmp_path / 'cnn.pt'}", "--image_size=32", "--num_train=1000", "--steps=150", "--batch_size=32"]
    first = run_script("studies/classify.py", f"--npz={right}", *args).stdout
    assert "training the shape classifier" in first and (tmp_path / "cnn.pt").is_file()
    assert score(first) > 60 and "circle" in first and "pair" in first  # chance is 10%
    second = run_script("studies/classify.py", f"--npz={wrong}", *args).stdout
    assert "training" not in second  # the saved classifier is reused
    assert score(second) < 20


def test_classify_errors_before_work(tmp_path):
    missing = run_script("studies/classify.py", f"--npz={tmp_path / 'none.npz'}", check=False)
    assert missing.returncode != 0 and "none.npz does not exist" in missing.stderr + missing.stdout
    other_size = write_npz(tmp_path / "big.npz", size=48)
    p = run_script("studies/classify.py", f"--npz={other_size}", f"--classifier={tmp_path / 'cnn.pt'}", "--image_size=32",
                   "--num_train=100", "--steps=1", check=False)
    assert p.returncode != 0 and "48px" in p.stderr + p.stdout
