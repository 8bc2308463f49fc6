"""ImageDataset: the one container every loader returns, plus the tensor helpers they share.

An ``ImageDataset`` is a ``torch.utils.data.Dataset`` of ``(image (C, H, W), label)`` pairs
whose whole content is also reachable as tensors (``images`` (N, C, H, W) float32 in [0, 1],
``labels`` (N,) int64), so dataset-wide methods can slice it directly.  ``spec`` holds the
``datasets.load`` arguments that rebuild it, for a run manifest.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import InputError, expect


class ImageDataset(Dataset):
    """Images, integer labels and class names, held in memory.

    ``masks`` (N, H, W) bool is the true foreground where the data knows it (``shapes``).
    ``info`` holds loader facts (split, conversions counted, skipped files); ``spec`` the
    ``load`` arguments (``datasets.load(**ds.spec)`` rebuilds the dataset; for a ``subset``,
    the dataset it was cut from, and ``info["subset_of"]`` says so).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                 name: str, source: str = "", masks: torch.Tensor | None = None,
                 spec: dict | None = None, info: dict | None = None):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.dtype != torch.float32:
            got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
            raise expect("images", "a float32 tensor (N, C, H, W)", got)
        _check_labels(labels, len(images), len(class_names))
        if masks is not None and (masks.dtype != torch.bool or masks.shape != (images.shape[0], *images.shape[2:])):
            raise expect("masks", f"a bool tensor {(images.shape[0], *images.shape[2:])}",
                          f"{masks.dtype} {tuple(masks.shape)}")
        self._images = images
        self._init_common(labels, class_names, name, source, masks, spec, info)

    def _init_common(self, labels, class_names, name, source, masks, spec, info):
        self.labels = labels
        self.class_names = list(class_names)
        self.name = name
        self.source = source or name
        self.masks = masks
        self.spec = dict(spec or {})
        self.info = dict(info or {})

    @property
    def images(self) -> torch.Tensor:
        """All images, (N, C, H, W) float32 in [0, 1]."""
        return self._images

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self._images[i], int(self.labels[i])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of every image."""
        return tuple(self.images.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self) -> torch.Tensor:
        """(num_classes,) int64: how many images each class has."""
        return torch.bincount(self.labels, minlength=self.num_classes)

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> "ImageDataset":
        """A new dataset of the given rows (in the given order); class names are kept whole."""
        idx = _as_index(indices, len(self))
        masks = self.masks[idx] if self.masks is not None else None
        return ImageDataset(self.images[idx], self.labels[idx], self.class_names, name=self.name,
                            source=self.source, masks=masks, spec=self.spec,
                            info={**self.info, "subset_of": len(self)})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description for a run manifest (no pixel data)."""
        return {"name": self.name, "source": self.source, "spec": self.spec, "size": len(self),
                "input_shape": list(self.input_shape), "class_names": self.class_names,
                "info": {k: v for k, v in self.info.items() if isinstance(v, (str, int, float, bool, dict, list))}}

    def __repr__(self) -> str:
        c, h, w = self.input_shape
        return (f"{type(self).__name__}({self.name!r}, {len(self)} images {c}x{h}x{w}, "
                f"{self.num_classes} classes, source={self.source!r})")


class LazyImageDataset(ImageDataset):
    """The ImageDataset interface over files read on access (for folders too big to hold).

    ``read(path)`` returns one image as (C, H, W); ``images`` reads every file once and keeps
    the result, so prefer indexing or a DataLoader over ``images`` on big folders.
    """

    def __init__(self, files: Sequence[str], labels: torch.Tensor, class_names: Sequence[str], *,
                 read: Callable[[str], torch.Tensor], input_shape: tuple[int, int, int], name: str,
                 source: str = "", spec: dict | None = None, info: dict | None = None):
        _check_labels(labels, len(files), len(class_names))
        self.files = list(files)
        self._read = read
        self._shape = tuple(input_shape)
        self._cache: torch.Tensor | None = None
        self._init_common(labels, class_names, name, source, None, spec, info)

    @property
    def images(self) -> torch.Tensor:
        if self._cache is None:
            self._cache = torch.stack([self._read(f) for f in self.files])  # (N, C, H, W)
        return self._cache

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if self._cache is not None:
            return self._cache[i], int(self.labels[i])
        return self._read(self.files[i]), int(self.labels[i])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self._shape

    def subset(self, indices) -> "LazyImageDataset":
        idx = _as_index(indices, len(self))
        return LazyImageDataset([self.files[i] for i in idx.tolist()], self.labels[idx], self.class_names,
                                read=self._read, input_shape=self._shape, name=self.name,
                                source=self.source, spec=self.spec, info={**self.info, "subset_of": len(self)})


def _check_labels(labels: torch.Tensor, n: int, num_classes: int) -> None:
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.shape != (n,):
        raise expect("labels", f"an int64 tensor ({n},)", f"{labels.dtype} {tuple(labels.shape)}")
    if n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise expect("labels", f"in [0, {num_classes - 1}]", f"[{int(labels.min())}, {int(labels.max())}]")


def _as_index(indices, n: int) -> torch.Tensor:
    idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1)
    if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
        raise expect("indices", f"in [0, {n - 1}]", f"[{int(idx.min())}, {int(idx.max())}]")
    return idx


# ---- helpers shared by the loaders ---------------------------------------------------------

def as_size(size) -> tuple[int, int] | None:
    """None, an int s (-> (s, s)) or an (H, W) pair of positive ints -> (H, W) or None."""
    if size is None:
        return None
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in pair):
        raise expect("size", "a positive int or an (H, W) pair of positive ints", size)
    return int(pair[0]), int(pair[1])


def resize(images: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """(N, C, h, w) -> (N, C, H, W) bilinear (antialiased when shrinking), clamped to [0, 1]."""
    if size is None or tuple(images.shape[-2:]) == tuple(size):
        return images
    shrink = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = F.interpolate(images, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    return out.clamp_(0.0, 1.0)  # (N, C, H, W)


def convert_channels(images: torch.Tensor, channels: int | None) -> torch.Tensor:
    """(N, C, H, W) -> (N, channels, H, W): gray -> RGB repeats, RGB -> gray uses ITU-R 601 luma
    (PIL's ``convert("L")`` weights); None keeps C."""
    c = images.shape[1]
    if channels is None or channels == c:
        return images
    if c == 1 and channels == 3:
        return images.expand(-1, 3, -1, -1).contiguous()  # (N, 3, H, W)
    if c == 3 and channels == 1:
        w = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype).view(1, 3, 1, 1)
        return (images * w).sum(1, keepdim=True)  # (N, 1, H, W)
    raise expect("channels", "1 or 3", channels)


def check_channels(channels) -> int | None:
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise expect("channels", "None, 1 or 3", channels)
    return channels


def balanced_pick(labels: np.ndarray, n: int | None, seed: int, *, what: str) -> np.ndarray:
    """Sorted indices of a seeded subset of n rows, spread evenly over the classes (counts differ
    by at most one while a class has rows left). n=None keeps every row."""
    total = len(labels)
    if n is None:
        return np.arange(total)
    if n > total:
        raise InputError(f"n must be at most {total} (the size of {what}); got {n}")
    rng = np.random.default_rng([seed, 7])
    rank = np.empty(total, dtype=np.int64)
    for k in np.unique(labels):
        rows = np.flatnonzero(labels == k)
        rank[rng.permutation(rows)] = np.arange(len(rows))  # order of each row within its class
    order = np.lexsort((rng.random(total), rank))  # round-robin over classes, random within a round
    return np.sort(order[:n])


def check_n(n) -> int | None:
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1):
        raise expect("n", "None or a positive int", n)
    return None if n is None else int(n)
