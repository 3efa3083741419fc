"""The codebook refit (refit.py, a small-budget aid): k-means on a finished tokenizer's codebook."""
import re

import pytest
import torch

from conftest import run_script
from quantizer import VectorQuantizer
from aids.refit import kmeans
from test_train_tokenizer import run


@pytest.mark.parametrize("use_l2_norm", [True, False])
def test_refit_is_kmeans_with_the_unchosen_codes_reseeded_at_outputs(use_l2_norm):
    torch.manual_seed(0)
    vq = VectorQuantizer(codebook_size=64, token_size=4, use_l2_norm=use_l2_norm)
    vq.codebook.weight.data.normal_()
    z = (vq.codebook.weight[:8].detach() + 0.3 * torch.randn(500, 8, 4)).reshape(-1, 4)  # 8 clusters of 500

    def distortion():
        zn, codebook = vq.norm(z), vq.norm(vq.codebook.weight)
        return (zn - codebook[vq.nearest(zn, codebook)]).pow(2).sum(-1).mean()

    codes = vq.nearest(vq.norm(z), vq.norm(vq.codebook.weight))
    start = distortion()
    moved, reseeded = kmeans(vq, z, steps=1)
    assert moved == len(codes.unique()) and moved + reseeded == 64 and reseeded > 0
    for c in range(64):  # one Lloyd step: a code some output chose is their mean, any other is one of the outputs
        mine = vq.norm(z)[codes == c]
        if len(mine):
            assert torch.allclose(vq.codebook.weight[c], mine.mean(0), atol=1e-5), c
        else:
            assert (vq.norm(z) == vq.codebook.weight[c]).all(1).any(), c
    after_one = distortion()
    kmeans(vq, z, steps=3)
    assert distortion() <= after_one <= start and distortion() < 0.9 * start  # never worse, and here better


def test_refit_py_moves_the_codes_of_a_finished_checkpoint_and_nothing_else(tmp_path):
    shifts = "--brightness_shift=0.1", "--saturation_shift=0.5"  # in training, and so in the refit's passes
    run(f"--out_dir={tmp_path}", "--max_iters=4", "--eval_interval=4", "--ema_decay=0.9", *shifts)
    a = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    p = run_script("aids/refit.py", f"--tokenizer={tmp_path}", "--epochs=2")
    assert "codebook refit: 2 k-means steps on 1024 encoder outputs of 2 passes" in p.stdout  # 2 x 64 images x 8
    assert re.search(r"held-out PSNR [\d.]+ dB before the refit, [\d.]+ dB after", p.stdout), p.stdout
    b = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    assert torch.equal(torch.load(tmp_path / "ckpt-prev.pt", weights_only=True)["model"]["quantizer.codebook.weight"],
                       a["model"]["quantizer.codebook.weight"])  # the one before is kept
    moved, reseeded = map(int, re.search(r"(\d+) codes moved to their outputs' mean, (\d+) re-seeded", p.stdout).groups())
    assert moved + reseeded == 64 and moved > 0
    new = b["model"]["quantizer.codebook.weight"]
    assert (a["model"]["quantizer.codebook.weight"] != new).any(1).all()  # moved or re-seeded
    assert torch.equal(b["resume"]["raw"]["quantizer.codebook.weight"], new)  # a resume continues from the refit codes
    for weights in ("model", "raw"):  # the rest as trained
        before, after = (x["model"] if weights == "model" else x["resume"]["raw"] for x in (a, b))
        assert all(torch.equal(v, after[k]) for k, v in before.items() if k != "quantizer.codebook.weight"), weights
    p = run_script("aids/refit.py", f"--tokenizer={tmp_path}", "--max_gigabytes=1e-6", check=False)
    assert p.returncode == 2 and "would hold" in p.stderr and "lower --epochs" in p.stderr
    run(f"--out_dir={tmp_path}/vae", "--quantize_mode=vae", "--max_iters=1", "--eval_interval=1")
    p = run_script("aids/refit.py", f"--tokenizer={tmp_path}/vae", check=False)
    assert p.returncode == 2 and "not a single-stage VQ tokenizer" in p.stderr and p.stderr.count("\n") == 1
