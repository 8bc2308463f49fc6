"""CIFAR-10 / CIFAR-100 "python version" batch directories, unpickled safely.

CIFAR-10 (https://www.cs.toronto.edu/~kriz/cifar.html): ``data_batch_1``..``data_batch_5``
(train), ``test_batch`` and ``batches.meta``; CIFAR-100: ``train``, ``test`` and ``meta`` with
``fine_labels`` (the 100 classes).  ``path`` may also be the folder that contains
``cifar-10-batches-py`` or ``cifar-100-python``.  Each batch is a pickled dict with ``data``
(N, 3072) uint8 (red, green, blue planes of 32x32) and ``labels`` (or ``fine_labels``).

Pickles can run code when loaded, so batches are read with ``SafeUnpickler``: it resolves only
the globals that numpy arrays need (``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``,
``_frombuffer``, and latin-1 ``_codecs.encode`` for protocol-2 bytes) and refuses any other
(``os.system``, ``builtins.eval``...) with a DataError naming the file.  A batch that is not a
dict, lacks a key, or has data of the wrong shape is a DataError too.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .dataset import ImageDataset

_CIFAR10 = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
            "labels": b"labels", "names": b"label_names"}
_CIFAR100 = {"train": ["train"], "test": ["test"], "meta": "meta", "labels": b"fine_labels",
             "names": b"fine_label_names"}


def _numpy_globals() -> dict[tuple[str, str], object]:
    core = getattr(np, "_core", None) or np.core  # numpy 2 renamed numpy.core to numpy._core
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): _latin1_encode}
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = core.multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = core.multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = core.numeric._frombuffer
    return allowed


def _latin1_encode(text, encoding="latin1"):
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding.replace("-", "").replace("_", "").lower() not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


class SafeUnpickler(pickle.Unpickler):
    """An Unpickler that builds numpy arrays, lists, dicts, bytes and numbers, and nothing else."""

    ALLOWED = _numpy_globals()

    def __init__(self, file, *, path: Path):
        super().__init__(file, encoding="bytes")  # the batches were written by Python 2
        self.path = path

    def find_class(self, module: str, name: str):
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise DataError(f"{self.path}: refused to unpickle '{module}.{name}'; a CIFAR batch holds only "
                            "numpy arrays, lists and bytes (is this file really a CIFAR batch?)") from None


def load_batch(path: Path) -> dict:
    """One pickled batch -> its dict, with str keys decoded from bytes where needed."""
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, path=path).load()
    except DataError:
        raise
    except Exception as e:  # UnpicklingError, EOFError, ValueError, ... on a damaged file
        raise DataError(f"{path}: cannot be unpickled ({type(e).__name__}: {e}); expected a CIFAR python batch") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}; expected a CIFAR batch dict")
    return {(k.encode() if isinstance(k, str) else k): v for k, v in obj.items()}


def is_cifar(path: Path) -> bool:
    return _batch_dir(path) is not None


def load_cifar(path, split: str = "train") -> ImageDataset:
    """A CIFAR batch directory -> ImageDataset (N, 3, 32, 32)/255 with the meta file's class names."""
    root = _batch_dir(Path(path))
    if root is None:
        raise DataError(f"{path}: not a CIFAR batch directory; expected data_batch_1..5, test_batch and batches.meta")
    layout = _CIFAR10 if (root / "batches.meta").exists() or (root / "test_batch").exists() else _CIFAR100
    names = _class_names(root / layout["meta"], layout["names"])
    xs, ys = [], []
    for part in (("train", "test") if split == "all" else (split,)):
        for fname in layout[part]:
            f = root / fname
            if not f.is_file():
                raise DataError(f"{f}: missing; a CIFAR directory needs {', '.join(layout['train'] + layout['test'])}")
            x, y = _images_labels(f, load_batch(f), layout["labels"])
            xs.append(x)
            ys.append(y)
    x = torch.from_numpy(np.concatenate(xs)).float().div_(255.0)  # (N, 3, 32, 32)
    y = torch.from_numpy(np.concatenate(ys))
    if names is None:
        names = [str(k) for k in range(max(10, int(y.max()) + 1))]
    if len(y) and int(y.max()) >= len(names):
        raise DataError(f"{root}: label {int(y.max())} but the meta file names only {len(names)} classes")
    return ImageDataset(x, y, names, name=root.name, source=str(root.resolve()),
                        info={"split": split, "format": "cifar-python"})


def _batch_dir(path: Path) -> Path | None:
    for d in (path, path / "cifar-10-batches-py", path / "cifar-100-python"):
        if d.is_dir() and any((d / f).is_file() for f in ("data_batch_1", "test_batch", "batches.meta", "meta")):
            return d
    return None


def _images_labels(f: Path, batch: dict, key: bytes) -> tuple[np.ndarray, np.ndarray]:
    for k in (b"data", key):
        if k not in batch:
            found = ", ".join(repr(x.decode() if isinstance(x, bytes) else x) for x in batch)
            raise DataError(f"{f}: CIFAR batch has no {k.decode()!r} key; found {found}")
    data = np.asarray(batch[b"data"])
    labels = np.asarray(batch[key])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{f}: 'data' is {data.dtype} {data.shape}; expected uint8 (N, 3072)")
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{f}: {key.decode()!r} has shape {labels.shape} ({labels.dtype}); "
                        f"expected {len(data)} integer labels, one per image")
    if len(labels) and labels.min() < 0:
        raise DataError(f"{f}: negative label {int(labels.min())}")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)  # (N, 3, 32, 32)


def _class_names(meta: Path, key: bytes) -> list[str] | None:
    if not meta.is_file():
        return None  # names default to "0".."9"
    names = load_batch(meta).get(key)
    if names is None:
        raise DataError(f"{meta}: CIFAR meta file has no {key.decode()!r} key")
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else str(n) for n in names]
