"""fig4.py: the linear probe, and the driver end to end on a one-point grid of tiny models: it fills the
table, a rerun trains nothing, and a changed constant reruns only what it changes."""
import csv

import torch

from conftest import run_script
from studies.fig4 import linear_probe


def test_probe_separates_a_separable_set_and_not_noise():
    g = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(10, 16, generator=g)
    y = torch.randint(0, 10, (700,), generator=g)
    x = centres[y] + torch.randn(700, 16, generator=g)
    assert linear_probe(x[:500], y[:500], x[500:], y[500:], 10) > 0.98
    noise = torch.randn(700, 64, generator=g)
    assert linear_probe(noise[:500], y[:500], noise[500:], y[500:], 10) < 0.2  # chance: 0.1


TOKENIZER = """dataset = "shapes"
num_workers = 0
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
routing_init = True
batch_size = 4
gradient_accumulation_steps = 1
eval_batches = 1
warmup_iters = 1
compile = False
"""
GENERATOR = """hidden_size = 32
depth = 1
heads = 2
mlp_dim = 64
dropout = 0.0
num_steps = 2
batch_size = 8
gradient_accumulation_steps = 1
num_workers = 0
tokenize_batch_size = 64
eval_batches = 1
warmup_iters = 1
compile = False
"""


def test_driver_fills_the_table_and_resumes(tmp_path):
    (tmp_path / "tok.py").write_text(TOKENIZER)
    (tmp_path / "gen.py").write_text(GENERATOR)
    out = tmp_path / "out"
    tiny = [f"--out_dir={out}", f"--tokenizer_config={tmp_path / 'tok.py'}", f"--generator_config={tmp_path / 'gen.py'}",
            "--sizes=['micro']", "--tokens_2d=[]", "--image_size=32", "--patch_size=8", "--tokenizer_iters=3",
            "--num_train=32", "--eval_images=16", "--probe_train=40", "--probe_test=20", "--samples_per_class=2",
            "--classifier_images=64", "--classifier_steps=2", "--codebook_size=64"]
    first = run_script("studies/fig4.py", *tiny, "--ks=[2]", "--generator_iters=3").stdout
    assert "micro-2: training the tokenizer" in first and "micro-2: training the generator" in first, first
    rows = list(csv.DictReader(open(out / "fig4.csv")))
    assert [r["point"] for r in rows] == ["micro-2"] and all(v != "" for v in rows[0].values()), rows
    table = (out / "fig4.md").read_text().splitlines()
    row = next(line for line in table if line.startswith("| micro-2 |"))
    assert row.count("|") == 14 and "|  |" not in row and row.count(" ± ") == 4, row  # with sampling errors
    tok_ckpt, gen_ckpt = out / "micro-2" / "tokenizer" / "ckpt.pt", out / "micro-2" / "generator" / "ckpt.pt"
    stamps = tok_ckpt.stat().st_mtime_ns, gen_ckpt.stat().st_mtime_ns

    again = run_script("studies/fig4.py", *tiny, "--ks=[2]", "--generator_iters=3").stdout
    assert "micro-2: done before, kept" in again and "training" not in again, again
    more = run_script("studies/fig4.py", *tiny, "--ks=[2,4]", "--generator_iters=3").stdout  # one more K: only it is trained
    assert "micro-2: done before, kept" in more and "micro-4: training the tokenizer" in more, more
    assert "micro-2: training" not in more
    assert [r["point"] for r in csv.DictReader(open(out / "fig4.csv"))] == ["micro-2", "micro-4"]
    assert (tok_ckpt.stat().st_mtime_ns, gen_ckpt.stat().st_mtime_ns) == stamps
    longer = run_script("studies/fig4.py", *tiny, "--ks=[2]", "--generator_iters=4").stdout  # the generators only
    assert "micro-2: training the generator" in longer and "kept the finished tokenizer" in longer, longer
    assert "training the tokenizer" not in longer
    assert tok_ckpt.stat().st_mtime_ns == stamps[0] and gen_ckpt.stat().st_mtime_ns != stamps[1]
    assert torch.load(gen_ckpt, weights_only=True)["iter_num"] == 4


def test_a_2d_point_that_is_not_a_square_grid_stops_with_one_line(tmp_path):
    for bad in ("[5]", "[0]", "[9]"):  # 9 = 3 x 3: 3 does not divide the 64-px image
        p = run_script("studies/fig4.py", f"--tokens_2d={bad}", f"--out_dir={tmp_path}", check=False)
        assert p.returncode == 2 and p.stderr.startswith("error: tokens_2d holds") and p.stderr.count("\n") == 1, p.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before any work
