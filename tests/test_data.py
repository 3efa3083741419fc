import gc
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import HELD_OUT_MIN, ImageFolder, Shapes, Reader, batch_indices, batches, check_dataset, make_dataset
from training import block_means, save_grid


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


def _resized(path, n):
    """The image at `path` as ImageFolder resizes it: its short side to n, bicubic -> uint8 (h, w, 3)."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    scale = n / min(img.size)
    w, h = max(n, round(img.width * scale)), max(n, round(img.height * scale))
    return np.asarray(img.resize((w, h), Image.BICUBIC, reducing_gap=None if scale > 0.5 else 3.0))


def test_image_folder_reads_uint8_and_streams_the_floats_it_gave_before(tmp_path):
    _write_images(tmp_path)
    ds = ImageFolder(tmp_path, image_size=24)
    for i in [0, 1, 2, 4, 5]:  # the readable files: cats/gray, cats/rgb, dogs/cmyk, dogs/palette, dogs/rgba
        x, y = ds.read(i)
        assert x.dtype == torch.uint8 and x.shape == (3, 24, 24) and y == int(i >= 2)
        assert Reader(ds)[i, None][0].dtype == torch.uint8  # what crosses from the loader's workers
        big = _resized(ds.path(i), 24)
        top, left = (big.shape[0] - 24) // 2, (big.shape[1] - 24) // 2
        before = np.asarray(big[top:top + 24, left:left + 24], dtype=np.float32) / 255.0  # the former load
        assert torch.equal(ds[i][0], torch.from_numpy(before.transpose(2, 0, 1).copy()))
    for workers in (0, 2):
        images = next(batches(ds, 7, seed=0, workers=workers))[0]
        assert images.dtype == torch.float32
        assert torch.equal(images, torch.stack([ds[i][0] for i in next(batch_indices(7, 7, 0))]))


def _write_tree(root):
    """Image files at several depths, with names that sort differently as strings and as paths, symlinks,
    and files that are not images."""
    for rel in ["a/x.png", "a-b.png", "a/b/c.jpg", "a/b.d/e.JPEG", "a/B.png", "a/z.tif", "b.png", "a/.hidden.png"]:
        (root / "cls" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(root / "cls" / rel, format="PNG")
    (root / "cls" / "notes.txt").write_text("not an image")
    (root / "cls" / "dir.png").mkdir()
    (root / "cls" / "link.png").symlink_to(root / "cls" / "b.png")
    (root / "cls" / "linked_dir").symlink_to(root / "cls" / "a")


def test_image_folder_lists_files_as_sorted_rglob_did_without_an_object_per_file(tmp_path):
    _write_tree(tmp_path)
    ds = ImageFolder(tmp_path, 4)
    rglob = [p for p in sorted((tmp_path / "cls").rglob("*")) if p.suffix.lower() in {".png", ".jpg", ".jpeg",
                                                                                         ".tif"} and p.is_file()]
    assert [ds.path(i) for i in range(len(ds))] == rglob and len(ds) == 9  # the order the held-out split draws from
    _write_tiny_images(tmp_path / "many" / "c", 2000)
    gc.collect()
    before = len(gc.get_objects())
    big = ImageFolder(tmp_path / "many", 4)
    gc.collect()
    assert len(big) == 2000 and len(gc.get_objects()) - before < 100  # no tuple, list nor Path per file
    assert big.path(1999) == tmp_path / "many" / "c" / "999.png"  # names sort as strings


_SKIPS = """
import itertools, sys
from data import ImageFolder, batches
ds = ImageFolder(sys.argv[1], 16)
stream = batches(ds, 7, seed=0, workers=2, multiprocessing_context=sys.argv[2])
total = sum(x.sum().item() for x, _ in itertools.islice(stream, 3))
print(ds.skipped, total)
"""


@pytest.mark.parametrize("start_method", ["fork", "forkserver", "spawn"])
def test_skips_are_counted_and_named_whatever_starts_the_workers(tmp_path, start_method):
    """Three epochs over the 7 files by two workers (a subprocess: the forkserver's stderr is its parent's):
    each unreadable file is named and counted once, and the images are those of one process."""
    _write_images(tmp_path)
    run = subprocess.run([sys.executable, "-c", _SKIPS, str(tmp_path), start_method], capture_output=True,
                         text=True, cwd=Path(__file__).parents[1], timeout=120)
    assert run.returncode == 0, run.stderr
    skipped, total = run.stdout.split()
    one = ImageFolder(tmp_path, 16)
    assert skipped == "2" and float(total) == sum(x.sum().item() for x, _ in itertools.islice(batches(one, 7), 3))
    assert "corrupt.jpg" in run.stderr and "truncated.jpg" in run.stderr


def _files(ds):
    return {ds.path(i) for i in range(len(ds))}


def test_make_dataset_uses_split_subfolders(tmp_path):
    _write_images(tmp_path / "train")
    _write_images(tmp_path / "val")
    val, train = make_dataset(str(tmp_path), 16, "val"), make_dataset(str(tmp_path), 16, "train")
    assert {p.parents[1] for p in _files(val)} == {tmp_path / "val"} and len(val) == 7
    assert {p.parents[1] for p in _files(train)} == {tmp_path / "train"} and len(train) == 7
    assert val.held_out_note is None
    assert isinstance(make_dataset("shapes", 16, "val", 5), Shapes)


@pytest.mark.parametrize("layout", ["classes", "flat"])
def test_a_val_folder_without_train_is_never_trained_on(tmp_path, layout):
    """root/val beside root's classes (or beside images in root itself): training reads those, never val/."""
    if layout == "classes":
        _write_tiny_images(tmp_path / "a", 3)
        _write_tiny_images(tmp_path / "b", 2)
        _write_tiny_images(tmp_path / "val" / "a", 4)
        _write_tiny_images(tmp_path / "val" / "b", 4)
    else:
        _write_tiny_images(tmp_path, 5)
        _write_tiny_images(tmp_path / "val", 4)
    train, val = make_dataset(str(tmp_path), 8, "train"), make_dataset(str(tmp_path), 8, "val")
    assert _files(train) == {p for p in tmp_path.rglob("*.png") if "val" not in p.parts}  # all of root's but val/'s
    assert _files(val) == set((tmp_path / "val").rglob("*.png"))
    assert train.classes == (["a", "b"] if layout == "classes" else []) and val.classes == train.classes
    assert {train[i][1] for i in range(len(train))} == ({0, 1} if layout == "classes" else {0})


def test_check_dataset_fails_on_a_folder_with_nothing_to_train_on(tmp_path, capsys):
    _write_tiny_images(tmp_path / "val", 4)
    with pytest.raises(SystemExit) as e:
        check_dataset(str(tmp_path))
    assert e.value.code == 2 and "only in val/" in capsys.readouterr().err
    _write_tiny_images(tmp_path / "a", 1)
    check_dataset(str(tmp_path))  # one image beside val/: enough
    check_dataset("shapes")


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
    held_out, trained = _files(val), _files(train)
    assert not held_out & trained and len(held_out | trained) == 100
    assert len(held_out) == HELD_OUT_MIN  # 5%, but at least 64
    assert held_out == _files(make_dataset(str(tmp_path), 8, "val"))  # the same files every time
    assert val.held_out_note == f"held-out: 64 of 100 images of {tmp_path}, never trained on"
    if layout == "classes":  # labels kept, both classes in both splits
        assert set(val.labels) == set(train.labels) == {0, 1}


def test_held_out_share_of_a_large_folder_and_too_small_a_folder(tmp_path):
    _write_tiny_images(tmp_path / "big", 2000)
    assert len(make_dataset(str(tmp_path / "big"), 8, "val")) == 100  # 5%
    _write_tiny_images(tmp_path / "small", HELD_OUT_MIN)
    with pytest.raises(ValueError, match="too few to hold out 64"):
        make_dataset(str(tmp_path / "small"), 8, "train")


def _list_as_rank(rank, store, root, out):
    """One of two DDP processes (gloo): rank 1 cannot list a folder, so what it holds came from rank 0."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    if rank == 1:
        os.scandir = os.listdir = None  # listing a folder here raises
    got = {split: ImageFolder(root, 8, split) for split in ("train", "val")}
    got = {split: ([ds.path(i) for i in range(len(ds))], ds.labels.tolist(), ds.classes, ds.held_out_note)
           for split, ds in got.items()}
    try:
        ImageFolder(root / "b", 8, "train")  # 40 images: too few to hold out 64
    except ValueError as e:
        got["error"] = str(e)
    torch.save(got, out / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_under_ddp_rank_0_lists_the_folder_and_the_others_get_its_list_or_its_error(tmp_path):
    _write_tiny_images(tmp_path / "folder" / "a", 60)
    _write_tiny_images(tmp_path / "folder" / "b", 40)
    fork = torch.multiprocessing.get_context("fork")
    ranks = [fork.Process(target=_list_as_rank, args=(r, tmp_path / "store", tmp_path / "folder", tmp_path))
             for r in range(2)]
    for p in ranks:
        p.start()
    for p in ranks:
        p.join(120)
    assert [p.exitcode for p in ranks] == [0, 0]
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2))
    assert zero == one and "too few to hold out 64" in one["error"]
    for split in ("train", "val"):  # what one process lists
        ds = ImageFolder(tmp_path / "folder", 8, split)
        assert zero[split] == ([ds.path(i) for i in range(len(ds))], ds.labels.tolist(), ["a", "b"], ds.held_out_note)
    assert len(zero["val"][0]) == 64 and len(zero["train"][0]) == 36


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


def _write_wide_images(folder, n):
    """Images twice as wide as high, each its own horizontal ramp: crops at different places differ."""
    folder.mkdir(parents=True)
    ramp = np.linspace(0, 255, 64)
    for i in range(n):
        pixels = np.stack([np.broadcast_to(ramp, (32, 64)), np.full((32, 64), 20 * i),
                           np.broadcast_to(ramp[::-1], (32, 64))], -1)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


def test_random_crops_are_windows_of_the_resized_image_decided_by_seed_and_iteration(tmp_path):
    _write_wide_images(tmp_path / "wide", 6)
    ds = ImageFolder(tmp_path / "wide", 16)  # 64 x 32 images: resized to 32 x 16, a window of 16 in 17 places

    def stream(iterations=4, **kw):
        return [x for x, _ in itertools.islice(batches(ds, 4, seed=5, random_crop=True, **kw), iterations)]

    a = stream()
    assert all(torch.equal(x, y) for x, y in zip(a, stream()))  # two streams
    assert all(torch.equal(x, y) for x, y in zip(a[2:], stream(2, start_iter=2)))  # a resumed one
    assert all(torch.equal(x, y) for x, y in zip(a, stream(workers=2)))  # whatever the workers' random state
    ranks = [stream(2, rank=r, world_size=2) for r in (0, 1)]
    assert all(torch.equal(ranks[r][i], a[2 * i + r]) for i in range(2) for r in (0, 1))  # 2 ranks: one process
    lefts = []
    for images, indices in zip(a, itertools.islice(batch_indices(6, 4, 5), 4)):
        for x, i in zip(images, indices):
            big = torch.from_numpy(_resized(ds.path(i), 16).copy()).permute(2, 0, 1).float() / 255
            lefts += [j for j in range(17) if torch.equal(big[:, :, j:j + 16], x)]  # its ramp: one place fits
    assert len(lefts) == 16 and len(set(lefts)) > 5  # each image a window of the resized one, at many places
    assert not torch.equal(a[0], next(batches(ds, 4, seed=5))[0])  # not the center crops
    shapes = Shapes(16, "train", 8)  # square renders: their one crop is the render
    assert torch.equal(next(batches(shapes, 4, random_crop=True))[0], next(batches(shapes, 4))[0])
    with pytest.raises(ValueError, match="random_crop"):
        next(batches(torch.utils.data.TensorDataset(torch.rand(4, 3, 8, 8), torch.arange(4)), 2, random_crop=True))


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
