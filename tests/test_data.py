import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from data import HELD_OUT_MIN, ImageFolder, Shapes, batch_indices, batches, block_means, make_dataset, save_grid


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


def test_make_dataset_uses_split_subfolders(tmp_path):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "val")
    val, train = make_dataset(str(tmp_path), 16, "val"), make_dataset(str(tmp_path), 16, "train")
    assert {p.parents[1] for p, _ in val.samples} == {tmp_path / "val"} and len(val) == 7
    assert {p.parents[1] for p, _ in train.samples} == {tmp_path / "train"} and len(train) == 7
    assert val.held_out_note is None
    assert isinstance(make_dataset("shapes", 16, "val", 5), Shapes)


def _write_tiny_images(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (4, 4), (i, 0, 0)).save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("layout", ["flat", "classes"])
def test_folder_without_val_holds_out_images_never_trained_on(tmp_path, layout):
    if layout == "flat":
        _write_tiny_images(tmp_path, 100)
    else:  # root/<class>/...
        _write_tiny_images(tmp_path / "a", 60)
        _write_tiny_images(tmp_path / "b", 40)
    val, train = make_dataset(str(tmp_path), 8, "val"), make_dataset(str(tmp_path), 8, "train")
    held_out, trained = {p for p, _ in val.samples}, {p for p, _ in train.samples}
    assert not held_out & trained and len(held_out | trained) == 100
    assert len(held_out) == HELD_OUT_MIN  # 5%, but at least 64
    assert held_out == {p for p, _ in make_dataset(str(tmp_path), 8, "val").samples}  # the same files every time
    assert val.held_out_note == f"held-out: 64 of 100 images of {tmp_path}, never trained on"
    if layout == "classes":  # labels kept, both classes in both splits
        assert {y for _, y in val.samples} == {y for _, y in train.samples} == {0, 1}


def test_held_out_share_of_a_large_folder_and_too_small_a_folder(tmp_path):
    _write_tiny_images(tmp_path / "big", 2000)
    assert len(make_dataset(str(tmp_path / "big"), 8, "val")) == 100  # 5%
    _write_tiny_images(tmp_path / "small", HELD_OUT_MIN)
    with pytest.raises(ValueError, match="too few to hold out 64"):
        make_dataset(str(tmp_path / "small"), 8, "train")


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


def test_brightness_shift_moves_each_image_by_its_own_bounded_offset_and_keeps_the_flips():
    ds = Shapes(16, "train", 50)
    flipped = next(batches(ds, 8, seed=0, flip=True))[0]
    a = list(itertools.islice(batches(ds, 8, seed=0, flip=True, brightness_shift=0.1), 3))
    b = list(itertools.islice(batches(ds, 8, seed=0, start_iter=1, flip=True, brightness_shift=0.1), 2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], b))  # deterministic in (seed, iteration): resume
    shifted = a[0][0]
    assert shifted.min() >= 0 and shifted.max() <= 1
    inside = (flipped > 0.1) & (flipped < 0.9)  # pixels no shift can clip
    d = shifted - flipped  # the same flips, then one offset per image
    offsets = torch.stack([torch.stack([d[i, c][inside[i, c]].mean() for c in range(3)]) for i in range(8)])
    assert torch.allclose(d.where(inside, 0), offsets[:, :, None, None].expand_as(d).where(inside, 0), atol=1e-6)
    assert torch.allclose(offsets, offsets[:, :1].expand_as(offsets), atol=1e-6)  # all channels alike: no tint
    assert offsets.abs().max() <= 0.1 and offsets.std() > 0.02  # bounded, and not one offset for all


def test_saturation_shift_scales_each_images_colours_about_its_grey_and_keeps_grey_grey():
    ds = Shapes(16, "train", 50)
    plain = next(batches(ds, 8, seed=0))[0]
    a = list(itertools.islice(batches(ds, 8, seed=0, saturation_shift=0.3), 3))
    b = list(itertools.islice(batches(ds, 8, seed=0, start_iter=1, saturation_shift=0.3), 2))
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a[1:], b))  # deterministic in (seed, iteration): resume
    shifted = a[0][0]
    assert shifted.min() >= 0 and shifted.max() <= 1
    grey = plain.mean(1, keepdim=True)
    unclipped = ((shifted > 0) & (shifted < 1)).all(1, keepdim=True).expand_as(shifted)
    assert torch.allclose(shifted.mean(1, keepdim=True).expand_as(shifted)[unclipped],
                          grey.expand_as(shifted)[unclipped], atol=1e-6)  # each pixel keeps its grey
    coloured = unclipped & (plain - grey).abs().gt(0.05)
    ratio = (shifted - grey) / (plain - grey)  # one factor per image, the same for every pixel and channel
    factors = torch.stack([ratio[i][coloured[i]].median() for i in range(8)])
    assert all(torch.allclose(ratio[i][coloured[i]], factors[i].expand(coloured[i].sum()), atol=1e-4)
               for i in range(8))
    assert factors.min() >= 0.7 and factors.max() <= 1.3 and factors.std() > 0.05  # bounded, and per image
    greys = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)).expand(8, 3, 16, 16)  # grey images:
    shuffled = next(batches(torch.utils.data.TensorDataset(greys, torch.arange(8)), 8, seed=0, saturation_shift=0.3))
    assert torch.allclose(shuffled[0], greys[shuffled[1]], atol=1e-6)  # no factor gives them a colour


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


def test_block_means_baselines():
    x = torch.stack([Shapes(32, "val", 4)[i][0] for i in range(4)])
    assert torch.allclose(block_means(x, 1), x.mean((2, 3), keepdim=True).expand_as(x))  # the mean colour
    assert torch.allclose(block_means(x, 32), x, atol=1e-6)  # one block per pixel: the image itself
    flat = torch.rand(2, 3, 1, 1).expand(2, 3, 32, 32)
    assert torch.allclose(block_means(flat, 4), flat, atol=1e-6)  # a flat image is its own baseline
    err = [(block_means(x, b) - x).pow(2).mean() for b in (1, 4, 8)]
    assert err[0] > err[1] > err[2]  # more blocks, more bits, closer
