"""One image of a batch result: ``result[i]`` for the result objects that hold N images.

Methods given a batch return one result object for the whole batch (``len(result)`` images, ``.plot()``
of them all, ``.save``/``.load``); ``result[i]`` is image ``i`` as a result of the same kind, so
``result[i].plot()`` draws one. ``pick(result, i)`` builds it for a dataclass result: every field that
holds one entry per image (an array or tensor whose first axis has N rows, and the tuples or lists named
in ``listed``) keeps the entry of image ``i``; everything else is kept as it is (class names too, even
when there happen to be N of them).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .errors import expect

__all__ = ["pick", "index_of"]


def index_of(i, n: int) -> int:
    """``i`` as an index into ``n`` images (negative counts from the end); IndexError when out of range."""
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
        raise expect("index", "an int (one image of the batch)", i)
    if not -n <= int(i) < n:
        raise IndexError(f"image {int(i)} of a batch of {n}")
    return int(i) % n


def per_image(value, i: int, n: int, *, listed: bool = False):
    """``value``'s entry for image ``i`` when it holds one per image (kept as a batch of one), else ``value``:
    arrays and tensors by their first axis; tuples and lists only when ``listed``."""
    if hasattr(value, "shape") and len(getattr(value, "shape", ())) and value.shape[0] == n:
        return value[i:i + 1]
    if listed and isinstance(value, (tuple, list)) and len(value) == n:
        return type(value)([value[i]])
    return value


def pick(result, i, n: int | None = None, *, listed: tuple[str, ...] = ()):
    """Image ``i`` of a dataclass batch result, as a result of the same class (see the module docstring)."""
    n = len(result) if n is None else n
    i = index_of(i, n)
    changes = {f.name: per_image(getattr(result, f.name), i, n, listed=f.name in listed)
               for f in dataclasses.fields(result) if f.init}
    return dataclasses.replace(result, **changes)
