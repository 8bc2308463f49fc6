"""Class targets, given the way users think of them: an index, a class name, or one per image.

``target_indices(target, n, class_names=..., num_classes=...)`` -> (n,) int64 tensor. ``target`` is
an int or a class name (the same class for every image), or a sequence/tensor of n of those. Class
names come from the model (``PixelModel.class_names``, any ``model.class_names``) when not given.
Out-of-range indices and unknown names raise InputError naming the valid ones.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .errors import InputError, expect, suggest

__all__ = ["class_names_of", "class_index", "target_indices"]


def class_names_of(model: nn.Module | None) -> list[str] | None:
    """The class names a model carries (a Run's pixel model does), else None."""
    names = getattr(model, "class_names", None)
    return list(names) if names is not None else None


def class_index(target, class_names: Sequence[str] | None = None, num_classes: int | None = None) -> int:
    """One class as an int index; a name is looked up in ``class_names``."""
    if isinstance(target, torch.Tensor) and target.numel() == 1:
        target = target.item()
    if isinstance(target, str):
        if not class_names:
            raise InputError(f"target {target!r} is a class name, but the model has no class names; "
                             "give a class index instead")
        if target not in class_names:
            hint = suggest(target, class_names)
            raise InputError(f"target {target!r} is not a class of this model; classes: "
                             + ", ".join(class_names) + "." + hint)
        return list(class_names).index(target)
    if isinstance(target, bool) or not isinstance(target, int) and not hasattr(target, "__index__"):
        raise expect("target", "a class index (int) or class name (str)", target)
    index = int(target)
    limit = num_classes if num_classes is not None else (len(class_names) if class_names else None)
    if index < 0 or (limit is not None and index >= limit):
        raise InputError(f"target must be a class index in [0, {limit - 1 if limit else '?'}]; got {index}")
    return index


def target_indices(target, n: int, *, class_names: Sequence[str] | None = None,
                   num_classes: int | None = None, device=None) -> torch.Tensor:
    """(n,) int64: ``target`` broadcast to n images, or one target per image (a sequence of length n)."""
    if isinstance(target, torch.Tensor) and target.ndim > 0 or isinstance(target, (list, tuple)):
        items = target.tolist() if isinstance(target, torch.Tensor) else list(target)
        if len(items) != n:
            raise expect("target", f"one target per image ({n})", f"{len(items)} targets")
        values = [class_index(t, class_names, num_classes) for t in items]
    else:
        values = [class_index(target, class_names, num_classes)] * n
    return torch.tensor(values, dtype=torch.int64, device=device)
