"""
fid.py's --pipeline=pytorch-fid against pytorch-fid, without pytorch-fid: tests/fixtures/fid/parity.npz holds two small sets
of uint8 images and the pool features and FID that pytorch-fid 0.3.0 computed from them with the
random FID-Inception weights of `random_fid_weights(WEIGHTS_SEED)` below (the real weights file
cannot be stored here). tests/fixtures/fid/make_fixture.py wrote it, once, in a throwaway virtualenv
with pytorch-fid installed; the tests regenerate the same weights (numpy's RandomState stream is
frozen across versions, and a checksum in the fixture proves it) and compare.
"""
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fid

FIXTURE = Path(__file__).parent / "fixtures" / "fid" / "parity.npz"
WEIGHTS_SEED = 0
FC_SHAPES = {"fc.weight": (1008, 2048), "fc.bias": (1008,)}  # in the official file; not used by FID


def random_fid_weights(seed):
    """A state dict in the layout of pt_inception-2015-12-05-6726825d.pth (keys, shapes, the unused
    classifier): He-scaled convolutions and near-identity batch norms, so features stay informative."""
    rng = np.random.RandomState(seed)
    shapes = {k: tuple(v.shape) for k, v in fid.InceptionV3().state_dict().items()} | FC_SHAPES
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            sd[k] = torch.tensor(0)
            continue
        if k.endswith("running_mean"):
            a = 0.05 * rng.standard_normal(shape)
        elif k.endswith("running_var"):
            a = 1 + 0.1 * rng.random_sample(shape)
        elif k.endswith("bn.weight"):
            a = 1 + 0.1 * rng.standard_normal(shape)
        elif k.endswith("bias"):
            a = 0.05 * rng.standard_normal(shape)
        else:  # conv and fc weights
            a = rng.standard_normal(shape) * math.sqrt(2 / np.prod(shape[1:]))
        sd[k] = torch.from_numpy(a.astype(np.float32))
    return sd


def checksum(sd):
    return sum(v.double().abs().sum().item() for v in sd.values())


def nchw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURE) as f:
        return dict(f)


@pytest.fixture(scope="module")
def weights(tmp_path_factory, ref):
    sd = random_fid_weights(WEIGHTS_SEED)
    assert checksum(sd) == pytest.approx(float(ref["weights_checksum"]), rel=1e-12), "weight generator drifted"
    path = tmp_path_factory.mktemp("fid") / "random_fid_weights.pth"
    torch.save(sd, path)
    return path


@pytest.fixture(scope="module")
def model(weights):
    return fid.load_inception(weights)


@pytest.fixture(scope="module")
def ours(model, ref):
    return tuple(fid.features(model, nchw(ref[f"images_{side}"]), "pytorch-fid")[0].numpy() for side in "ab")


def test_features_match_pytorch_fid(ours, ref):
    fa, fb = ours
    assert fa.shape == (len(ref["images_a"]), 2048) and fa.dtype == np.float32
    assert fa.std(0).mean() > 0.01 * np.abs(fa).mean()  # the random net tells images apart
    np.testing.assert_allclose(fa, ref["features_a"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fb, ref["features_b"], rtol=1e-4, atol=1e-5)


def test_fid_matches_pytorch_fid(ours, ref, tmp_path):
    # the command line on our 2048-d statistics prints pytorch-fid's FID. A subprocess with one BLAS
    # thread: the 2048 x 2048 eigenvalues (the slow part of this file) are slower with two threads on a
    # shared two-core machine
    for side, feats in zip("ab", ours):
        mu, sigma = fid.statistics(feats)
        np.savez(tmp_path / f"{side}.npz", mu=mu, sigma=sigma)
    out = subprocess.run([sys.executable, str(Path(fid.__file__)), str(tmp_path / "a.npz"), str(tmp_path / "b.npz")],
                         env=os.environ | {"OPENBLAS_NUM_THREADS": "1"}, capture_output=True, text=True, check=True)
    line = [line for line in out.stdout.splitlines() if line.startswith("FID: ")][0]
    assert float(line.split()[-1]) == pytest.approx(float(ref["fid"]), rel=1e-3)


def test_fid_of_a_set_with_itself_is_zero(ours):
    # a 128-d slice keeps it fast (BLAS stays single-threaded); its covariance is as singular (rank 7)
    mu, sigma = fid.statistics(ours[0][:, :128])
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-4


def test_analytic_frechet_distance():
    # 1-d: (m1 - m2)^2 + (s1 - s2)^2
    assert fid.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4 + 1)
    # commuting covariances: |mu1 - mu2|^2 + tr(A) (1 - sqrt(c))^2 for sigma2 = c A
    rng = np.random.RandomState(0)
    q = rng.standard_normal((16, 16))
    a = q @ q.T + np.eye(16)
    mu1, mu2 = rng.standard_normal(16), rng.standard_normal(16)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(a) * (1 - 2) ** 2
    assert fid.frechet_distance(mu1, a, mu2, 4 * a) == pytest.approx(expected, rel=1e-9)
    # diagonal: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    d1, d2 = rng.uniform(0.5, 2, 16), rng.uniform(0.5, 2, 16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(d1) - np.sqrt(d2)) ** 2)
    assert fid.frechet_distance(mu1, np.diag(d1), mu2, np.diag(d2)) == pytest.approx(expected, rel=1e-9)


def test_statistics_are_float64():
    # features with a large common offset: float32 statistics would lose the small spread
    rng = np.random.RandomState(0)
    spread = rng.standard_normal((64, 8))
    mu, sigma = fid.statistics((1000 + 0.01 * spread).astype(np.float32))
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    exact = np.cov((1000 + 0.01 * spread).astype(np.float32).astype(np.float64), rowvar=False)
    np.testing.assert_allclose(sigma, exact, rtol=1e-12, atol=0)


def test_clear_errors(tmp_path, model):
    with pytest.raises(ValueError, match="at least 2"):
        fid.statistics(np.zeros((1, 2048)))
    with pytest.raises(ValueError, match="do not match"):
        fid.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="imaginary"):  # a "covariance" with a negative eigenvalue
        fid.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="NaN"):
        fid.frechet_distance(np.zeros(2), np.eye(2), np.array([0, np.nan]), np.eye(2))
    with pytest.raises(FileNotFoundError, match="no images"):
        fid.folder_batches(tmp_path)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match="at least 2"):  # unreadable files are skipped, never stats of nothing
        fid.measure(tmp_path, model)
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    with pytest.raises(ValueError, match="at least 2"):
        fid.measure(tmp_path, model)
    Image.new("RGB", (8, 9)).save(tmp_path / "two.png")
    with pytest.raises(ValueError, match="differ in size"):
        list(fid.folder_batches(tmp_path)[1])
    with pytest.raises(ValueError, match="uint8"):
        fid.features(model, torch.rand(1, 3, 8, 8))
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="neither images"):
        fid.measure(tmp_path / "other.npz", model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fid.measure(tmp_path / "missing", model)
    with pytest.raises(FileNotFoundError, match="neither an image folder"):
        fid.measure(tmp_path / "bad.jpg", model)


def test_weights_file_errors(tmp_path, weights, monkeypatch):
    monkeypatch.delenv("FID_WEIGHTS", raising=False)
    with pytest.raises(FileNotFoundError, match=fid.WEIGHTS_FILE) as e:
        fid.load_inception(tmp_path / "nope.pth")
    assert fid.WEIGHTS_URL in str(e.value)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a PyTorch weights file"):
        fid.load_inception(tmp_path / "junk.pth")
    sd = torch.load(weights, weights_only=True)
    sd["Mixed_6b.branch1x1.conv.weight"] = torch.zeros(192, 768, 3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match="Mixed_6b.branch1x1.conv.weight"):
        fid.load_inception(tmp_path / "shape.pth")
    del sd["Mixed_7c.branch_pool.bn.running_var"]
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    torch.save(sd, tmp_path / "keys.pth")
    monkeypatch.setenv("FID_WEIGHTS", str(tmp_path / "keys.pth"))  # the environment variable is read
    with pytest.raises(ValueError, match="Mixed_7c.branch_pool.bn.running_var|AuxLogits.fc.weight"):
        fid.load_inception()


def test_cli(tmp_path, weights, ref, capsys):
    # statistics of a folder of PNGs with one corrupt file (skipped and counted), and of an .npz of
    # images, equal those of pytorch-fid's features with its input pipeline
    n = 3
    folder = tmp_path / "a"
    folder.mkdir()
    for i, img in enumerate(ref["images_a"][:n]):
        Image.fromarray(img).save(folder / f"{i}.png")
    (folder / "9_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    np.savez(tmp_path / "b.npz", arr_0=ref["images_b"][:n], arr_1=np.zeros(n))
    pipeline = "--pipeline=pytorch-fid"
    fid.main([str(folder), f"--save_stats={tmp_path / 'a_stats.npz'}", f"--weights={weights}", "--workers=0", pipeline])
    assert "skipped 1 of 4 files" in capsys.readouterr().err
    fid.main([str(tmp_path / "b.npz"), f"--save_stats={tmp_path / 'b_stats.npz'}", f"--weights={weights}",
              "--batch_size=2", pipeline])
    for side in "ab":
        mu, sigma = fid.statistics(ref[f"features_{side}"][:n])
        with np.load(tmp_path / f"{side}_stats.npz") as f:
            np.testing.assert_allclose(f["mu"], mu, rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(f["sigma"], sigma, rtol=1e-3, atol=1e-7)
    # two statistics files need no weights; what needs images is skipped, a line each
    np.savez(tmp_path / "s1.npz", mu=np.zeros(2), sigma=np.eye(2))
    np.savez(tmp_path / "s2.npz", mu=np.ones(2), sigma=4 * np.eye(2))
    capsys.readouterr()
    fid.main([str(tmp_path / "s1.npz"), str(tmp_path / "s2.npz"), f"--weights={tmp_path / 'absent.pth'}"])
    out = capsys.readouterr().out.splitlines()
    assert "FID: 4.0" in out  # |1|^2 * 2 + 2 * (2 - 1)^2
    assert len(out) == 4 and sum(line.startswith("skipped") for line in out) == 3
