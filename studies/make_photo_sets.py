"""
Build photo sets for config/photos_tokenizer.py from scikit-image's bundled photographs (offline), each
held out from another part of every photo: training crops come from the left 3/4 of each photo, held-out
crops from the right 1/4, so no held-out pixel was ever trained on. Layout: <out>/<set>/train/*.png and
<out>/<set>/val/*.png (the trainer then evaluates on val). Crops are seeded: the same command rebuilds the
same files. For each set it prints the PSNR that the held-out crops keep with no learning (their 4x4 and
8x8 block means, training.block_means_psnr; the trainer prints the same figures at its start).

  python -m studies.make_photo_sets --out=photo-sets                 # every set
  python -m studies.make_photo_sets --out=photo-sets pair textured   # some of them
  python train_tokenizer.py config/photos_tokenizer.py --dataset=photo-sets/pair

scikit-image is needed only here (pip install scikit-image), not by the project.
"""
import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from configurator import fail
from data import ImageFolder
from training import block_means_psnr

# name: (photos, training crops per photo, held-out crops per photo, crop side range in px before resizing to 64)
SETS = {
    # two natural photos, 800 + 96 crops, as in issue 31; smooth (4x4 block means >= 28 dB)
    "pair": (["coffee", "rocket"], 400, 48, (64, 64)),
    # smooth photos and microscopy
    "smooth": (["camera", "rocket", "moon", "cell", "coffee"], 320, 40, (64, 64)),
    # textures, text and detailed scenes
    "textured": (["brick", "gravel", "grass", "coins", "text", "hubble_deep_field", "immunohistochemistry"],
                 240, 32, (64, 64)),
    # colour scenes at several scales: crops of 64-128 px shrunk to 64
    "scenes": (["astronaut", "coffee", "chelsea", "rocket", "camera", "cat"], 300, 36, (64, 128)),
    # another pair: a cat and a camera man, both at native scale
    "pair2": (["chelsea", "camera"], 400, 48, (64, 64)),
}
SIZE = 64
TRAIN_SHARE = 0.75  # training crops lie in the left 3/4 of a photo, held-out ones in the right 1/4


def load_photo(name):
    import skimage.data
    a = np.asarray(getattr(skimage.data, name)())
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    return a[..., :3]


def crops(photo, n, x_range, sides, rng):
    """n crops with sides drawn from `sides` (px), lying entirely in columns x_range, resized to SIZE."""
    h, w = photo.shape[:2]
    out = []
    for _ in range(n):
        s = int(rng.integers(sides[0], sides[1] + 1))
        s = min(s, h, x_range[1] - x_range[0])
        if s < SIZE:
            raise ValueError(f"a {w}x{h} photo has no room for {SIZE}-px crops in columns {x_range}")
        y = int(rng.integers(0, h - s + 1))
        x = int(rng.integers(x_range[0], x_range[1] - s + 1))
        img = Image.fromarray(photo[y:y + s, x:x + s])
        out.append(img if s == SIZE else img.resize((SIZE, SIZE), Image.BICUBIC, reducing_gap=3.0))
    return out


def build(root, photos, n_train, n_val, sides, seed):
    for split in ("train", "val"):
        (root / split).mkdir(parents=True, exist_ok=True)
        for old in (root / split).glob("*.png"):
            old.unlink()
    for k, name in enumerate(photos):
        photo = load_photo(name)
        w = photo.shape[1]
        cut = int(w * TRAIN_SHARE)
        rng = np.random.default_rng([seed, k])
        for split, n, x_range in (("train", n_train, (0, cut)), ("val", n_val, (cut, w))):
            for i, img in enumerate(crops(photo, n, x_range, sides, rng)):
                img.save(root / split / f"{name}_{i:04d}.png")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sets", nargs="*", help=f"sets to build (default: all): {', '.join(SETS)}")
    parser.add_argument("--out", default="photo-sets", help="folder that receives one subfolder per set")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    unknown = [s for s in args.sets if s not in SETS]
    if unknown:
        fail(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SETS)}")
    try:
        import skimage.data  # noqa: F401
    except ImportError:
        fail("this script needs scikit-image for its photographs: pip install scikit-image")
    for name in args.sets or SETS:
        photos, n_train, n_val, sides = SETS[name]
        root = Path(args.out) / name
        build(root, photos, n_train, n_val, sides, args.seed)
        val = ImageFolder(root / "val", SIZE)
        images = torch.stack([val[i][0] for i in range(len(val))])
        print(f"{root}: {len(photos)} photos ({', '.join(photos)}), {n_train * len(photos)} training + "
              f"{len(val)} held-out crops; held-out {block_means_psnr(images)}")


if __name__ == "__main__":
    main()
