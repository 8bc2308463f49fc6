"""``shapes``: coloured shapes on textured backgrounds, rendered from parameters you can edit.

Ten classes (``SHAPE_CLASSES``): circle, square, triangle, star, cross, ring, hexagon, heart,
diamond, ellipse.  Each image is one shape of a random colour, size (radius 18-32 % of the
shorter side), position (fully inside the frame) and rotation (0-360 degrees) over a background
made of a two-colour linear gradient, a texture (smooth value noise or triangle-wave stripes)
and per-pixel grain.  The shape colour is kept at least 0.5 (RGB distance) away from every
colour of the gradient, so the shape stays visible while everything else varies.

Every image is a pure function of its ``ShapeParams``.  ``ShapesGenerator.render(params, dx=,
dy=, scale=, angle=)`` draws the same sample translated (pixels; +x right, +y down), scaled
(linear factor about the shape's centre, so area grows by scale**2) or rotated (degrees,
counter-clockwise on screen) over the *same* background; with no transform it reproduces the
dataset image bit for bit, and an integer (dx, dy) shifts the mask exactly (centres and radii
are multiples of 1/256 px).  ``masks`` are the true foreground: pixels whose centre lies inside
the outline (edges are anti-aliased over one pixel, so mask = coverage >= 0.5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import expect
from .dataset import ImageDataset, as_size, check_channels, check_n
from .sdf import SHAPES

SHAPE_CLASSES: tuple[str, ...] = tuple(SHAPES)
DEFAULT_N = {"train": 5000, "test": 1000}
_GRID = 4  # value-noise cells across the image
_Q = 256.0  # centres and radii are multiples of 1/_Q pixel


@dataclass(frozen=True)
class Background:
    """Gradient from ``color_from`` to ``color_to`` along ``direction`` (degrees), plus a texture
    (``"noise"`` or ``"stripes"``) of strength ``amplitude`` weighted per channel by ``tint``, plus
    per-pixel uniform grain of std ``grain``; ``seed`` fixes the noise."""
    color_from: tuple[float, float, float]
    color_to: tuple[float, float, float]
    direction: float
    texture: str
    amplitude: float
    tint: tuple[float, float, float]
    period: float
    stripe_angle: float
    phase: float
    grain: float
    seed: int


@dataclass(frozen=True)
class ShapeParams:
    """One sample: class ``label``, centre (``cx``, ``cy``) in pixels from the top-left corner,
    ``radius`` in pixels, ``angle`` in degrees, RGB ``color`` in [0, 1], and its background."""
    label: int
    cx: float
    cy: float
    radius: float
    angle: float
    color: tuple[float, float, float]
    background: Background


class ShapesGenerator:
    """Samples and renders ``shapes`` images of ``size`` (int or (H, W)); ``channels`` 3 or 1
    (gray by ITU-R 601 luma).  ``seed`` seeds ``sample_params`` when it is given no rng.

    Params hold pixel positions for this generator's size: render them with a generator of the
    same size (``ds.generator``) to reproduce a dataset's images.
    """

    classes = SHAPE_CLASSES

    def __init__(self, size=64, seed: int = 0, *, channels: int = 3):
        self.size = as_size(size)
        if min(self.size) < 8:
            raise expect("size", "at least 8 pixels on each side", size)
        if check_channels(channels) is None:
            raise expect("channels", "1 or 3", channels)
        self.channels = channels
        self._rng = np.random.default_rng(seed)

    def sample_params(self, n: int, rng: np.random.Generator | int | None = None) -> list[ShapeParams]:
        """n samples with classes balanced (counts differ by at most one) in random order."""
        rng = self._rng if rng is None else np.random.default_rng(rng)
        h, w = self.size
        label = rng.permutation(np.arange(n) % len(SHAPE_CLASSES))
        radius = np.round(rng.uniform(0.18, 0.32, n) * min(h, w) * _Q) / _Q
        margin = radius * 1.16  # the widest shapes reach 1.155 radii from the centre
        cx = np.round(rng.uniform(margin, w - margin) * _Q) / _Q
        cy = np.round(rng.uniform(margin, h - margin) * _Q) / _Q
        angle = rng.uniform(0.0, 360.0, n)
        c0 = rng.uniform(0.05, 0.95, (n, 3))
        c1 = np.clip(c0 + rng.uniform(-0.35, 0.35, (n, 3)), 0.0, 1.0)
        color = _contrasting(c0, c1, rng)
        direction, texture = rng.uniform(0.0, 360.0, n), rng.integers(0, 2, n)
        amplitude, tint = rng.uniform(0.03, 0.12, n), rng.uniform(0.3, 1.0, (n, 3))
        period = rng.uniform(0.05, 0.16, n) * min(h, w)
        stripe_angle, phase = rng.uniform(0.0, 180.0, n), rng.uniform(0.0, 1.0, n)
        grain, seed = rng.uniform(0.0, 0.04, n), rng.integers(0, 2**31 - 1, n)
        rows = zip(label, cx, cy, radius, angle, color, c0, c1, direction, texture, amplitude, tint,
                   period, stripe_angle, phase, grain, seed)
        return [ShapeParams(int(k), float(x), float(y), float(r), float(a), _rgb(col),
                            Background(_rgb(f), _rgb(t), float(d), ("noise", "stripes")[tx], float(am),
                                       _rgb(ti), float(pe), float(sa), float(ph), float(gr), int(sd)))
                for (k, x, y, r, a, col, f, t, d, tx, am, ti, pe, sa, ph, gr, sd) in rows]

    def render(self, params: ShapeParams, *, dx: float = 0.0, dy: float = 0.0, scale: float = 1.0,
               angle: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """One sample, transformed -> (image (C, H, W) float32, mask (H, W) bool)."""
        images, masks = self.render_batch([params], dx=dx, dy=dy, scale=scale, angle=angle)
        return images[0], masks[0]

    def render_batch(self, params: Sequence[ShapeParams], *, dx: float = 0.0, dy: float = 0.0,
                     scale: float = 1.0, angle: float = 0.0, chunk: int = 128):
        """Many samples, all with the same transform -> (images (N, C, H, W), masks (N, H, W))."""
        for name, v in (("dx", dx), ("dy", dy), ("angle", angle)):
            if not math.isfinite(v):
                raise expect(name, "a finite number", v)
        if not (math.isfinite(scale) and scale > 0):
            raise expect("scale", "a positive number", scale)
        h, w = self.size
        images = np.empty((len(params), self.channels, h, w), np.float32)
        masks = np.empty((len(params), h, w), bool)
        for i in range(0, len(params), chunk):
            part = params[i:i + chunk]
            images[i:i + len(part)], masks[i:i + len(part)] = self._draw(part, dx, dy, scale, angle % 360.0)
        return torch.from_numpy(images), torch.from_numpy(masks)

    def render_background(self, params: ShapeParams) -> torch.Tensor:
        """The sample's background alone (what the image shows where there is no shape), (C, H, W)."""
        smooth, grain = self._background([params])
        return torch.from_numpy(self._finish(smooth + grain)[0])

    # ---- drawing ----

    def _draw(self, params, dx, dy, scale, extra_angle):
        h, w = self.size
        col = lambda f: np.array([f(p) for p in params], np.float32)[:, None, None]  # noqa: E731
        x = np.arange(w, dtype=np.float32) + 0.5  # pixel centres
        y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
        px = x - (col(lambda p: p.cx) + np.float32(dx))  # (n, 1, W) -> broadcasts to (n, H, W)
        py = y - (col(lambda p: p.cy) + np.float32(dy))  # (n, H, 1)
        theta = [math.radians(p.angle + extra_angle) for p in params]
        c = np.array([math.cos(t) for t in theta], np.float32)[:, None, None]
        s = np.array([math.sin(t) for t in theta], np.float32)[:, None, None]
        r = col(lambda p: p.radius) * np.float32(scale)
        inv = np.float32(1.0) / r
        u = (c * px - s * py) * inv  # (n, H, W) shape frame, y up (screen y points down)
        v = (-s * px - c * py) * inv
        labels = np.array([p.label for p in params])
        dist = np.empty(u.shape, np.float32)
        for k, name in enumerate(SHAPE_CLASSES):
            sel = labels == k
            if sel.any():
                dist[sel] = SHAPES[name](u[sel], v[sel])
        dist = dist * r  # signed distance in pixels
        alpha = np.clip(np.float32(0.5) - dist, 0.0, 1.0)[:, None]  # (n, 1, H, W) coverage
        smooth, grain = self._background(params)
        color = np.array([p.color for p in params], np.float32)[:, :, None, None]  # (n, 3, 1, 1)
        image = smooth + (color - smooth) * alpha + grain  # (n, 3, H, W)
        return self._finish(image), dist <= 0.0

    def _background(self, params):
        """-> (smooth (n, 3, H, W), grain (n, 3, H, W)) float32."""
        h, w = self.size
        arr = lambda f: np.array([f(p.background) for p in params], np.float32)  # noqa: E731
        x = np.arange(w, dtype=np.float32) + 0.5
        y = (np.arange(h, dtype=np.float32) + 0.5)[:, None]
        d = [math.radians(p.background.direction) for p in params]
        gc = np.array([math.cos(a) for a in d], np.float32)[:, None, None]
        gs = np.array([math.sin(a) for a in d], np.float32)[:, None, None]
        t = (gc * (x - np.float32(w / 2)) + gs * (y - np.float32(h / 2))) * np.float32(1 / max(h, w))
        t = np.clip(t + np.float32(0.5), 0.0, 1.0)[:, None]  # (n, 1, H, W)
        c0 = arr(lambda b: b.color_from)[:, :, None, None]  # (n, 3, 1, 1)
        c1 = arr(lambda b: b.color_to)[:, :, None, None]
        smooth = c0 + (c1 - c0) * t  # (n, 3, H, W)

        coarse = np.empty((len(params), _GRID + 1, _GRID + 1), np.float32)
        grain = np.empty((len(params), 3, h, w), np.float32)
        for i, p in enumerate(params):  # per-sample noise, from the sample's own seed
            g = np.random.default_rng(p.background.seed)
            coarse[i] = g.uniform(-1.0, 1.0, coarse.shape[1:])
            g.random(dtype=np.float32, out=grain[i])
        grain -= np.float32(0.5)  # uniform, std 1/sqrt(12) before scaling
        grain *= arr(lambda b: b.grain * math.sqrt(12.0))[:, None, None, None]
        noise = _bilinear(coarse, x * np.float32(_GRID / w), y[:, 0] * np.float32(_GRID / h))

        sa = [math.radians(p.background.stripe_angle) for p in params]
        sc = np.array([math.cos(a) for a in sa], np.float32)[:, None, None]
        ss = np.array([math.sin(a) for a in sa], np.float32)[:, None, None]
        wave = (sc * x + ss * y) / arr(lambda b: b.period)[:, None, None] + arr(lambda b: b.phase)[:, None, None]
        stripes = np.abs(wave - np.floor(wave) - np.float32(0.5)) * np.float32(4.0) - np.float32(1.0)
        is_noise = np.array([p.background.texture == "noise" for p in params])[:, None, None]
        texture = np.where(is_noise, noise, stripes)[:, None]  # (n, 1, H, W) in [-1, 1]
        weight = arr(lambda b: b.amplitude)[:, None, None, None] * arr(lambda b: b.tint)[:, :, None, None]
        return smooth + weight * texture, grain

    def _finish(self, image):
        image = np.clip(image, 0.0, 1.0)
        if self.channels == 1:
            image = (image[:, 0] * np.float32(0.299) + image[:, 1] * np.float32(0.587)
                     + image[:, 2] * np.float32(0.114))[:, None]  # (n, 1, H, W)
        return image


def _bilinear(grid, gx, gy):
    """Sample grids (n, G+1, G+1) at columns gx (W,) and rows gy (H,) -> (n, H, W)."""
    ix = np.minimum(np.floor(gx).astype(np.int64), grid.shape[2] - 2)
    iy = np.minimum(np.floor(gy).astype(np.int64), grid.shape[1] - 2)
    fx = gx - ix.astype(np.float32)
    fy = (gy - iy.astype(np.float32))[:, None]
    rows = grid[:, :, ix] + (grid[:, :, ix + 1] - grid[:, :, ix]) * fx  # (n, G+1, W)
    return rows[:, iy] + (rows[:, iy + 1] - rows[:, iy]) * fy  # (n, H, W)


def _contrasting(c0, c1, rng):
    """Shape colours at least 0.5 from the segment c0-c1 (the gradient's colours): the first of
    32 random candidates that is far enough, else the farthest candidate.  (n, 3) each."""
    cand = rng.uniform(0.0, 1.0, (len(c0), 32, 3))
    seg = (c1 - c0)[:, None]
    t = np.clip(((cand - c0[:, None]) * seg).sum(-1) / np.maximum((seg * seg).sum(-1), 1e-12), 0.0, 1.0)
    dist = np.linalg.norm(cand - (c0[:, None] + t[..., None] * seg), axis=-1)  # (n, 32)
    far = dist >= 0.5
    pick = np.where(far.any(1), far.argmax(1), dist.argmax(1))
    return cand[np.arange(len(c0)), pick]


def _rgb(v) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


class ShapesDataset(ImageDataset):
    """An ImageDataset that also keeps each image's ``params`` and the ``generator`` that drew it,
    so any sample can be re-rendered transformed: ``ds.generator.render(ds.params[i], dx=4)``."""

    def __init__(self, images, labels, *, masks, params, generator, **kw):
        super().__init__(images, labels, SHAPE_CLASSES, masks=masks, **kw)
        self.params, self.generator = list(params), generator

    def subset(self, indices) -> "ShapesDataset":
        base = super().subset(indices)
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.int64).reshape(-1).tolist()
        return ShapesDataset(base.images, base.labels, masks=base.masks, params=[self.params[i] for i in idx],
                             generator=self.generator, name=base.name, source=base.source,
                             spec=base.spec, info=base.info)


def load_shapes(split: str = "train", *, size=None, n=None, seed: int = 0, channels=None) -> ShapesDataset:
    """The ``shapes`` split: 64x64 RGB by default, 5000 train / 1000 test images; train and test
    are drawn from different seed streams, so they never share a sample."""
    size = as_size(size) or (64, 64)
    n = check_n(n) or DEFAULT_N[split]
    gen = ShapesGenerator(size, channels=check_channels(channels) or 3)
    params = gen.sample_params(n, np.random.default_rng([seed, ("train", "test").index(split)]))
    images, masks = gen.render_batch(params)
    labels = torch.tensor([p.label for p in params], dtype=torch.int64)
    spec = {"name_or_path": "shapes", "split": split, "size": list(size), "n": n, "seed": seed,
            "channels": gen.channels}
    return ShapesDataset(images, labels, masks=masks, params=params, generator=gen, name="shapes",
                         source=f"convlens:shapes/{split}?seed={seed}", spec=spec, info={"split": split})
