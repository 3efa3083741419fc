"""
fid.py against the two evaluators behind the paper's numbers, on ../shared/fixtures/eval/ (its README says
what each file and value is): ADM's evaluator (FID, sFID, IS, precision, recall) and the official TiTok
evaluator (rFID, IS), with seeded Inception weights. The network runs on a few images against the
fixture's features; the metrics run on those features against the values the references printed; the
command line runs once on a share of the images. The TF1 resize and the streamed statistics are also
checked without the fixture.
"""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch

import fid
from conftest import SHARED, run_script

EVAL = SHARED / "fixtures" / "eval"


@pytest.fixture(scope="module")
def fx(tmp_path_factory):
    """The fixture's files, and its seeded weights saved as a weights file."""
    if not EVAL.is_dir():
        pytest.skip(f"evaluation fixture {EVAL} not present")
    module = importlib.util.spec_from_file_location("seeded", EVAL / "seeded.py")
    seeded = importlib.util.module_from_spec(module)
    module.loader.exec_module(seeded)
    spec = json.loads((EVAL / "spec.json").read_text())
    weights = tmp_path_factory.mktemp("eval") / "seeded_inception.pth"
    torch.save(seeded.inception_weights(spec["inception"], spec["seed"]), weights)
    load = lambda name: {k: v for k, v in np.load(EVAL / name).items()}
    return dict(seeded=seeded, spec=spec, weights=weights, expected=json.loads((EVAL / "expected.json").read_text()),
                features={k: torch.from_numpy(v) for k, v in load("features.npz").items()},
                images=load("images.npz"), ref=load("ref.npz"))


def nchw(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()


def close(ours, theirs, rtol=1e-4):
    """Within rtol of the reference, relative to its largest entry (features near 0 carry only rounding)."""
    theirs = np.asarray(theirs, dtype=np.float64)
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), theirs, rtol=rtol, atol=rtol * np.abs(theirs).max())


def test_tf1_resize_samples_at_i_times_in_over_out():
    # TF1's resize_bilinear without half-pixel centres: output i reads input i * in / out (the scale a
    # float32), the last row and column repeated past the edge; PyTorch's (pytorch-fid's) reads
    # (i + 0.5) * in / out - 0.5
    x = torch.arange(4 * 6, dtype=torch.float64).view(1, 1, 4, 6) ** 1.5
    ours = fid.resize_tf1(x, size=9)[0, 0].numpy()
    img = x[0, 0].numpy()
    for i in range(9):
        for j in range(9):
            y, xx = i * float(np.float32(4 / 9)), j * float(np.float32(6 / 9))
            y0, x0 = int(y), int(xx)
            y1, x1 = min(y0 + 1, 3), min(x0 + 1, 5)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * (xx - x0)
            bottom = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * (xx - x0)
            assert ours[i, j] == pytest.approx(top + (bottom - top) * (y - y0), rel=1e-12)
    assert not np.allclose(ours, torch.nn.functional.interpolate(x, size=(9, 9), mode="bilinear")[0, 0].numpy())


def test_streamed_moments_equal_mean_and_cov():
    rng = np.random.RandomState(0)
    feats = 50 + rng.standard_normal((97, 6)) @ rng.standard_normal((6, 6))
    moments = fid.Moments()
    for i in range(0, 97, 10):  # batches, the last one short
        moments.update(feats[i:i + 10])
    mu, sigma = moments.statistics()
    np.testing.assert_allclose(mu, feats.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(feats, rowvar=False), rtol=1e-10)


def adm_precision_recall(ref, sample, k=3):
    """ADM's ManifoldEstimator written out with numpy in float64: radii by np.partition, then the balls."""
    d = lambda u, v: np.maximum((u * u).sum(1)[:, None] - 2 * u @ v.T + (v * v).sum(1)[None], 0)
    radius = lambda f: np.partition(d(f, f), k, axis=1)[:, k]
    r_ref, r_sample, dist = radius(ref), radius(sample), d(sample, ref)
    return (dist <= r_ref[None]).any(1).mean(), (dist <= r_sample[:, None]).any(0).mean()


def test_precision_recall_in_blocks_is_adms_algorithm(monkeypatch):
    rng = np.random.RandomState(1)
    ref, sample = rng.standard_normal((41, 8)), 1 + rng.standard_normal((57, 8))
    expected = adm_precision_recall(ref, sample)
    assert 0.2 < expected[0] < 0.95 and 0.2 < expected[1] < 0.95  # neither metric trivially 0 or 1
    assert fid.precision_recall(torch.from_numpy(ref), torch.from_numpy(sample)) == expected
    monkeypatch.setattr(fid, "BLOCK", 100)  # two rows at a time: the blocks change nothing
    assert fid.precision_recall(torch.from_numpy(ref).float(), torch.from_numpy(sample).float()) == \
        adm_precision_recall(ref.astype(np.float32).astype(np.float64), sample.astype(np.float32).astype(np.float64))
    with pytest.raises(ValueError, match="more than 3 images"):
        fid.precision_recall(torch.zeros(3, 8), torch.zeros(10, 8))


def test_inception_features_match_the_fixture(fx):
    feats, n = fx["features"], 4
    pool, spatial, logits = fid.features(fid.load_inception(fx["weights"]), nchw(fx["images"]["fake"][:n]))
    assert pool.dtype == torch.float32 and spatial.shape == (n, 2023) and logits.shape == (n, 1008)
    close(pool, feats["pool_fake"][:n])
    close(spatial, feats["spatial_fake"][:n])
    close(logits, feats["logits_unbiased_fake"][:n])
    first = fx["expected"]["features"]
    close(pool, first["pool_fake_first4"])
    close(spatial[:, :16], first["spatial_fake_first4_first16"])
    close(logits[:, :8], first["logits_unbiased_fake_first4_first8"])
    # the official evaluator's float64 network, on real images
    pool, spatial, _ = fid.features(fid.load_inception(fx["weights"], dtype=torch.float64), nchw(fx["images"]["real"][:2]))
    assert pool.dtype == torch.float64
    close(pool, feats["pool_real"][:2])
    close(spatial, feats["spatial_real"][:2])


def test_adm_metrics_from_the_features(fx):
    feats, ref, adm = fx["features"], fx["ref"], fx["expected"]["adm"]
    # FID and sFID against the reference file's stored statistics, not statistics of its arr_0
    assert fid.frechet_distance(*fid.statistics(feats["pool_fake"]), ref["mu"], ref["sigma"]) == \
        pytest.approx(adm["fid"], rel=1e-4)
    assert fid.frechet_distance(*fid.statistics(feats["spatial_fake"]), ref["mu_s"], ref["sigma_s"]) == \
        pytest.approx(adm["sfid"], rel=1e-4)
    assert fid.inception_score(feats["logits_unbiased_fake"]) == pytest.approx(adm["inception_score"], rel=1e-4)
    # exact distances: ADM's algorithm without its float16 DistanceBlock
    assert fid.precision_recall(feats["pool_real"], feats["pool_fake"]) == (adm["precision_float64"],
                                                                          adm["recall_float64"])


def test_inception_score_in_splits_of_5000(fx):
    logits = torch.from_numpy(fx["seeded"].is_logits(fx["spec"]["seed"]))
    expected = fx["expected"]["adm"]["inception_score_12000_logits"]
    assert fid.inception_score(logits) == pytest.approx(expected, rel=1e-5)
    score = fid.InceptionScore()
    for i in range(0, len(logits), 3001):  # batches that straddle the splits
        score.update(logits[i:i + 3001])
    assert [s[0] for s in score.splits] == [5000, 5000, 2000]
    assert score.score() == pytest.approx(expected, rel=1e-5)
    assert fid.inception_score(logits, split_size=None) != pytest.approx(expected, rel=1e-3)  # the splits matter


def test_official_rfid_and_inception_score(fx):
    feats, images, official = fx["features"], fx["images"], fx["expected"]["official"]
    fake = fid.truncate_uint8(torch.from_numpy(images["fake_float"]))
    assert torch.equal(fake, torch.from_numpy(images["fake"]))  # truncated, where rounding would differ:
    assert not torch.equal(fid.to_uint8(torch.from_numpy(images["fake_float"])), fake)
    rfid = fid.frechet_distance(*fid.statistics(feats["pool_real"]), *fid.statistics(feats["pool_fake"]))
    assert rfid == pytest.approx(official["rfid"], rel=1e-4)
    assert fid.inception_score(feats["logits_unbiased_fake"], split_size=None, eps=1e-16) == \
        pytest.approx(official["inception_score"], rel=1e-4)


def test_tokenizer_evaluator(fx):
    # float images in, truncated; float64 network; the numbers those features give, and the codebook's
    n, feats, images = 3, fx["features"], fx["images"]
    evaluator = fid.TokenizerEvaluator(fid.load_inception(fx["weights"], dtype=torch.float64), codebook_size=8)
    real = nchw(images["real"][:n]).double() / 255
    evaluator.update(real, nchw(images["fake_float"][:n]), torch.tensor([[0, 1], [1, 1], [3, 1]]))
    result = evaluator.result()
    rfid = fid.frechet_distance(*fid.statistics(feats["pool_real"][:n]), *fid.statistics(feats["pool_fake"][:n]))
    assert result["rfid"] == pytest.approx(rfid, rel=1e-4)
    assert result["inception_score"] == pytest.approx(
        fid.inception_score(feats["logits_unbiased_fake"][:n], split_size=None, eps=1e-16), rel=1e-4)
    assert result["codebook_usage"] == 3 / 8  # codes 0, 1, 3 of 8
    assert result["codebook_entropy"] == pytest.approx(1 / 6 * math.log2(6) * 2 + 2 / 3 * math.log2(3 / 2), rel=1e-6)


def parse(stdout):
    return {line.split(": ")[0]: float(line.split(": ")[1]) for line in stdout.splitlines() if ": " in line
            and not line.startswith("skipped")}


def test_command_line_prints_adms_five_lines(fx, tmp_path):
    # a share of the images through the command line as a user runs it: the same numbers as the metrics of
    # the fixture's features of those images, FID and sFID against the reference's stored statistics
    n, feats, ref = 16, fx["features"], fx["ref"]
    np.savez(tmp_path / "samples.npz", arr_0=fx["images"]["fake"][:n])
    np.savez(tmp_path / "ref.npz", arr_0=ref["arr_0"][:n], **{k: ref[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    out = run_script("fid.py", str(tmp_path / "samples.npz"), str(tmp_path / "ref.npz"), f"--weights={fx['weights']}",
                     "--batch_size=8").stdout
    assert [line.split(":")[0] for line in out.splitlines()] == ["Inception Score", "FID", "sFID", "Precision", "Recall"]
    got = parse(out)
    assert got["Inception Score"] == pytest.approx(fid.inception_score(feats["logits_unbiased_fake"][:n]), rel=1e-4)
    assert got["FID"] == pytest.approx(
        fid.frechet_distance(*fid.statistics(feats["pool_fake"][:n]), ref["mu"], ref["sigma"]), rel=1e-4)
    assert got["sFID"] == pytest.approx(
        fid.frechet_distance(*fid.statistics(feats["spatial_fake"][:n]), ref["mu_s"], ref["sigma_s"]), rel=1e-4)
    assert (got["Precision"], got["Recall"]) == fid.precision_recall(feats["pool_real"][:n], feats["pool_fake"][:n])


def test_command_line_without_what_a_metric_needs(fx, tmp_path, capsys):
    ref = fx["ref"]
    np.savez(tmp_path / "samples.npz", arr_0=fx["images"]["fake"][:6])
    np.savez(tmp_path / "stats.npz", **{k: ref[k] for k in ("mu", "sigma", "mu_s", "sigma_s")})
    fid.main([str(tmp_path / "samples.npz"), str(tmp_path / "stats.npz"), f"--weights={fx['weights']}"])
    out = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in out[:3]] == ["Inception Score", "FID", "sFID"]
    assert len(out) == 4 and out[3].startswith("skipped precision and recall") and "stats.npz" in out[3]
    # nothing in common: one line, exit status 2, before the weights are read
    np.savez(tmp_path / "pool.npz", mu=ref["mu"], sigma=ref["sigma"])
    np.savez(tmp_path / "spatial.npz", mu_s=ref["mu_s"], sigma_s=ref["sigma_s"])
    with pytest.raises(ValueError, match="share no statistics"):
        fid.main([str(tmp_path / "pool.npz"), str(tmp_path / "spatial.npz")])
    with pytest.raises(ValueError, match="pipeline"):
        fid.main([str(tmp_path / "samples.npz"), str(tmp_path / "stats.npz"), "--pipeline=tf2"])
    with pytest.raises(ValueError, match="two sides"):
        fid.main([str(tmp_path / "samples.npz")])
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    p = run_script("fid.py", str(tmp_path / "samples.npz"), str(tmp_path / "other.npz"), check=False)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.splitlines() == [p.stderr.strip()] and p.stderr.startswith("error: ") and "neither images" in p.stderr
