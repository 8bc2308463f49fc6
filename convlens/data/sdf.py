"""Signed distance functions of the ``shapes`` classes, in the shape's own unit frame.

Each function takes x, y arrays (any equal shapes; y points up, the shape's size is about 1)
and returns the signed distance to the outline: negative inside, positive outside.  Most are
exact (after Inigo Quilez, https://iquilezles.org/articles/distfunctions2d/); the ellipse,
diamond, cross interior and crescent are close bounds, enough for one pixel of anti-aliasing.

Only +, -, *, /, sqrt, abs, min, max and where are used on arrays: each is correctly rounded,
so a pixel's value never depends on how many images are rendered together.  That is what lets
``ShapesGenerator.render`` reproduce a dataset image bit for bit.
"""
from __future__ import annotations

import math

import numpy as np


def _length(x, y):
    return np.sqrt(x * x + y * y)


def circle(x, y):
    return _length(x, y) - 1.0


def box(x, y, bx=0.8, by=0.8):
    qx, qy = np.abs(x) - bx, np.abs(y) - by
    outside = _length(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def triangle(x, y, r=1.0):
    """Equilateral, half-side r (circumradius 2r/sqrt(3) ~ 1.15), centroid at 0, apex up."""
    k = math.sqrt(3.0)
    x = np.abs(x) - r
    y = y + r / k
    fold = (x + k * y) > 0.0
    x, y = np.where(fold, (x - k * y) / 2.0, x), np.where(fold, (-k * x - y) / 2.0, y)
    x = x - np.clip(x, -2.0 * r, 0.0)
    return -_length(x, y) * np.sign(y)


def star(x, y, r=1.15, rf=0.45):
    """Five points of radius r; rf sets how deep the notches are."""
    k1x, k1y = 0.809016994375, -0.587785252292
    x = np.abs(x)
    d = np.maximum(k1x * x + k1y * y, 0.0) * 2.0
    x, y = x - d * k1x, y - d * k1y
    d = np.maximum(-k1x * x + k1y * y, 0.0) * 2.0
    x, y = x + d * k1x, y - d * k1y
    x = np.abs(x)
    y = y - r
    bax, bay = rf * -k1y, rf * k1x - 1.0
    h = np.clip((x * bax + y * bay) / (bax * bax + bay * bay), 0.0, r)
    return _length(x - bax * h, y - bay * h) * np.sign(y * bax - x * bay)


def cross(x, y, arm=1.0, half_width=0.32):
    return np.minimum(box(x, y, arm, half_width), box(x, y, half_width, arm))


def ring(x, y, mid=0.72, half_width=0.28):
    return np.abs(_length(x, y) - mid) - half_width


def hexagon(x, y, r=0.92):
    """Regular hexagon of inradius r (corners at 1.06)."""
    kx, ky, kz = -0.866025404, 0.5, 0.577350269
    x, y = np.abs(x), np.abs(y)
    d = np.minimum(kx * x + ky * y, 0.0) * 2.0
    x, y = x - d * kx, y - d * ky
    x = x - np.clip(x, -kz * r, kz * r)
    y = y - r
    return _length(x, y) * np.sign(y)


def heart(x, y, s=1.45):
    """Lobes up, point down; s scales the unit heart so it spans about [-1, 1]."""
    x, y = np.abs(x) / s, y / s + 0.5
    upper = (x + y) > 1.0
    lobe = _length(x - 0.25, y - 0.75) - math.sqrt(2.0) / 4.0
    m = np.maximum(x + y, 0.0) * 0.5
    lower = np.sqrt(np.minimum(x * x + (y - 1.0) * (y - 1.0), (x - m) * (x - m) + (y - m) * (y - m)))
    return np.where(upper, lobe, lower * np.sign(x - y)) * s


def diamond(x, y, a=0.6, b=1.1):
    """Rhombus of half-width a and half-height b (tall, so no rotation of the square matches it)."""
    return (np.abs(x) * b + np.abs(y) * a - a * b) / math.sqrt(a * a + b * b)


def ellipse(x, y, a=1.05, b=0.55):
    """Semi-axes a (x) and b (y); the distance is scaled by b, a bound that is exact on the axes."""
    return (_length(x / a, y / b) - 1.0) * b


SHAPES = {
    "circle": circle, "square": box, "triangle": triangle, "star": star, "cross": cross,
    "ring": ring, "hexagon": hexagon, "heart": heart, "diamond": diamond, "ellipse": ellipse,
}
