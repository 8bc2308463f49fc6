"""Receptive-field geometry: which input pixels reach each unit of a feature map.

Along each spatial axis a feature map carries the textbook numbers (Araujo, Norris & Sim 2019,
"Computing receptive fields of convolutional neural networks", Distill), which the summary shows:

* ``rf``    -- the receptive field size in input pixels,
* ``jump``  -- input pixels between neighbouring units (the effective stride; 0 when every unit
  sees the same region, e.g. after a fully connected or global pooling layer),
* ``start`` -- the input coordinate of the *first* (top or left) pixel of unit 0's field. It is
  not the centre, and it may be negative: zero padding puts part of a field off the image.

A window op of kernel ``k``, stride ``s``, padding ``p`` and dilation ``d`` composes them as
``rf += (k-1)*d*jump; start -= p*jump; jump *= s``, so unit ``i`` spans ``start + i*jump ...
start + i*jump + rf - 1``. That span is the exact field away from the borders, but not at them: a
dilated window (or one downstream of a stride larger than its kernel) whose taps skip the first real
unit sees less, and a window lying entirely in padding sees nothing. So each axis also carries,
per unit, ``first`` and ``last``: the first and last image pixel that actually reaches it, composed
op by op. Unit ``u`` of a window op takes the smallest ``first`` and the largest ``last`` over its
taps ``u*s - p + j*d`` (``j < k``) that land on real units (not padding, not past the end in ceil
mode). The minimum of a union is the minimum of its parts, so this is exact along an axis; and a
window acts on rows and columns independently, so a unit's field is its row set times its column
set and its box is exact: equal to the gradient probe of :mod:`.receptive`. A unit that sees no
pixel has ``last < first`` (stored as ``0, -1``) and an empty box. ``lo``/``hi`` are the first and
last pixel any unit sees: a floor-mode layer that drops trailing pixels hides them from every later
layer, even where a later padding window reaches over them.

Element-wise ops with several inputs (residual add, concatenation along channels) take the union
of their inputs' fields, per unit; the tracer calls such a union unknown when an input has a unit
that sees nothing along one axis (its field is then no longer a row set times a column set).

Boxes are **half-open** and **clipped to the image**: ``Box(top, left, bottom, right)`` covers
rows ``top:bottom`` and columns ``left:right``, so ``image[..., box.top:box.bottom, box.left:box.right]``
is the patch a unit sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, expect

NONE = 2 ** 62  # a blind unit's first pixel while taking minima (its last is -1)


def _axis(rf: int, jump: int, start: int, first: np.ndarray, last: np.ndarray) -> "Axis":
    """An :class:`Axis` from per-unit bounds (a blind unit as first > last), keeping the arrays for the next op."""
    seen = first <= last
    first, last = np.where(seen, first, NONE), np.where(seen, last, -1)
    axis = Axis(rf, jump, start, tuple(np.where(seen, first, 0).tolist()), tuple(last.tolist()))
    axis.__dict__["arrays"] = first, last  # fills the cached property
    return axis


@dataclass(frozen=True)
class Axis:
    """Geometry of a feature map along one spatial axis (see the module docstring)."""

    rf: int
    jump: int
    start: int
    first: tuple[int, ...]  # per unit, the first image pixel reaching it; one entry when every unit is alike
    last: tuple[int, ...]   # per unit, the last one (inclusive); last < first when the unit sees nothing

    @classmethod
    def image(cls, size: int) -> "Axis":
        """The input itself: one pixel per unit."""
        pixels = tuple(range(size))
        return cls(1, 1, 0, pixels, pixels)

    @classmethod
    def affine(cls, rf: int, jump: int, start: int, lo: int, hi: int, units: int) -> "Axis":
        """The textbook spans of ``units`` units, clipped to ``lo..hi``."""
        begin = start + np.arange(units) * jump                                  # (units,)
        return _axis(rf, jump, start, np.maximum(begin, lo), np.minimum(begin + rf - 1, hi))

    @cached_property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) as int64 arrays, a blind unit as (NONE, -1)."""
        first, last = np.array(self.first), np.array(self.last)
        return np.where(first <= last, first, NONE), last

    @property
    def lo(self) -> int:
        """The first image pixel any unit sees (0, with ``hi`` -1, when none sees any)."""
        return 0 if self.hi < 0 else int(self.arrays[0].min())

    @property
    def hi(self) -> int:
        """The last image pixel any unit sees."""
        return int(self.arrays[1].max())

    @property
    def blind(self) -> bool:
        """Whether some unit sees no pixel at all."""
        return bool((self.arrays[1] < 0).any())

    def bounds(self, units: int) -> tuple[np.ndarray, np.ndarray]:
        """(first, last) of ``units`` units, broadcasting a single one."""
        first, last = self.arrays
        if len(first) == units:
            return first, last
        if len(first) != 1:
            raise ValueError(f"an axis of {len(first)} units cannot describe {units}")
        return first.repeat(units), last.repeat(units)

    def window(self, kernel: int, stride: int, padding: int, dilation: int, units: int, out_units: int) -> "Axis":
        """This axis after a sliding window (convolution, pooling, zero padding as a 1-tap window) that
        maps ``units`` units to ``out_units``: each output unit spans its taps that land on real units."""
        taps = np.arange(out_units)[:, None] * stride - padding + np.arange(kernel) * dilation  # (out, k)
        taps = np.where((taps >= 0) & (taps < units), taps, units)  # padding: the index of an extra blind unit
        first, last = self.bounds(units)
        first, last = np.append(first, NONE)[taps].min(1), np.append(last, -1)[taps].max(1)   # (out,)
        return _axis(self.rf + (kernel - 1) * dilation * self.jump, self.jump * stride,
                     self.start - padding * self.jump, first, last)


@dataclass(frozen=True)
class Geometry:
    """Per-axis geometry (``h``: rows, ``w``: columns) of a feature map."""

    h: Axis
    w: Axis

    @property
    def rf(self) -> tuple[int, int]:
        return self.h.rf, self.w.rf

    @property
    def jump(self) -> tuple[int, int]:
        return self.h.jump, self.w.jump

    @property
    def start(self) -> tuple[int, int]:
        return self.h.start, self.w.start

    @property
    def blind(self) -> bool:
        """Whether some unit sees no pixel."""
        return self.h.blind or self.w.blind

    def box(self, row: int, col: int, image_hw: Sequence[int] | None = None) -> "Box":
        """The clipped input box of unit (row, col)."""
        t, l, b, r = receptive_boxes(self, torch.tensor([row]), torch.tensor([col]), image_hw)[0].tolist()
        return Box(t, l, b, r)


@dataclass(frozen=True)
class Box:
    """A half-open pixel box ``[top, bottom) x [left, right)`` on the input image, clipped to it."""

    top: int
    left: int
    bottom: int
    right: int

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def slices(self) -> tuple[slice, slice]:
        """``image[..., *box.slices]`` crops the box from an (..., H, W) array."""
        return slice(self.top, self.bottom), slice(self.left, self.right)

    def __str__(self) -> str:
        return f"rows {self.top}:{self.bottom}, cols {self.left}:{self.right} ({self.height}x{self.width})"


def receptive_boxes(geometry, rows, cols, image_hw: Sequence[int] | None = None) -> torch.Tensor:
    """Clipped half-open boxes of many units of one layer at once: ``(..., 4)`` int64 ``[top, left, bottom, right]``.

    ``geometry`` is a :class:`Geometry` or anything with a ``.geometry`` (a summary row);
    ``rows``/``cols`` are broadcastable ints, lists or tensors of unit positions (on any device).
    Boxes are exact (the pixels that reach each unit), and clipped to ``[0, H) x [0, W)`` when
    ``image_hw`` is given; a unit that sees no pixel gets ``[0, 0, 0, 0]``. A table lookup: no
    forward pass, so it is cheap for the thousands of patches a top-9 search crops.
    """
    geo = getattr(geometry, "geometry", geometry)
    if not isinstance(geo, Geometry):
        raise InputError("receptive_boxes needs a Geometry or a summary row with known geometry; "
                         f"got {type(geometry).__name__} (the receptive field of this layer is unknown)")
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    rows, cols = torch.broadcast_tensors(rows.to(torch.int64), cols.to(device=rows.device, dtype=torch.int64))
    limit = tuple(image_hw) if image_hw is not None else (geo.h.hi + 1, geo.w.hi + 1)
    edges = []
    for name, axis, units, size in (("rows", geo.h, rows, limit[0]), ("cols", geo.w, cols, limit[1])):
        n = len(axis.first)
        if n > 1 and units.numel() and not (0 <= int(units.min()) and int(units.max()) < n):
            raise expect(name, f"unit positions in 0..{n - 1}", units.tolist())
        index = units if n > 1 else torch.zeros_like(units)                      # (...)
        first = torch.tensor(axis.first, device=units.device)[index]
        last = torch.tensor(axis.last, device=units.device)[index]
        edges.append((first.clamp(0, int(size)), (last + 1).clamp(0, int(size))))
    (top, bottom), (left, right) = edges
    seen = (top < bottom) & (left < right)                                      # (...)
    return torch.stack([top, left, bottom, right], dim=-1) * seen[..., None]    # (..., 4)


# -- composition rules used by the tracer -------------------------------------------------------------
def whole(axis: Axis) -> Axis:
    """One field covering every unit of an axis (flatten, FC, global pooling): ``jump`` 0."""
    lo, hi = axis.lo, axis.hi
    return Axis(max(hi - lo + 1, 0), 0, lo, (lo,), (hi,))


def union(parts: Sequence[tuple[Axis, int]], units: int) -> Axis | None:
    """The field of an element-wise op over inputs ``(axis, units along it)`` (``units`` or 1, broadcast);
    ``None`` where the textbook numbers cannot describe it.

    Each output unit sees the union of what its inputs' units see. The textbook numbers come from the
    inputs with the output's jump (their spans' union); inputs constant along the axis (one unit,
    broadcast, or jump 0) are allowed when their box covers everything the moving ones see (a
    squeeze-excitation gate) or when nothing moves.
    """
    if all(a == parts[0][0] for a, _ in parts):
        return parts[0][0]
    first = np.min([a.bounds(units)[0] for a, _ in parts], axis=0)             # (units,)
    last = np.max([a.bounds(units)[1] for a, _ in parts], axis=0)
    moving = [a for a, n in parts if n > 1 and a.jump > 0]
    fixed = [a for a, n in parts if not (n > 1 and a.jump > 0)]
    if len({a.jump for a in moving}) > 1:
        return None
    if moving and not fixed:
        start = min(a.start for a in moving)
        return _axis(max(a.start + a.rf for a in moving) - start, moving[0].jump, start, first, last)
    if moving and not all(f.lo <= min(a.lo for a in moving) and f.hi >= max(a.hi for a in moving) for f in fixed):
        return None
    result = _axis(0, 0, 0, first, last)
    return _axis(max(result.hi - result.lo + 1, 0), 0, result.lo, first, last)
