"""``load(name_or_path)``: one entry point for the built-in datasets and the user formats.

Built-ins (offline, deterministic from ``seed``): ``shapes``, ``digits``, ``photos``, ``fashion`` (the real
Fashion-MNIST of the Debian package ``dataset-fashion-mnist``).  A path
is recognised by what it holds: a CIFAR python batch directory, MNIST IDX files (a directory
or the images file), else an ImageFolder directory.

Common options: ``size`` (int or (H, W)) resizes (built-ins render or cut at that size),
``n`` keeps a seeded subset spread evenly over the classes, ``channels`` (1 or 3) converts
(gray -> RGB repeats, RGB -> gray uses ITU-R 601 luma).  ``split`` is ``"train"`` or ``"test"``;
user data also accepts ``"all"``.  ``describe_split(ds)`` says in words which images a loaded
dataset holds (the held-out part of a folder without train/ and test/ sub-folders, ...).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DataError, expect, suggest
from .cifar import is_cifar, load_cifar
from .dataset import (ImageDataset, as_size, balanced_pick, check_channels, check_n, convert_channels,
                      resize)
from .digits import load_digits
from .fashion import load_fashion
from .folder import TEST_FRACTION, load_folder
from .mnist import is_mnist, load_mnist
from .photos import load_photos
from .shapes import load_shapes

BUILTINS: dict[str, Callable[..., ImageDataset]] = {
    "shapes": load_shapes, "digits": load_digits, "photos": load_photos, "fashion": load_fashion,
}


def describe_split(ds) -> str:
    """Which images of its source ``ds`` holds, in words ("held-out test split: a seeded 20 % of each
    class of the folder's 50 images"); "" when the dataset does not say (a tensor pair, a subset)."""
    info, spec = getattr(ds, "info", None) or {}, getattr(ds, "spec", None) or {}
    split = info.get("split") or spec.get("split")
    if not isinstance(split, str) or info.get("subset_of"):
        return ""
    if split == "all":
        return "all images, split 'all'"
    layout = str(info.get("layout", ""))
    total = info.get("folder_images")
    of = f" of the folder's {total} images" if total else ""
    if layout.startswith("held-out"):
        if split == "test":
            return f"held-out test split: a seeded {TEST_FRACTION:.0%} of each class{of}"
        return f"train split: the {1 - TEST_FRACTION:.0%} of each class not held out{of}"
    if layout == "train/test folders":
        return "train split (its train/ sub-folder)" if split == "train" else \
            "test split (its test/ or val/ sub-folder)"
    return f"{split} split"


def names() -> list[str]:
    """The built-in dataset names."""
    return list(BUILTINS)


def load(name_or_path: str | os.PathLike, split: str = "train", *, size=None, n: int | None = None,
         seed: int = 0, channels: int | None = None, on_error: str = "raise",
         lazy: bool | None = None) -> ImageDataset:
    """A built-in dataset by name, or user data by path -> ImageDataset.

    ``on_error`` ("raise" or "skip") and ``lazy`` apply to image folders (see ``folder.py``).
    Raises DataError for an unknown name (with suggestions) or unreadable data (naming the
    file), InputError for a bad option.
    """
    if split not in ("train", "test", "all"):
        raise expect("split", "'train', 'test' or 'all'", split)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise expect("seed", "a non-negative int", seed)
    if on_error not in ("raise", "skip"):
        raise expect("on_error", "'raise' or 'skip'", on_error)
    size, n, channels = as_size(size), check_n(n), check_channels(channels)
    key = os.fspath(name_or_path) if isinstance(name_or_path, (str, os.PathLike)) else None
    if key is None:
        raise expect("name_or_path", f"a dataset name ({', '.join(BUILTINS)}) or a path", name_or_path)

    if isinstance(name_or_path, str) and key in BUILTINS:  # a Path named "shapes" is a folder
        if split == "all":
            raise expect("split", f"'train' or 'test' for the built-in {key!r}", split)
        return BUILTINS[key](split, size=size, n=n, seed=int(seed), channels=channels)

    path = Path(key).expanduser()
    if not path.exists():
        if os.sep not in key and "." not in key:
            raise DataError(f"unknown dataset {key!r}.{suggest(key, BUILTINS)} Built-ins: {', '.join(BUILTINS)}; "
                            "or give a path to an image folder, MNIST IDX files or a CIFAR batch directory")
        raise DataError(f"{path}: no such file or directory; expected an image folder, MNIST IDX files "
                        f"or a CIFAR batch directory (built-ins: {', '.join(BUILTINS)})")
    if path.is_dir() and is_cifar(path):
        ds = load_cifar(path, split)
    elif is_mnist(path):
        ds = load_mnist(path, split)
    elif path.is_dir():
        return load_folder(path, split, size=size, n=n, seed=int(seed), channels=channels,
                           on_error=on_error, lazy=lazy)
    else:
        raise DataError(f"{path}: is a file; expected an image folder (one sub-folder per class), an MNIST "
                        "images file (*-images-idx3-ubyte[.gz]) or a CIFAR batch directory; "
                        "for a single image use datasets.load_image")
    return _finish(ds, key, split, size=size, n=n, seed=int(seed), channels=channels)


def _finish(ds: ImageDataset, key: str, split: str, *, size, n, seed, channels) -> ImageDataset:
    """Apply n, size and channels to a whole-file dataset, and record how to load it again."""
    rows = balanced_pick(ds.labels.numpy(), n, seed, what=f"the {split} split of {key}")
    if n is not None:
        ds = ds.subset(rows)
    images = convert_channels(resize(ds.images, size), channels).contiguous()  # (N, C, H, W)
    spec = {"name_or_path": key, "split": split, "size": None if size is None else list(size),
            "n": n, "seed": seed, "channels": channels}
    return ImageDataset(images, ds.labels, ds.class_names, name=ds.name, source=ds.source, spec=spec,
                        info={k: v for k, v in ds.info.items() if k != "subset_of"})
