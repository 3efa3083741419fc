"""studies/reconstruct.py: the metrics, the token study's ablation and swap, and the script end to end on a tiny tokenizer."""
import contextlib
import copy
import io
import os
import runpy
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import fid
from checkpoints import load_tokenizer
from data import ImageFolder, Shapes, as_float
from model import PRESETS, TiTok, TiTokConfig
from studies import reconstruct
from training import psnr, rng_state


def make_tokenizer(path, num_tokens=8, seed=0, **kw):
    """A checkpoint in train_tokenizer.py's format of an untrained micro TiTok on 32x32 shapes; its codebook
    is seeded with encoder outputs, so that different images get different codes. kw: more model_args."""
    args = dict(image_size=32, patch_size=8, num_latent_tokens=num_tokens, codebook_size=64, **PRESETS["micro"], **kw)
    torch.manual_seed(seed)
    model = TiTok(TiTokConfig(**args)).eval()
    images = torch.stack([Shapes(32, "train", 64, seed)[i][0] for i in range(-(-64 // num_tokens))])
    with torch.no_grad():
        model.quantizer.codebook.weight.copy_(model.encoder(images).flatten(0, 1)[:64])
    optimizer = model.configure_optimizers(0.0, 1e-3, (0.9, 0.99), "cpu")
    os.makedirs(path, exist_ok=True)
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "model_args": args, "iter_num": 0,
                "config": {"dataset": "shapes", "image_size": 32, "num_train": 64, "seed": seed},
                "rng": rng_state()}, os.path.join(path, "ckpt.pt"))
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def tok_codes(ckpt):
    tok = load_tokenizer(ckpt)
    images = torch.stack([Shapes(32, "val", 8)[i][0] for i in range(8)])
    with torch.no_grad():
        return tok, tok.encode(images)


def test_psnr_ssim_of_identical_images_are_inf_and_one():
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(psnr(x, x), torch.full((2,), 100.0))  # the cap that keeps a mean finite
    assert torch.allclose(reconstruct.ssim(x, x), torch.ones(2))
    assert torch.allclose(psnr(x, (x + 0.1)), torch.full((2,), 20.0))  # mse 0.01: 20 dB


def slow_ssim(x, y):
    """SSIM written out window by window: Gaussian weights (11, sigma 1.5), weighted means, variances, covariance."""
    g = np.exp(-(np.arange(11) - 5) ** 2 / (2 * 1.5 ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2, values = 0.01 ** 2, 0.03 ** 2, []
    for c in range(x.shape[0]):
        for i in range(x.shape[1] - 10):
            for j in range(x.shape[2] - 10):
                a, b = x[c, i:i + 11, j:j + 11], y[c, i:i + 11, j:j + 11]
                ma, mb = (w * a).sum(), (w * b).sum()
                va, vb, cov = (w * (a - ma) ** 2).sum(), (w * (b - mb) ** 2).sum(), (w * (a - ma) * (b - mb)).sum()
                values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2)))
    return np.mean(values)


def test_ssim_matches_the_formula_and_is_symmetric():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 14, 13)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    s = reconstruct.ssim(x, y)
    assert s.item() == pytest.approx(slow_ssim(x[0].double().numpy(), y[0].double().numpy()), abs=1e-6)
    assert s.item() < 0.99 and torch.allclose(s, reconstruct.ssim(y, x))
    noise = torch.rand(1, 3, 32, 32)
    assert reconstruct.ssim(noise, torch.rand(1, 3, 32, 32)).item() < 0.1  # independent noise: near 0


def test_ablation_changes_the_image_only_through_that_token(tok_codes):
    tok, codes = tok_codes
    a, K = codes[0], codes.shape[1]
    base = tok.decode(a[None]).clamp(0, 1)
    for k in range(K):
        new = torch.tensor([c for c in range(64) if c != a[k]][:3])
        ablated, images = reconstruct.ablate(tok, a, k, new)
        others = [j for j in range(K) if j != k]
        assert torch.equal(ablated[:, others], a[others].expand(3, -1))  # the other codes are untouched
        assert torch.equal(ablated[:, k], new)
        assert torch.allclose(images, tok.decode(ablated).clamp(0, 1))
    # a replacement code whose vector is token k's own changes nothing: the code vector is the only path
    tok = copy.deepcopy(tok)
    k, new = 3, torch.tensor([c for c in range(64) if c not in a][0])
    with torch.no_grad():
        tok.quantizer.codebook.weight[new] = tok.quantizer.codebook.weight[a[k]]
    assert torch.allclose(reconstruct.ablate(tok, a, k, new[None])[1], base, atol=1e-6)


def test_swap_with_itself_is_the_identity(tok_codes):
    tok, codes = tok_codes
    a, b, K = codes[0], codes[1], codes.shape[1]
    swapped, images = reconstruct.swap(tok, a, a)
    assert torch.equal(swapped, a.expand(K, -1))
    assert torch.allclose(images, tok.decode(a[None]).clamp(0, 1).expand(K, -1, -1, -1), atol=1e-6)
    swapped = reconstruct.swap(tok, a, b)[0]
    assert not torch.equal(a, b)
    for k in range(K):  # row k: A's codes with token k of B
        assert swapped[k, k] == b[k] and torch.equal(swapped[k, :k], a[:k]) and torch.equal(swapped[k, k + 1:], a[k + 1:])


def test_influence_and_spread(tok_codes):
    tok, codes = tok_codes
    maps, examples = reconstruct.influence(tok, codes[0], codes, 2, torch.Generator().manual_seed(0))
    assert maps.shape == (8, 32, 32) and examples.shape == (8, 3, 32, 32) and (maps >= 0).all()
    one = torch.zeros(3, 8, 8)
    one[0, 2, 5] = 1.0
    one[1] = 1.0
    s = reconstruct.spread(one)
    assert s[0] == 1 / 64 and s[1] == 0.5 and s[2].isnan()  # one pixel, even, no influence


def run(monkeypatch, *args):
    """Run studies/reconstruct.py in this process (fast) and return its error line (exit status 2), or None on success."""
    monkeypatch.setattr(sys, "argv", ["studies/reconstruct.py", *args])
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            runpy.run_path(reconstruct.__file__, run_name="__main__")
    except SystemExit as e:
        assert e.code == 2 and err.getvalue().splitlines()[-1].startswith("error: "), err.getvalue()
        return err.getvalue().splitlines()[-1]


def test_end_to_end_with_study_and_token_count(monkeypatch, tmp_path, capsys, ckpt):
    other = make_tokenizer(tmp_path / "k4", num_tokens=4)
    weights = tmp_path / "inception.pth"
    torch.save(fid.InceptionV3().state_dict(), weights)  # random weights: the plumbing of rFID, not its value
    calls = []  # the matrix square root of 2048 x 2048 covariances takes half a minute on CPU: record the call instead
    monkeypatch.setattr(fid, "frechet_distance", lambda *stats: calls.append([s.shape for s in stats]) or 12.345)
    assert run(monkeypatch, f"--tokenizer={ckpt},{other}", f"--out_dir={tmp_path}/out", "--eval_images=6",
               "--num_show=3", "--study=True", "--study_images=2", "--ablation_draws=2", f"--fid_weights={weights}") is None
    out = capsys.readouterr().out
    assert "K=8 tokens" in out and "K=4 tokens" in out and "PSNR" in out and "SSIM" in out and "rFID 12.35" in out
    assert "with no learning: mean colour" in out and "4x4 block means" in out and "8x8 block means" in out
    assert calls == 2 * [[(2048,), (2048, 2048), (2048,), (2048, 2048)]]  # originals vs reconstructions, per tokenizer
    assert "6 shapes val images" in out  # the tokenizer's own dataset, held-out split
    assert "image 3: " in out and "image 4: " not in out  # show_codes = 4 lines of 8 codes
    codes = [line for line in out.splitlines() if line.startswith("  image 0: ")][0].split(": ")[1].split()
    assert len(codes) == 8 and all(0 <= int(c) < 64 for c in codes)
    assert "fraction of the image area that holds 50% of a token's influence" in out and "mean spread" in out
    for name in ("recon_grid", "token_count", "token_ablation", "token_swap"):
        assert Image.open(tmp_path / "out" / f"{name}.png").size[0] > 3 * 128


def test_clear_errors(monkeypatch, tmp_path, ckpt):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not an image")
    err = run(monkeypatch, f"--tokenizer={ckpt}", f"--dataset={tmp_path}/notes", f"--out_dir={tmp_path}/out")
    assert "no images" in err and "notes" in err
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "a.png").write_text("not an image either")
    err = run(monkeypatch, f"--tokenizer={ckpt}", f"--dataset={tmp_path}/fake", f"--out_dir={tmp_path}/out")
    assert "could be read" in err
    assert "does not exist" in run(monkeypatch, f"--tokenizer={tmp_path}/nothing")
    assert "below eval_images" in run(monkeypatch, f"--tokenizer={ckpt}", "--study=True", "--eval_images=4", "--swap_with=4")
    assert not (tmp_path / "out").exists()


def test_image_folder(monkeypatch, tmp_path, capsys, ckpt):
    for i in range(3):
        Image.fromarray(np.full((40, 48, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    assert run(monkeypatch, f"--tokenizer={ckpt}", f"--dataset={tmp_path}", f"--out_dir={tmp_path}/out") is None
    assert f"3 {tmp_path} all images" in capsys.readouterr().out  # a folder the tokenizer never saw: all of it
    assert Image.open(tmp_path / "out" / "recon_grid.png").size[0] > 3 * 128


def test_the_tokenizers_own_folder_is_evaluated_on_the_images_its_trainer_held_out(monkeypatch, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(70):
        Image.fromarray(np.full((32, 32, 3), 3 * i, np.uint8)).save(photos / f"{i}.png")
    ckpt = make_tokenizer(tmp_path / "tok")
    checkpoint = torch.load(tmp_path / "tok" / "ckpt.pt", weights_only=True)
    checkpoint["config"]["dataset"] = str(photos)
    torch.save(checkpoint, tmp_path / "tok" / "ckpt.pt")
    assert run(monkeypatch, f"--tokenizer={ckpt}", f"--out_dir={tmp_path}/out", "--eval_images=100") is None
    assert f"64 {photos} val images" in capsys.readouterr().out  # make_dataset's held-out 64, not the 6 trained on


def test_evaluated_images_cross_from_the_workers_as_uint8_and_are_the_floats_of_before(monkeypatch, tmp_path, ckpt):
    """An image folder's images leave the loader's worker as uint8 and become, on the device, the very floats
    that dataset[i] gives (what evaluate read before)."""
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(tmp_path / f"{i}.png")
    data, tok = ImageFolder(tmp_path, 32), load_tokenizer(ckpt)
    crossed, seen, encode = [], [], tok.encode
    monkeypatch.setattr(reconstruct, "as_float", lambda images: crossed.append(images.dtype) or as_float(images))
    monkeypatch.setattr(tok, "encode", lambda images: seen.append(images) or encode(images))
    monkeypatch.setattr(reconstruct, "num_workers", 1)
    monkeypatch.setattr(reconstruct, "batch_size", 2)
    reconstruct.evaluate(tok, data, 5, None, "cpu")
    assert crossed == [torch.uint8] * 3
    assert torch.equal(torch.cat(seen), torch.stack([data[i][0] for i in range(5)]))


def test_keep_decodes_an_ordered_tokenizers_first_k_tokens(monkeypatch, tmp_path, capsys):
    """--keep: the PSNR from the first k tokens for every k (with all K, the reconstruction's), and a row of images
    per k listed; the plot where matplotlib is installed, else a note."""
    ordered = make_tokenizer(tmp_path / "ordered", ordered_tokens=True)
    assert run(monkeypatch, f"--tokenizer={ordered}", f"--out_dir={tmp_path}/out", "--eval_images=6", "--num_show=3",
               "--keep=1,4,8") is None
    out = capsys.readouterr().out
    rows = [line.split("|")[1:3] for line in out.splitlines() if line.startswith("| ") and not line.startswith("| k")]
    assert [int(k) for k, _ in rows] == list(range(1, 9))
    assert f"PSNR {rows[-1][1].split()[0]} dB" in out  # all K: the reconstruction's PSNR
    assert len({v for _, v in rows}) > 1  # what the dropped tokens are read as changes the images
    width, height = Image.open(tmp_path / "out" / "coarse_to_fine.png").size
    assert width > 3 * 128 and height > 4 * 128  # the originals, then a row for each of k = 1, 4, 8
    assert (tmp_path / "out" / "keep_psnr.png").is_file() or "no plot" in out and "matplotlib is not installed" in out
