import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from data import ImageFolder, Shapes, batch_indices, batches, make_dataset, save_grid


def test_shapes_deterministic_any_resolution_and_held_out():
    a, b = Shapes(32, "train", 100, seed=1), Shapes(32, "train", 100, seed=1)
    x, y = a[7]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, b[7][0]) and y == b[7][1] == 7
    assert not torch.equal(x, Shapes(32, "train", 100, seed=2)[7][0])
    assert not torch.equal(x, Shapes(32, "val", 100, seed=1)[7][0])  # the held-out split is other images
    assert Shapes(48, "train", 10)[3][0].shape == (3, 48, 48)
    assert sorted({a[i][1] for i in range(20)}) == list(range(10))  # 10 balanced classes


def test_shapes_cache_gives_the_same_images_rendering_each_once(monkeypatch):
    plain, cached = Shapes(32, "train", 20, seed=3), Shapes(32, "train", 20, seed=3, cache=True)
    renders = []
    render = Shapes.render
    monkeypatch.setattr(Shapes, "render", lambda self, i: renders.append(i) or render(self, i))
    for i in (4, 9, 4, 4, 9):
        (x, y), (x_plain, y_plain) = cached[i], plain[i]
        assert torch.equal(x, x_plain) and y == y_plain
    assert renders.count(4) == 4 and renders.count(9) == 3  # 3 and 2 renders by `plain`, one each by `cached`
    assert make_dataset("shapes", 32, "train", 20, 3, cache=True).cache == {}


def _write_images(root):
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / "cats" / "rgb.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 30), dtype=np.uint8)).save(root / "cats" / "gray.png")
    Image.fromarray(rng.integers(0, 255, (33, 33, 4), dtype=np.uint8), "RGBA").save(root / "dogs" / "rgba.png")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("CMYK").save(root / "dogs" / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).convert("P").save(root / "dogs" / "palette.png")
    (root / "dogs" / "corrupt.jpg").write_bytes(b"not an image at all")
    good = root / "cats" / "rgb.jpg"
    (root / "dogs" / "truncated.jpg").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (root / "dogs" / "notes.txt").write_text("ignored: not an image extension")


def test_image_folder_converts_and_skips(tmp_path, capsys):
    _write_images(tmp_path)
    ds = ImageFolder(tmp_path, image_size=24)
    assert ds.classes == ["cats", "dogs"] and len(ds) == 7
    items = [ds[i] for i in range(len(ds))]  # never raises
    assert all(x.shape == (3, 24, 24) and 0 <= x.min() and x.max() <= 1 for x, _ in items)
    assert ds.skipped == 2  # the corrupt and the truncated file, each replaced by the next readable one
    assert "corrupt.jpg" in capsys.readouterr().err
    # the same through worker processes: the count is shared
    ds2 = ImageFolder(tmp_path, image_size=24)
    list(torch.utils.data.DataLoader(ds2, batch_size=3, num_workers=2))
    assert ds2.skipped == 2


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no images"):
        ImageFolder(tmp_path / "empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.jpg").write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match="could be read"):
        ImageFolder(tmp_path / "bad")[0]


def test_make_dataset_uses_split_subfolder(tmp_path):
    _write_images(tmp_path / "val")
    assert make_dataset(str(tmp_path), 16, "val").samples[0][0].parent.parent == tmp_path / "val"
    assert isinstance(make_dataset("shapes", 16, "val", 5), Shapes)


def test_batch_indices_epochs_resume_and_ranks():
    stream = list(itertools.islice(batch_indices(10, 4, seed=3), 5))
    flat = sum(stream, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # whole epochs
    assert flat[:10] != flat[10:20]  # reshuffled each epoch
    assert list(itertools.islice(batch_indices(10, 4, seed=3, start_iter=2), 3)) == stream[2:5]  # resume
    r0 = list(itertools.islice(batch_indices(10, 2, seed=3, rank=0, world_size=2), 5))
    r1 = list(itertools.islice(batch_indices(10, 2, seed=3, rank=1, world_size=2), 5))
    assert [a + b for a, b in zip(r0, r1)] == stream  # ranks split each global batch


def test_batches_flips_are_deterministic():
    ds = Shapes(16, "train", 50)
    a = list(itertools.islice(batches(ds, 8, seed=0, flip=True), 3))
    b = list(itertools.islice(batches(ds, 8, seed=0, start_iter=1, flip=True), 2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], b))
    plain = next(batches(ds, 8, seed=0))[0]
    flipped = (a[0][0] != plain).flatten(1).any(1)
    assert 0 < flipped.sum() < 8 and torch.equal(a[0][0][flipped], plain[flipped].flip(3))


def test_ranks_see_one_process_micro_batches_flips_included():
    """Rank r's iteration i is one process's iteration 2i + r: with 2 ranks x 1 micro-step, an optimizer step
    sees the images, flipped alike, of one process's 2 micro-steps."""
    ds = Shapes(16, "train", 50)
    one = list(itertools.islice(batches(ds, 4, seed=1, start_iter=2, flip=True), 4))
    ranks = [list(itertools.islice(batches(ds, 4, seed=1, start_iter=1, rank=r, world_size=2, flip=True), 2)) for r in (0, 1)]
    for i in range(2):
        for r in (0, 1):
            assert torch.equal(ranks[r][i][0], one[2 * i + r][0]) and torch.equal(ranks[r][i][1], one[2 * i + r][1])


def test_save_grid(tmp_path):
    save_grid(torch.rand(5, 3, 8, 8), tmp_path / "g.png", nrow=3)
    assert Image.open(tmp_path / "g.png").size == (24, 16)
