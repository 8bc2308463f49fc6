"""Snap a 2-D embedding onto a full image grid: ``tsne_grid(embedding, rows, cols) -> TSNEGrid``.

The lecture's "ILSVRC 1k by 1k / 4k by 4k" images after Karpathy's cnnembed
(http://cs.stanford.edu/people/karpathy/cnnembed/): t-SNE leaves holes and overlaps; a grid
mosaic shows every image once, tiles touching, with the map's layout kept. The embedding is
scaled to the unit square (each axis by its own min and max; y up, as in the scatter) and each
point is given its own cell by solving the assignment problem (Kuhn 1955; scipy's
``linear_sum_assignment``, a shortest-augmenting-path solver after Crouse 2016) on the squared
distances between points and cell centres: the total squared displacement is minimal. With fewer
points than cells the cells left over stay blank.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import expect

__all__ = ["TSNEGrid", "tsne_grid", "normalized", "cell_centres"]


@dataclass(frozen=True, repr=False)
class TSNEGrid:
    """``cells[i]``: the cell (row-major, ``row * cols + col``; row 0 at the top) of point i."""

    rows: int
    cols: int
    cells: np.ndarray   # (N,) int64, all distinct
    points: np.ndarray  # (N, 2) the embedding scaled to [0, 1]^2
    cost: float         # sum of squared distances point -> cell centre (unit-square units)

    def __len__(self) -> int:
        return len(self.cells)

    def __repr__(self) -> str:
        return (f"TSNEGrid({len(self)} points on {self.rows}x{self.cols} cells, mean squared displacement "
                f"{self.cost / max(1, len(self)):.4g})")

    @property
    def positions(self) -> np.ndarray:
        """(N, 2) int (row, col) of each point."""
        return np.stack([self.cells // self.cols, self.cells % self.cols], axis=1)

    def mosaic(self, images, *, tile: int | None = None, background: int = 255) -> np.ndarray:
        """(rows * t, cols * t, 3) uint8: image i in its cell. ``images``: (N, C, H, W) in [0, 1] or uint8
        (N, H, W, C) (e.g. ``convlens.codespace.codes.thumbnails``), resized to ``tile`` px when given."""
        from .codes import thumbnails

        thumbs = thumbnails(images, tile)  # (N, t, t', 3)
        if len(thumbs) != len(self):
            raise expect("images", f"one image per grid point ({len(self)})", len(thumbs))
        th, tw = thumbs.shape[1:3]
        out = np.full((self.rows * th, self.cols * tw, 3), background, dtype=np.uint8)
        for (r, c), img in zip(self.positions, thumbs):
            out[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = img
        return out

    def plot(self, images, *, tile: int | None = None, ax=None, title: str | None = None):
        """The mosaic as a figure."""
        from ..plots.codes import mosaic_figure

        return mosaic_figure(self.mosaic(images, tile=tile), ax=ax,
                             title=title or f"t-SNE grid: {len(self)} images on {self.rows}x{self.cols} cells")

    def to_dict(self) -> dict:
        return {"rows": self.rows, "cols": self.cols, "cells": self.cells.tolist(), "cost": self.cost}


def normalized(embedding: np.ndarray) -> np.ndarray:
    """(N, 2) -> (N, 2) in [0, 1]^2, each axis scaled by its own range (a constant axis -> 0.5)."""
    lo, hi = embedding.min(0), embedding.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    return np.where(hi > lo, (embedding - lo) / span, 0.5)


def cell_centres(rows: int, cols: int) -> np.ndarray:
    """(rows * cols, 2) (x, y) centres in the unit square, row-major, row 0 at the top (largest y)."""
    r, c = np.divmod(np.arange(rows * cols), cols)
    return np.stack([(c + 0.5) / cols, 1.0 - (r + 0.5) / rows], axis=1)


def tsne_grid(embedding, rows: int | None = None, cols: int | None = None) -> TSNEGrid:
    """Assign each point of ``embedding`` ((N, 2) array or a TSNEResult) to its own cell of a
    ``rows`` x ``cols`` grid (default: the smallest near-square grid holding N; one of them given:
    the other so that the grid holds N), minimizing the total squared displacement."""
    from scipy.optimize import linear_sum_assignment

    emb = np.asarray(getattr(embedding, "embedding", embedding), dtype=np.float64)
    if emb.ndim != 2 or emb.shape[1] != 2 or len(emb) == 0 or not np.isfinite(emb).all():
        raise expect("embedding", "a finite (N, 2) array with N >= 1 (or a TSNEResult)", tuple(emb.shape))
    n = len(emb)
    for name, v in (("rows", rows), ("cols", cols)):
        if v is not None and (not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1):
            raise expect(name, "a positive int or None", v)
    if rows is None and cols is None:
        cols = int(np.ceil(np.sqrt(n)))
    if rows is None:
        rows = -(-n // cols)
    elif cols is None:
        cols = -(-n // rows)
    if rows * cols < n:
        raise expect("rows x cols", f"at least {n} cells (one per point)", f"{rows}x{cols} = {rows * cols}")
    pts = normalized(emb)
    centres = cell_centres(rows, cols)
    cost = ((pts[:, None, :] - centres[None, :, :]) ** 2).sum(-1)  # (N, rows*cols) squared distances
    point, cell = linear_sum_assignment(cost)
    cells = np.empty(n, dtype=np.int64)
    cells[point] = cell
    return TSNEGrid(int(rows), int(cols), cells, pts, float(cost[point, cell].sum()))
