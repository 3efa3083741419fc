"""
Data: an embedded synthetic dataset (nothing to download), ImageFolder-style real images, and a
deterministic batch stream. Images are float tensors 3xHxW in [0, 1]; an image folder's are read as uint8
(ImageFolder.read) and cross from the loader's workers so, made float on the device by batches().

The batch stream is a pure function of (seed, iteration): the batch of iteration `it` is the same
whether a run got there directly or was interrupted and resumed, which makes resume exact.
"""
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image, ImageDraw

from configurator import fail

SHAPES = ["circle", "square", "triangle", "diamond", "cross", "star", "ring", "hexagon", "bar", "pair"]
HELD_OUT_SHARE, HELD_OUT_MIN = 0.05, 64  # an image folder without a 'val' folder holds out this share of its files
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".jfif"}


def _polygon(n, radius, phase=0.0, inner=None):
    """Vertices of a regular polygon (or a star when `inner` radius is given) around the origin."""
    k = 2 * n if inner else n
    radii = [radius if inner is None or i % 2 == 0 else inner for i in range(k)]
    return [(r * math.cos(phase + 2 * math.pi * i / k), r * math.sin(phase + 2 * math.pi * i / k)) for i, r in enumerate(radii)]


def _draw_shape(draw, name, cx, cy, r, angle):
    def poly(points):  # rotate by `angle`, move to (cx, cy)
        c, s = math.cos(angle), math.sin(angle)
        draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in points], fill=255)

    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif name == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        draw.ellipse([cx - r / 2, cy - r / 2, cx + r / 2, cy + r / 2], fill=0)
    elif name == "pair":
        q = r / 2.2
        for dx in (-r / 1.8, r / 1.8):
            draw.ellipse([cx + dx - q, cy - q, cx + dx + q, cy + q], fill=255)
    elif name == "square":
        poly(_polygon(4, r * 1.2, math.pi / 4))
    elif name == "diamond":
        poly([(0, -r * 1.2), (r * 0.75, 0), (0, r * 1.2), (-r * 0.75, 0)])
    elif name == "triangle":
        poly(_polygon(3, r * 1.2, -math.pi / 2))
    elif name == "hexagon":
        poly(_polygon(6, r * 1.1))
    elif name == "star":
        poly(_polygon(5, r * 1.25, -math.pi / 2, inner=r * 0.5))
    elif name == "cross":
        t = r * 0.35
        poly([(-t, -r), (t, -r), (t, -t), (r, -t), (r, t), (t, t), (t, r), (-t, r), (-t, t), (-r, t), (-r, -t), (-t, -t)])
    elif name == "bar":
        poly([(-r * 1.2, -r * 0.35), (r * 1.2, -r * 0.35), (r * 1.2, r * 0.35), (-r * 1.2, r * 0.35)])


def _hsv_to_rgb(h, s, v):
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i])


class Shapes(torch.utils.data.Dataset):
    """Class-conditional synthetic images: one of 10 shapes (the class) in a random colour, position,
    size and rotation, on a textured background (a colour gradient with soft stripes). Image i of a
    split is a pure function of (seed, split, i), at any resolution. With `cache`, each image is kept
    after its first render (size x 3 x H x W floats; with DataLoader workers each keeps its own copy), since
    drawing one costs a noticeable share of a small model's step."""

    num_classes = len(SHAPES)

    def __init__(self, image_size=64, split="train", size=20000, seed=0, cache=False):
        assert split in ("train", "val"), f"split must be 'train' or 'val', not {split!r}"
        self.image_size, self.size, self.seed, self.split = image_size, size, seed, split
        self.cache = {} if cache else None

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if self.cache is None:
            return self.render(i)
        if i not in self.cache:
            self.cache[i] = self.render(i)
        return self.cache[i]

    def read(self, i, crop=None):
        """Image i as batches() reads it: float, since rounding a render to uint8 would change it; `crop` is
        moot, a render being square at image_size (its short side's resize and its one crop are the render)."""
        return self[i]

    def render(self, i):
        rng = np.random.default_rng([self.seed, self.split == "val", i])  # disjoint streams per split
        label, n = i % self.num_classes, self.image_size
        # background: a muted gradient between two colours plus soft stripes, in a random direction
        yy, xx = np.mgrid[0:1:n * 1j, 0:1:n * 1j]
        a, b = rng.uniform(0, 2 * np.pi, 2)
        t = ((np.cos(a) * xx + np.sin(a) * yy) - min(0, np.cos(a)) - min(0, np.sin(a))) / (abs(np.cos(a)) + abs(np.sin(a)))
        c0, c1 = (_hsv_to_rgb(rng.uniform(), rng.uniform(0.1, 0.5), rng.uniform(0.15, 0.5)) for _ in range(2))
        bg = c0 * (1 - t[..., None]) + c1 * t[..., None]
        bg += 0.06 * np.sin(2 * np.pi * rng.uniform(1, 4) * (np.cos(b) * xx + np.sin(b) * yy) + rng.uniform(0, 6.3))[..., None]
        # foreground: the shape drawn 4x larger and box-filtered down, for anti-aliased edges
        ss = 4
        r = rng.uniform(0.2, 0.32) * n * ss
        cx, cy = rng.uniform(r / ss + 1, n - r / ss - 1, 2) * ss
        mask = Image.new("L", (n * ss, n * ss), 0)
        _draw_shape(ImageDraw.Draw(mask), SHAPES[label], cx, cy, r, rng.uniform(-0.3, 0.3))
        m = np.asarray(mask.resize((n, n), Image.BOX), dtype=np.float64)[..., None] / 255.0
        fg = _hsv_to_rgb(rng.uniform(), rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))
        img = np.clip(bg * (1 - m) + fg * m, 0, 1)
        return torch.from_numpy(img.transpose(2, 0, 1).astype(np.float32)), label


def _image_files(folder, recursive):
    """Paths relative to `folder` of its image files (and its subfolders', with `recursive`), in the order of
    sorted(folder.rglob("*")), in one scandir pass: entries sorted by name at each level, a subfolder's files
    at its name. Symlinked files are read, symlinked subfolders not descended (as rglob)."""
    files = []

    def scan(path, prefix):
        with os.scandir(path) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if recursive and entry.is_dir(follow_symlinks=False):
                    scan(entry.path, prefix + entry.name + "/")
                elif os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS and entry.is_file():
                    files.append(prefix + entry.name)

    scan(folder, "")
    return files


def _listing(root, split, exclude):
    """ImageFolder's file list -> (class names, the paths' bytes end to end, where each path ends, labels, the
    held-out note for the log of a split folder, or None). FileNotFoundError or ValueError: nothing to read."""
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and d.name not in exclude)
    if classes:
        files = [(f"{c}/{f}", label) for label, c in enumerate(classes) for f in _image_files(root / c, True)]
    else:
        files = [(f, 0) for f in _image_files(root, False)]
    if not files:
        besides = f" (besides {', '.join(f'{d}/' for d in exclude)})" if exclude else ""
        where = (f"in the class folders of {root} ({', '.join(classes[:4])}{', ...' if len(classes) > 4 else ''}: its "
                 "subfolders; images beside them are not read)" if classes else f"under {root}")
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) found {where}{besides}; "
                                "expected root/<class>/<image> or root/<image>")
    note = None
    if split is not None:
        n = len(files)
        k = max(HELD_OUT_MIN, round(HELD_OUT_SHARE * n))
        if k >= n:
            raise ValueError(f"image folder {root} has {n} images: too few to hold out {k} and train on the "
                             f"rest; add images, or put held-out ones in a 'val' folder beside 'train'")
        held_out = set(torch.randperm(n, generator=torch.Generator().manual_seed(0))[:k].tolist())
        files = [s for i, s in enumerate(files) if (i in held_out) == (split == "val")]
        note = f"held-out: {k:,} of {n:,} images of {root}, never trained on"
    names = [os.fsencode(f) for f, _ in files]
    return (classes, np.frombuffer(b"".join(names), np.uint8), np.cumsum([len(b) for b in names]),
            np.array([label for _, label in files], np.int32), note)


def on_rank_0(fn, *args):
    """fn(*args); under DDP run by rank 0 alone and its result sent to the others (each would walk ImageNet's
    1.28M files otherwise). Its error is raised by every rank: they all stop alike instead of waiting for rank 0."""
    if not dist.is_initialized():
        return fn(*args)
    result = [None]
    if dist.get_rank() == 0:
        try:
            result = [fn(*args)]
        except (OSError, ValueError) as e:
            result = [e]
    dist.broadcast_object_list(result, src=0)
    if isinstance(result[0], Exception):
        raise result[0]
    return result[0]


class ImageFolder(torch.utils.data.Dataset):
    """root/<class>/<image> (the ImageNet layout), or images directly in root (one class); `exclude`: names
    of root's subfolders that are neither classes nor read. Resize the short side + center crop (or a given
    crop: read). Unreadable files (corrupt, truncated, not images) are skipped and counted, never a crash
    mid-epoch; grayscale, CMYK, palette and RGBA become RGB.
    `split` 'val': a held-out share of the files, HELD_OUT_SHARE of them but at least HELD_OUT_MIN,
    drawn with a fixed seed (so every script and run holds out the same files); 'train': the others;
    None: all of them.
    The file list is two numpy arrays (the paths' bytes end to end, and where each ends) and one of labels:
    no Python object per file, so forked loader workers reading it leave the parent's pages shared."""

    def __init__(self, root, image_size=256, split=None, exclude=()):
        assert split in (None, "train", "val"), f"split must be 'train' or 'val', not {split!r}"
        self.root = root = Path(root)
        self.classes, self._names, self._ends, self.labels, self.held_out_note = on_rank_0(_listing, root, split, exclude)
        self.num_classes = max(1, len(self.classes))
        self.image_size = image_size
        # one flag per file, in shared memory that loader workers of any start method write to: a global count
        self._unreadable = torch.zeros(len(self.labels), dtype=torch.uint8).share_memory_()

    @property
    def skipped(self):
        """The number of unreadable files found so far, by this process and its loader workers."""
        return int(self._unreadable.sum())

    def __len__(self):
        return len(self.labels)

    def path(self, i):
        """The path of file i."""
        start = self._ends[i - 1] if i else 0
        return self.root / os.fsdecode(self._names[start:self._ends[i]].tobytes())

    def load(self, path, crop=None):
        """The image at `path`, its short side resized to image_size, cropped square: at the center, or at
        `crop` = (u, v) in [0, 1)^2, the share of the free width and height left of and above it -> uint8 3xHxW."""
        with Image.open(path) as img:
            img = img.convert("RGB")  # decodes fully: a truncated file fails here, not later
        n = self.image_size
        scale = n / min(img.size)
        w, h = max(n, round(img.width * scale)), max(n, round(img.height * scale))
        img = img.resize((w, h), Image.BICUBIC, reducing_gap=None if scale > 0.5 else 3.0)
        if crop is None:
            left, top = (w - n) // 2, (h - n) // 2
        else:
            left, top = (int(u * (free + 1)) for u, free in zip(crop, (w - n, h - n)))
        return torch.from_numpy(np.array(img.crop((left, top, left + n, top + n)))).permute(2, 0, 1).contiguous()

    def read(self, i, crop=None):
        """(uint8 image 3xHxW, label) of file i (load's `crop`); an unreadable file is replaced by the next
        readable one, so batches keep their size."""
        for j in range(len(self)):
            k = (i + j) % len(self)
            if self._unreadable[k]:
                continue
            try:
                return self.load(self.path(k), crop), int(self.labels[k])
            except (OSError, ValueError, Image.DecompressionBombError) as e:
                self._unreadable[k] = 1
                print(f"warning: skipping unreadable image {self.path(k)}: {e}", file=sys.stderr)
        raise RuntimeError(f"none of the {len(self)} image files under {self.root} could be read (the warnings above name "
                           "each); replace them, or name another folder")

    def __getitem__(self, i):
        image, label = self.read(i)
        return image.float() / 255, label


def check_dataset(name):
    """Fail (configurator.fail) unless `name` is 'shapes' or a folder with an image to train on in it: a check
    before any work, which stops at the first such image it finds (ImageFolder lists them all)."""
    if not name:
        fail("dataset is empty: name a folder of images with --dataset=<folder> (or --dataset=shapes)")
    if name == "shapes":
        return
    root = Path(name)
    if not root.is_dir():
        fail(f"dataset folder {name} does not exist; set --dataset=shapes (synthetic) or to an image folder "
             "(root/<class>/<image> or root/<image>)")

    def first_image(outside_val):
        return next((p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS
                     and not (outside_val and p.relative_to(root).parts[0] == "val")), None)

    if first_image(False) is None:
        fail(f"dataset folder {name} holds no images ({', '.join(sorted(IMAGE_EXTENSIONS))}); set --dataset to a "
             "folder of images (root/<class>/<image> or root/<image>)")
    if (root / "val").is_dir() and not (root / "train").is_dir() and first_image(True) is None:
        fail(f"dataset folder {name} holds images only in val/, which is never trained on; put training images in "
             f"{name}/train or beside val/ (root/<class>/<image> or root/<image>)")


def make_dataset(name, image_size, split="train", size=20000, seed=0, cache=False):
    """'shapes' (the synthetic set; `cache`: keep rendered images) or the path of an image folder: with
    a 'val' subfolder, root/val and root/train, or without root/train, root's classes or images but val/'s;
    without 'val', a held-out share of the folder (root/train, or root) and the rest (ImageFolder's
    `split`): 'val' images are never trained on."""
    if name == "shapes":
        return Shapes(image_size, split, size, seed, cache)
    root = Path(name)
    if (root / "val").is_dir():
        if split == "val" or (root / "train").is_dir():
            return ImageFolder(root / split, image_size)
        return ImageFolder(root, image_size, exclude=("val",))
    return ImageFolder(root / "train" if (root / "train").is_dir() else root, image_size, split)


def make_datasets(name, image_size, num_train, num_val, seed, cache=False, labelled=False):
    """A trainer's (training set, held-out set) of make_dataset, with every problem of a folder one line
    (configurator.fail): too few images to hold some out, nothing to read (an empty val/, class folders without
    images), no readable image. `labelled` (a class-conditional model, whose label is a class folder's index):
    the two sets must have the same class folders, each with training images."""
    try:
        sets = (make_dataset(name, image_size, "train", num_train, seed, cache),
                make_dataset(name, image_size, "val", num_val, seed))
        for data in sets:
            data.read(0)  # a folder of unreadable files stops here, not in a loader worker mid-run
    except (OSError, RuntimeError, ValueError) as e:
        fail(str(e))
    train_set, val_set = sets
    if not labelled or not isinstance(train_set, ImageFolder):
        return sets
    if train_set.classes != val_set.classes:
        only = lambda a, b: ", ".join(sorted(set(a.classes) - set(b.classes))[:4]) or "none"
        fail(f"the class folders of {train_set.root} and {val_set.root} differ (only in the first: "
             f"{only(train_set, val_set)}; only in the second: {only(val_set, train_set)}): a label is the index of its "
             "class folder, so the held-out labels would not be the trained ones; give both the same class folders")
    counts = np.bincount(train_set.labels, minlength=len(train_set.classes))
    empty = [c for c, k in zip(train_set.classes, counts) if k == 0]
    if empty:
        fail(f"{len(empty)} class folder(s) of {train_set.root} hold no training images ({', '.join(empty[:4])}"
             f"{', ...' if len(empty) > 4 else ''}): the generator would learn labels it never saw an image of; add "
             "images to them, or remove them")
    return sets


def epoch_permutation(n, seed, epoch):
    """The order in which epoch `epoch` visits range(n), and the generator that drew it (the epoch's crops come
    next from it): a function of (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 100003 + epoch)
    return torch.randperm(n, generator=g), g


def batch_indices(n, batch_size, seed, start_iter=0, rank=0, world_size=1, crops=False):
    """Yield, for iteration start_iter, start_iter+1, ..., this rank's dataset indices: epochs are
    seeded permutations of range(n) and each global batch is split between the ranks. Iteration i of
    rank r is iteration i * world_size + r of one process: a trainer's micro-step m of rank r is one
    process's micro-step m * world_size + r of the same optimizer step, so that world_size ranks with
    A micro-steps each see the images of one process with world_size * A. `crops`: yield (index, (u, v))
    pairs, (u, v) uniform in [0, 1)^2 drawn for each place of an epoch after its permutation (ImageFolder.load's
    `crop`), so an image's crop too is a function of (seed, epoch, place) alone."""
    global_batch = batch_size * world_size
    pos = start_iter * global_batch + rank * batch_size
    epoch, perm, where = -1, None, None
    while True:
        batch = []
        for p in range(pos, pos + batch_size):
            if p // n != epoch:
                epoch = p // n
                perm, g = epoch_permutation(n, seed, epoch)
                where = torch.rand(n, 2, generator=g) if crops else None
            batch.append((perm[p % n].item(), tuple(where[p % n].tolist())) if crops else perm[p % n].item())
        yield batch
        pos += global_batch


class Reader(torch.utils.data.Dataset):
    """What batches() loads: items (index, crop or None) -> the dataset's read(index, crop) where it has one
    (an image folder's uint8 images), else dataset[index]."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, item):
        i, crop = item
        return self.dataset.read(i, crop) if hasattr(self.dataset, "read") else self.dataset[i]


def batches(dataset, batch_size, seed=0, start_iter=0, rank=0, world_size=1, flip=False, brightness_shift=0.0,
            saturation_shift=0.0, workers=0, device="cpu", random_crop=False, multiprocessing_context=None):
    """Infinite stream of (images, labels) on `device`, deterministic in (seed, iteration). `random_crop`:
    each image a random square of its short side resized to image_size (the official recipe's training crop;
    without it, the center square), at a place drawn by batch_indices. `flip`: random horizontal flips;
    `brightness_shift`: each image's pixels shifted by one offset drawn uniformly from [-brightness_shift,
    brightness_shift], all channels alike; `saturation_shift`: then each pixel's distance from its grey (the
    mean of its channels) scaled by one factor per image, drawn from [1 - saturation_shift, 1 +
    saturation_shift], so grey stays grey (both clipped to [0, 1]). All are decided by (seed, iteration as
    one process counts it), not by worker random state nor by the number of processes. Images cross from
    the `workers` (started by `multiprocessing_context`, torch's default if None) as the dataset reads them,
    an image folder's as uint8 (a quarter of float32's shared memory), and become floats on the device."""
    if random_crop and not hasattr(dataset, "read"):
        raise ValueError(f"random_crop needs a dataset with a read(index, crop), not a {type(dataset).__name__}")
    sampler = batch_indices(len(dataset), batch_size, seed, start_iter, rank, world_size, crops=random_crop)
    if not random_crop:
        sampler = ([(i, None) for i in batch] for batch in sampler)
    loader = torch.utils.data.DataLoader(Reader(dataset), batch_sampler=sampler, num_workers=workers,
                                         pin_memory=device.startswith("cuda"), persistent_workers=workers > 0,
                                         multiprocessing_context=multiprocessing_context if workers else None)
    for it, (images, labels) in enumerate(loader, start_iter):
        images = images.to(device, non_blocking=True)  # copy the pinned batch first, augment on the device
        images = as_float(images)
        if flip or brightness_shift or saturation_shift:
            g = torch.Generator().manual_seed(seed * 100003 + (it * world_size + rank) * 101)
            if flip:
                flipped = (torch.rand(len(images), 1, 1, 1, generator=g) < 0.5).to(device, non_blocking=True)
                images = torch.where(flipped, images.flip(3), images)
            if brightness_shift:
                shift = (torch.rand(len(images), 1, 1, 1, generator=g) * 2 - 1) * brightness_shift
                images = (images + shift.to(device, non_blocking=True)).clamp(0, 1)
            if saturation_shift:
                factor = 1 + (torch.rand(len(images), 1, 1, 1, generator=g) * 2 - 1) * saturation_shift
                grey = images.mean(1, keepdim=True)
                images = (grey + factor.to(device, non_blocking=True) * (images - grey)).clamp(0, 1)
        yield images, labels.to(device, non_blocking=True)


def as_float(images):
    """A batch as read (an image folder's uint8, or floats) -> floats in [0, 1]: divided, not times 1/255, so that
    they are the very floats of dataset[i]."""
    return images.float() / 255 if images.dtype == torch.uint8 else images
