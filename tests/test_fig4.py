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
image_size = 32
patch_size = 8
num_workers = 0
perceptual_weight = 0.0
discriminator_weight = 0.0
ema_decay = 0.0
routing_init = True
codebook_size = 64
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
            "--sizes=['micro']", "--tokens_2d=[]", "--tokenizer_iters=3", "--num_train=32", "--eval_images=16",
            "--probe_train=40", "--probe_test=20", "--samples_per_class=2", "--classifier_images=64",
            "--classifier_steps=2"]
    first = run_script("studies/fig4.py", *tiny, "--ks=[2,4]", "--seeds=[0]", "--generator_iters=3").stdout
    for point in ("micro-2", "micro-4", "micro-ordered4"):
        assert f"{point} seed 0: training the tokenizer" in first and f"{point} seed 0: training the generator" in first
    runs = list(csv.DictReader(open(out / "fig4.csv")))
    assert [(r["point"], r["seed"]) for r in runs] == [("micro-2", "0"), ("micro-4", "0"), ("micro-ordered4", "0")]
    assert all(v != "" for k, v in runs[0].items() if not k.startswith("psnr_first_")), runs[0]
    assert runs[2]["psnr_first_2_dB"] != "" and runs[2]["psnr_first_4_dB"] == runs[2]["psnr_dB"]  # all K: as encoded
    table = (out / "fig4.md").read_text().splitlines()
    row = next(line for line in table if line.startswith("| micro-2 |"))
    assert row.count("|") == 14 and "|  |" not in row and row.count(" (") == 4 and " ± " not in row, row  # one seed
    # the ordered model: a row for each k of the grid, from its first k tokens; below K its PSNR alone
    coarse = next(line for line in table if line.startswith("| micro-ordered4, first 2 | 1d | 2 |"))
    full = next(line for line in table if line.startswith("| micro-ordered4, first 4 | 1d | 4 |"))
    assert coarse.count("–") == 7 and "–" not in full, (coarse, full)
    assert (out / "fig4.png").is_file() or "no plot" in first
    tok_ckpt, gen_ckpt = (out / "micro-2" / "seed0" / x / "ckpt.pt" for x in ("tokenizer", "generator"))
    stamps = tok_ckpt.stat().st_mtime_ns, gen_ckpt.stat().st_mtime_ns

    again = run_script("studies/fig4.py", *tiny, "--ks=[2,4]", "--seeds=[0]", "--generator_iters=3").stdout
    assert again.count("done before, kept") == 3 and "training" not in again, again
    # a second seed, and longer generators: seed 0 trains its generator alone, seed 1 everything
    more = run_script("studies/fig4.py", *tiny, "--ks=[2]", "--ordered=False", "--seeds=[0,1]", "--generator_iters=4").stdout
    assert "micro-2 seed 0: training the generator" in more and "seed 0: evaluating (kept the finished tokenizer)" in more
    assert "seed 0: training the tokenizer" not in more and "micro-2 seed 1: training the tokenizer" in more, more
    assert [(r["point"], r["seed"]) for r in csv.DictReader(open(out / "fig4.csv"))] == [("micro-2", "0"), ("micro-2", "1")]
    row = next(line for line in (out / "fig4.md").read_text().splitlines() if line.startswith("| micro-2 |"))
    assert row.count(" ± ") == 8 and row.count(" (") == 4, row  # the seeds' spread beside each sampling error
    assert tok_ckpt.stat().st_mtime_ns == stamps[0] and gen_ckpt.stat().st_mtime_ns != stamps[1]
    assert torch.load(gen_ckpt, weights_only=True)["iter_num"] == 4


def test_bad_grids_stop_with_one_line(tmp_path):
    for flag, words in (("--tokens_2d=[5]", "tokens_2d holds 5"),
                        ("--tokens_2d=[9]", "tokens_2d holds 9"),  # 9 = 3 x 3: 3 does not divide the 32-px image
                        ("--seeds=[1, 1]", "distinct")):
        p = run_script("studies/fig4.py", flag, f"--out_dir={tmp_path}", check=False)
        assert p.returncode == 2 and p.stderr.startswith("error: ") and words in p.stderr, p.stderr
        assert p.stderr.count("\n") == 1, p.stderr
    assert list(tmp_path.iterdir()) == []  # stopped before any work
