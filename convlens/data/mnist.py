"""MNIST-style IDX files (MNIST, Fashion-MNIST, KMNIST...): ``<prefix>-images-idx3-ubyte`` with
``<prefix>-labels-idx1-ubyte``, each optionally gzipped (``.gz``).

``path`` may be the images file itself (its labels file is found beside it by name; a
``t10k-``/``test-`` file is the "test" split, any other the "train" split, and asking it for
the other split is a DataError), or a directory holding ``train-*`` and ``t10k-*``
(or ``test-*``) pairs, directly or under ``raw/``; ``split="all"`` joins both.

The format (http://yann.lecun.com/exdb/mnist/): a big-endian header ``0x00 0x00 0x08 ndim``
(unsigned bytes), ``ndim`` uint32 sizes, then the bytes.  A wrong magic number, a size that
disagrees with the file length, or an image count that differs from the label count is a
DataError naming the file.  Pixels are scaled by 1/255; class names are the label values as
strings: "0".."9", or up to the largest label when it is above 9 (EMNIST letters).
"""
from __future__ import annotations

import gzip
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset

_IMAGES = re.compile(r"^(?P<prefix>.*)-images[-.]idx3-ubyte(\.gz)?$")


def is_mnist(path: Path) -> bool:
    """True for an IDX images file or a directory (or its ``raw/``) holding one."""
    if path.is_file():
        return bool(_IMAGES.match(path.name))
    return any(_IMAGES.match(f.name) for d in (path, path / "raw") if d.is_dir() for f in d.iterdir())


def load_mnist(path, split: str = "train") -> ImageDataset:
    """IDX file pair(s) -> ImageDataset (N, 1, 28, 28) uint8/255; resizing and subsets are the caller's."""
    path = Path(path)
    if path.is_file():
        _check_file_split(path, split)
    pairs = [_pair_of(path)] if path.is_file() else [_find_pair(path, s) for s in
                                                    (("train", "test") if split == "all" else (split,))]
    images = [read_idx(img, ndim=3) for img, _ in pairs]
    labels = [read_idx(lab, ndim=1) for _, lab in pairs]
    for (img_path, lab_path), x, y in zip(pairs, images, labels):
        if len(x) != len(y):
            raise DataError(f"{img_path}: has {len(x)} images but {lab_path} has {len(y)} labels; "
                            "expected one label per image")
    x = torch.from_numpy(np.concatenate(images)).unsqueeze(1).float().div_(255.0)  # (N, 1, H, W)
    y = torch.from_numpy(np.concatenate(labels).astype(np.int64))
    class_names = [str(k) for k in range(max(10, int(y.max()) + 1 if len(y) else 0))]  # same for every split
    source = str(pairs[0][0].resolve()) if path.is_file() else str(path.resolve())
    return ImageDataset(x, y, class_names, name=path.name, source=source,
                        info={"split": split, "format": "idx", "files": [str(p) for pr in pairs for p in pr]})


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """One IDX file of unsigned bytes with ``ndim`` dimensions -> uint8 array."""
    raw = _read_bytes(path)
    magic = 0x800 + ndim  # 2049 labels, 2051 images
    if len(raw) < 4 or struct.unpack(">I", raw[:4])[0] != magic:
        got = struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"{path}: not an IDX file with {ndim}-d unsigned bytes: magic number is {got}; "
                        f"expected {magic} ({'images' if ndim == 3 else 'labels'})")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); expected at least {header}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        raise DataError(f"{path}: IDX header says {' x '.join(map(str, dims))} "
                        f"({expected} bytes in all) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot be read ({e}); expected an IDX file (optionally gzipped)") from e


def _check_file_split(images: Path, split: str) -> None:
    """A single file is one split: t10k-/test- files are "test", any other prefix is "train"."""
    m = _IMAGES.match(images.name)
    kind = "test" if m and m.group("prefix") in ("t10k", "test") else "train"
    if split not in ("all", kind):
        raise DataError(f"{images}: is the {kind} file, not the {split} split; pass the {split} images file "
                        "or the directory holding both")


def _pair_of(images: Path) -> tuple[Path, Path]:
    m = _IMAGES.match(images.name)
    if not m:
        raise DataError(f"{images}: not an IDX images file; expected a name like train-images-idx3-ubyte")
    stem = images.name.replace("-images", "-labels").replace("idx3", "idx1")
    for name in (stem, stem[:-3] if stem.endswith(".gz") else stem + ".gz"):
        if (images.parent / name).is_file():
            return images, images.parent / name
    raise DataError(f"{images}: no labels file beside it; expected {images.parent / stem}")


def _find_pair(root: Path, split: str) -> tuple[Path, Path]:
    prefixes = ("train",) if split == "train" else ("t10k", "test")
    for d in (root, root / "raw"):
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            m = _IMAGES.match(f.name)
            if m and m.group("prefix") in prefixes:
                return _pair_of(f)
    raise DataError(f"{root}: no {split} IDX files; expected {prefixes[0]}-images-idx3-ubyte and "
                    f"{prefixes[0]}-labels-idx1-ubyte (optionally .gz) in it or in {root / 'raw'}")

