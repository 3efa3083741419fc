"""studies/make_photo_sets.py: held-out crops come from another part of each photo than the training crops, and
a rebuild writes the same files (a synthetic photo stands in for scikit-image's, which CI does not install)."""
import numpy as np
from PIL import Image

from studies import make_photo_sets


def test_held_out_crops_lie_right_of_every_training_crop(tmp_path, monkeypatch):
    h, w = 100, 300
    photo = np.zeros((h, w, 3), np.uint8)  # each pixel names its column: red * 256 + green
    photo[..., 0], photo[..., 1] = np.arange(w) // 256, np.arange(w) % 256
    monkeypatch.setattr(make_photo_sets, "load_photo", lambda name: photo)
    make_photo_sets.build(tmp_path / "a", ["one", "two"], 6, 3, (64, 64), seed=0)
    cut = int(w * make_photo_sets.TRAIN_SHARE)

    def columns(f):
        a = np.asarray(Image.open(f)).astype(int)
        return a[..., 0] * 256 + a[..., 1]

    train, val = sorted((tmp_path / "a" / "train").glob("*.png")), sorted((tmp_path / "a" / "val").glob("*.png"))
    assert len(train) == 12 and len(val) == 6
    assert max(columns(f).max() for f in train) < cut <= min(columns(f).min() for f in val)
    make_photo_sets.build(tmp_path / "b", ["one", "two"], 6, 3, (64, 64), seed=0)
    assert all((tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes() == f.read_bytes() for f in train + val)
