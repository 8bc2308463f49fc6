"""Top-k patch figures: Zeiler & Fergus's "Top-9 patches" mosaics (ECCV 2014, Fig. 2) and R-CNN's
"top regions" (Girshick et al. 2014, Fig. 4: the receptive field and activation value drawn in white)."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .common import pyplot, to_hwc


def mosaic(crops: Sequence, k: int, *, gap: int = 1) -> np.ndarray:
    """A unit's crops (C, h, w), best first, tiled row by row into a square-ish grid of k cells
    (3x3 for k=9), each crop centred in a cell of the largest crop's size; (H, W, 3) in [0, 1].
    NaN pixels (``crops(..., pad=True, fill=nan)``: the field outside the image) become a light
    checkerboard, which no image pixel is mistaken for."""
    ncols = max(1, math.ceil(math.sqrt(k)))
    nrows = max(1, math.ceil(k / ncols))
    tiles = [_outside_checked(to_hwc(c)) for c in crops]
    ch = max([t.shape[0] for t in tiles] + [1])
    cw = max([t.shape[1] for t in tiles] + [1])
    out = np.ones((nrows * ch + (nrows - 1) * gap, ncols * cw + (ncols - 1) * gap, 3))  # white gaps and blanks
    for i, t in enumerate(tiles[:nrows * ncols]):
        r, c = divmod(i, ncols)
        top = r * (ch + gap) + (ch - t.shape[0]) // 2
        left = c * (cw + gap) + (cw - t.shape[1]) // 2
        out[top:top + t.shape[0], left:left + t.shape[1]] = t
    return out


def _outside_checked(tile: np.ndarray) -> np.ndarray:
    outside = np.isnan(tile).any(axis=2)                                   # (h, w)
    if outside.any():
        rows, cols = np.indices(outside.shape)
        tile = tile.copy()
        tile[outside] = np.where(((rows // 2 + cols // 2) % 2 == 0)[outside], 0.93, 0.78)[:, None]
    return tile


def patches_figure(rows: Sequence[tuple[str, Sequence[tuple[str, np.ndarray]]]], *, title: str | None = None,
                   size: float = 1.6):
    """One row per layer ``(name, [(caption, mosaic), ...])``, the units' mosaics side by side."""
    plt = pyplot()
    nrows = max(1, len(rows))
    ncols = max([len(cells) for _, cells in rows] + [1])
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size + 0.6, nrows * (size + 0.45)), squeeze=False)
    for r, (name, cells) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(cells):
                caption, image = cells[c]
                ax.imshow(image, interpolation="nearest")
                ax.set_title(caption, fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=10, rotation=90)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def regions_figure(images, boxes: np.ndarray, values: np.ndarray, *, titles: Sequence[str] | None = None,
                   suptitle: str | None = None, ncols: int | None = None, size: float = 1.9):
    """Whole images (m, C, H, W) with each box ``[top, left, bottom, right]`` (half-open) drawn in white
    and its activation value written inside it."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    n = len(images)
    ncols = max(1, min(ncols or (n if n <= 6 else -(-n // 2)), n) if n else 1)  # 9 images: rows of 5 and 4
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + 0.3)), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(to_hwc(images[i]), interpolation="nearest")
        t, l, b, r = (int(v) for v in boxes[i])
        for color, width in (("black", 3.2), ("white", 1.6)):  # a dark edge keeps white visible on light images
            ax.add_patch(Rectangle((l - 0.5, t - 0.5), r - l, b - t, fill=False, edgecolor=color, linewidth=width))
        ax.text(l + 0.5, t + 0.5, f"{float(values[i]):.2f}", color="white", fontsize=8, va="top", ha="left",
                bbox={"facecolor": "black", "alpha": 0.55, "pad": 1.0, "linewidth": 0})
        if titles:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig
