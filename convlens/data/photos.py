"""``photos``: patches cut from the real photographs bundled with scikit-image, one class per photo.

Thirteen classes (``PHOTO_CLASSES``): eight colour photos (astronaut, cat, coffee, rocket,
motorcycle, galaxies, tissue, retina) and five gray ones given three equal channels (cameraman,
coins, brick, grass, gravel); ``moon`` is left out, as its right quarter is nearly flat.
Each photo is first resized so its shorter side is ``max(256, 4 * patch side)`` pixels.
Its right-most quarter is held out: ``test`` patches come only from that vertical strip and
``train`` patches never reach into it, so no pixel is shared between the splits.  Patches
(default 32x32, ``size`` configurable) are placed at seeded random positions, skipping nearly
flat ones (pixel std < 0.03: sky, the galaxies' black), and half of them are flipped
left-right.  Defaults: 300 train / 100 test patches per class (3,900 / 1,300).

Natural images give a CNN trained on them the edge and colour-blob filters of the lecture.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from ..errors import DataError
from .dataset import ImageDataset, as_size, check_channels, check_n, convert_channels

DEFAULT_PER_CLASS = {"train": 300, "test": 100}
MIN_STD = 0.03
_SOURCES = {  # class name -> how skimage.data provides it
    "astronaut": "astronaut", "cat": "chelsea", "coffee": "coffee", "rocket": "rocket",
    "motorcycle": "stereo_motorcycle", "galaxies": "hubble_deep_field", "tissue": "immunohistochemistry",
    "retina": "retina", "cameraman": "camera", "coins": "coins", "brick": "brick", "grass": "grass",
    "gravel": "gravel",
}
PHOTO_CLASSES: tuple[str, ...] = tuple(_SOURCES)


def _read_photo(name: str) -> np.ndarray:
    """The bundled photo as uint8 (H, W, 3)."""
    import skimage.data

    try:
        img = getattr(skimage.data, _SOURCES[name])()
    except Exception as e:  # a scikit-image build without the file, or one that wants to download it
        raise DataError(f"skimage.data.{_SOURCES[name]}: photo for class {name!r} is unavailable ({e}); "
                        "expected it bundled with scikit-image>=0.22") from e
    if name == "motorcycle":
        img = img[0]  # the left view of the stereo pair
    if name == "retina":
        img = img[305:1105, 305:1105]  # the fundus without its black surround
    img = np.asarray(img, dtype=np.uint8)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


@lru_cache(maxsize=4)
def _photos(side: int) -> tuple[np.ndarray, ...]:
    """Every photo resized so its shorter side is ``side``, float32 (H, W, 3) in [0, 1]."""
    out = []
    for name in PHOTO_CLASSES:
        img = Image.fromarray(_read_photo(name))
        k = side / min(img.size)
        img = img.resize((round(img.width * k), round(img.height * k)), Image.BILINEAR)
        out.append(np.asarray(img, dtype=np.float32) / 255.0)
    return tuple(out)


def _patches(photo: np.ndarray, count: int, size: tuple[int, int], test: bool,
             rng: np.random.Generator) -> np.ndarray:
    """count patches (count, 3, ph, pw) from the train area or the held-out strip of one photo."""
    h, w = photo.shape[:2]
    ph, pw = size
    strip = w // 4
    x_lo, x_hi = (w - strip, w - pw) if test else (0, w - strip - pw)
    windows = sliding_window_view(photo, (ph, pw), axis=(0, 1))  # (h-ph+1, w-pw+1, 3, ph, pw), a view
    m = 4 * count
    cand = windows[rng.integers(0, h - ph + 1, m), rng.integers(x_lo, x_hi + 1, m)]  # (m, 3, ph, pw)
    std = cand.std(axis=(1, 2, 3))
    textured = np.flatnonzero(std >= MIN_STD)
    flat = np.setdiff1d(np.argsort(-std, kind="stable"), textured, assume_unique=True)
    pick = np.concatenate([textured, flat])[:count]  # textured first, in sampling order
    out = cand[pick]
    flip = rng.random(count) < 0.5
    out[flip] = out[flip][..., ::-1]
    return out


def load_photos(split: str = "train", *, size=None, n=None, seed: int = 0, channels=None) -> ImageDataset:
    size = as_size(size) or (32, 32)
    n, channels = check_n(n), check_channels(channels)
    k = len(PHOTO_CLASSES)
    n = n or DEFAULT_PER_CLASS[split] * k
    counts = [n // k + (c < n % k) for c in range(k)]  # balanced: counts differ by at most one
    photos = _photos(max(256, 4 * max(size)))
    test = split == "test"
    parts = [_patches(photo, count, size, test, np.random.default_rng([seed, int(test), c]))
             for c, (photo, count) in enumerate(zip(photos, counts))]
    order = torch.from_numpy(np.random.default_rng([seed, int(test), k]).permutation(n))  # mix the classes
    x = convert_channels(torch.from_numpy(np.concatenate(parts))[order], channels)  # (N, C, H, W)
    y = torch.repeat_interleave(torch.arange(k), torch.tensor(counts))[order]
    spec = {"name_or_path": "photos", "split": split, "size": list(size), "n": n, "seed": seed,
            "channels": x.shape[1]}
    return ImageDataset(x.contiguous(), y, list(PHOTO_CLASSES), name="photos",
                        source=f"skimage.data:photos/{split}?seed={seed}", spec=spec, info={"split": split})
