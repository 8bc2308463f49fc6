"""Receptive-field geometry: how a unit of a feature map sits on the input image.

Along each spatial axis a feature map carries three integers (Araujo, Norris & Sim 2019,
"Computing receptive fields of convolutional neural networks", Distill):

* ``rf``    -- the receptive field size in input pixels,
* ``jump``  -- input pixels between neighbouring units (the effective stride; 0 when every unit
  sees the same region, e.g. after a fully connected or global pooling layer),
* ``start`` -- the input coordinate of the *first* (top or left) pixel of unit 0's field. It is
  not the centre, and it may be negative: zero padding puts part of a field off the image,
* ``lo``, ``hi`` -- the first and last image pixel (inclusive) that any unit can see. Usually the
  whole image, but a layer that drops trailing pixels (a floor-mode pooling that does not fit)
  hides them from every later layer, even where a later padding window reaches over them.

Unit ``i`` covers input pixels ``start + i*jump ... start + i*jump + rf - 1``, clipped to
``[lo, hi]``. A window op of kernel ``k``, stride ``s``, padding ``p`` and dilation ``d`` over an
input of ``n`` units composes as ``rf += (k-1)*d*jump; start -= p*jump; jump *= s`` and clips
``lo, hi`` to the input's own units (``max(lo, start)``, ``min(hi, start + (n-1)*jump + rf - 1)``).
Element-wise ops with several inputs (residual add, concatenation along channels) take the union
of their inputs' fields. This is exact (equal to the gradient probe of :mod:`.receptive`) except for
a unit whose window lies entirely in padding (padding >= the kernel's extent): it sees no pixel,
while the analytic box reports the image pixels its padded window overlaps; and a dilated window
whose padding is not a multiple of the dilation: at the border its taps skip the first real unit,
and the analytic box can start up to ``dilation - 1`` input units too early.

Boxes are **half-open** and **clipped to the image**: ``Box(top, left, bottom, right)`` covers
rows ``top:bottom`` and columns ``left:right``, so ``image[..., box.top:box.bottom, box.left:box.right]``
is the patch a unit sees.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError


@dataclass(frozen=True)
class Axis:
    """Geometry of a feature map along one spatial axis (see the module docstring)."""

    rf: int
    jump: int
    start: int
    lo: int
    hi: int

    @classmethod
    def image(cls, size: int) -> "Axis":
        """The input itself: one pixel per unit."""
        return cls(1, 1, 0, 0, size - 1)

    def window(self, kernel: int, stride: int, padding: int, dilation: int, units: int) -> "Axis":
        """This axis after a sliding window (convolution or pooling) over ``units`` input units."""
        first, last = self.span(units)
        return Axis(self.rf + (kernel - 1) * dilation * self.jump, self.jump * stride, self.start - padding * self.jump,
                    first, last)

    def shifted(self, pad: int, units: int) -> "Axis":
        """This axis of ``units`` units after ``pad`` units of zero padding at its start: the padding
        units see nothing, so ``lo..hi`` shrinks to what the real units see."""
        first, last = self.span(units)
        return Axis(self.rf, self.jump, self.start - pad * self.jump, first, last)

    def span(self, units: int) -> tuple[int, int]:
        """First and last image pixel (inclusive, clipped to ``lo..hi``) seen by any of ``units`` units."""
        return max(self.start, self.lo), min(self.start + max(units - 1, 0) * self.jump + self.rf - 1, self.hi)


@dataclass(frozen=True)
class Geometry:
    """Per-axis geometry (``h``: rows, ``w``: columns) of a feature map over an ``image_hw`` input."""

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
    Boxes are clipped to the pixels the layer can see (``lo..hi``, inside the image) and, when
    ``image_hw`` is given, to ``[0, H) x [0, W)`` as well. Pure arithmetic: no forward pass, so it is
    cheap for the thousands of patches a top-9 search crops.
    """
    geo = getattr(geometry, "geometry", geometry)
    if not isinstance(geo, Geometry):
        raise InputError("receptive_boxes needs a Geometry or a summary row with known geometry; "
                         f"got {type(geometry).__name__} (the receptive field of this layer is unknown)")
    rows, cols = torch.as_tensor(rows), torch.as_tensor(cols)
    rows, cols = torch.broadcast_tensors(rows.to(torch.int64), cols.to(device=rows.device, dtype=torch.int64))
    limit = tuple(image_hw) if image_hw is not None else (geo.h.hi + 1, geo.w.hi + 1)
    edges = []
    for axis, units, size in ((geo.h, rows, limit[0]), (geo.w, cols, limit[1])):
        first = axis.start + units * axis.jump                                  # (...)
        low, high = max(axis.lo, 0), min(axis.hi + 1, int(size))
        edges.append((first.clamp(low, high), (first + axis.rf).clamp(low, high)))
    (top, bottom), (left, right) = edges
    return torch.stack([top, left, bottom, right], dim=-1)                      # (..., 4)


# -- composition rules used by the tracer -------------------------------------------------------------
def whole(axis: Axis, units: int) -> Axis:
    """One field covering every unit of an axis (flatten, FC, global pooling): ``jump`` 0."""
    first, last = axis.span(units)
    return Axis(max(last - first + 1, 0), 0, first, first, last)


def union(parts: Sequence[tuple[Axis, int]], units: int) -> Axis | None:
    """The field of an element-wise op over inputs ``(axis, units along it)``; ``None`` if not affine.

    Inputs with the output's jump contribute their per-unit boxes; inputs that are constant along the
    axis (one unit, broadcast, or jump 0) contribute a fixed box, which is allowed when it covers the
    per-unit boxes of every output unit (a squeeze-excitation gate) or when nothing moves. Inputs
    that see different ``lo..hi`` ranges are merged to the widest (a bounding box, never too small).
    """
    if all(a == parts[0][0] for a, _ in parts):
        return parts[0][0]
    moving = [a for a, n in parts if n > 1 and a.jump > 0]
    fixed = [a.span(1) for a, n in parts if not (n > 1 and a.jump > 0)]    # (first, last) boxes
    if len({a.jump for a in moving}) > 1:
        return None
    if moving:
        start, end = min(a.start for a in moving), max(a.start + a.rf - 1 for a in moving)
        result = Axis(end - start + 1, moving[0].jump, start, min(a.lo for a in moving), max(a.hi for a in moving))
        if not fixed:
            return result
        first, last = result.span(units)
        if not all(f <= first and l >= last for f, l in fixed):
            return None
    first, last = min(f for f, _ in fixed), max(l for _, l in fixed)
    return Axis(last - first + 1, 0, first, first, last)
