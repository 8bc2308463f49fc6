"""``fashion``: the real Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, https://arxiv.org/abs/1708.07747):
70,000 28x28 gray photos of Zalando articles in 10 classes, 60,000 train and 10,000 test, as Debian's
package ``dataset-fashion-mnist`` installs them (gzipped IDX files under
``/usr/share/datasets/fashion-mnist/``; ``CONVLENS_FASHION_DIR`` points elsewhere).

The files are read with the MNIST reader (``mnist.read_idx``), once per process and split. Classes are
the dataset's own, in label order, lower-cased without the slash (``t-shirt`` is "T-shirt/top"). Unlike
``shapes``, people and CNNs both err here, mostly among shirt, t-shirt, pullover and coat: the data of the
"CNN vs Human" labeling game. Defaults: 28x28, one channel, every image (``n`` keeps a balanced subset).
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset, as_size, balanced_pick, check_channels, check_n, convert_channels, resize
from .mnist import read_idx

PACKAGE = "dataset-fashion-mnist"
DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES: tuple[str, ...] = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                                    "sneaker", "bag", "ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def fashion_dir() -> Path:
    """Where the IDX files are: ``$CONVLENS_FASHION_DIR``, else the Debian package's folder."""
    return Path(os.environ.get("CONVLENS_FASHION_DIR") or DEFAULT_DIR)


def fashion_files(split: str) -> tuple[Path, Path]:
    """(images, labels) files of ``split``; DataError naming the package and its apt command when absent."""
    root = fashion_dir()
    paths = tuple(root / name for name in _FILES[split])
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"the built-in dataset 'fashion' needs the Debian package {PACKAGE}: {missing[0]} does not "
                        f"exist; install it with `apt-get install {PACKAGE}` (as root), or set CONVLENS_FASHION_DIR "
                        "to a folder holding the four Fashion-MNIST .gz files")
    return paths


@lru_cache(maxsize=2)
def _read(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = read_idx(images, ndim=3), read_idx(labels, ndim=1)  # (N, 28, 28) uint8, (N,) uint8
    if len(x) != len(y) or (len(y) and int(y.max()) >= len(FASHION_CLASSES)):
        raise DataError(f"{images}: {len(x)} images for {len(y)} labels (max {int(y.max()) if len(y) else None}); "
                        f"expected one label in 0..9 per image")
    return x, y


def load_fashion(split: str = "train", *, size=None, n=None, seed: int = 0, channels=None) -> ImageDataset:
    size = as_size(size) or (28, 28)
    n, channels = check_n(n), check_channels(channels)
    images_file, labels_file = fashion_files(split)
    raw, labels = _read(images_file, labels_file)
    rows = balanced_pick(labels, n, seed, what=f"the fashion {split} split")
    x = torch.from_numpy(raw[rows]).unsqueeze(1).float().div_(255.0)  # (N, 1, 28, 28)
    x = convert_channels(resize(x, size), channels)  # (N, C, H, W)
    y = torch.from_numpy(labels[rows].astype(np.int64))
    spec = {"name_or_path": "fashion", "split": split, "size": list(size), "n": n, "seed": seed,
            "channels": x.shape[1]}
    return ImageDataset(x.contiguous(), y, list(FASHION_CLASSES), name="fashion",
                        source=f"{PACKAGE}:{images_file.parent}/{split}", spec=spec,
                        info={"split": split, "format": "idx", "files": [str(images_file), str(labels_file)]})
