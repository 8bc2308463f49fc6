"""Figures for representation inversion (Mahendran & Vedaldi 2015, the lecture's "Reconstructions from
intermediate layers" and "Multiple reconstructions" slides): the original next to its reconstruction
from every layer, and the quadrants of several reconstructions from one code."""
from __future__ import annotations

from typing import Mapping

import numpy as np

from .common import pyplot, to_hwc


def _display(images, mean, std) -> np.ndarray:
    """(N, C, H, W) in the model's input space -> (N, C, H, W) in [0, 1] for imshow."""
    x = images.detach().float().cpu().numpy() if hasattr(images, "detach") else np.asarray(images, dtype=float)
    if mean is not None:
        x = x * np.asarray(std, dtype=float).reshape(1, -1, 1, 1) + np.asarray(mean, dtype=float).reshape(1, -1, 1, 1)
    return np.clip(x, 0.0, 1.0)


def layers_figure(original, results: Mapping, *, image: int = 0, size: float = 1.7, title: str | None = None):
    """The original image, then its reconstruction from each layer of ``results`` (layer ->
    ``OptimizedImage`` from :func:`convlens.invert`; the first init of ``image``), each titled with
    its relative feature error ||Φ(x*) − Φ0|| / ||Φ0|| (in red where it missed its goal)."""
    plt = pyplot()
    items = list(results.items())
    first = items[0][1] if items else None
    mean, std = (first.mean, first.std) if first is not None else (None, None)
    orig = _display(original, mean, std)                                       # (B, C, H, W)
    n = len(items) + 1
    fig, axes = plt.subplots(1, n, figsize=(n * size, size + 0.55), squeeze=False)
    axes = axes[0]
    axes[0].imshow(to_hwc(orig[image]), interpolation="nearest")
    axes[0].set_title("original", fontsize=9)
    for ax, (name, r) in zip(axes[1:], items):
        row = _first_row(r, image)
        ax.imshow(to_hwc(_display(r.images[row:row + 1], r.mean, r.std)[0]), interpolation="nearest")
        err = r.info.get("feature_error", [np.nan] * len(r.images))[row]
        tap = r.info.get("tapped", name)
        label = name if tap in (name, None) or "." in tap else f"{name} ({tap})"
        ax.set_title(f"{label}\nerror {err:.3f}", fontsize=8, color=_color(r, row))
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def quadrants_figure(original, result, *, image: int = 0, size: float = 1.9, title: str | None = None):
    """The lecture's "multiple reconstructions" panel: the original, then the ``n_inits``
    reconstructions of ``image`` from one code (from different random starts) in a 2x2 (or 2-row) grid,
    each with its feature error (in red where it missed its goal); they all "look" the same to the network
    at that layer."""
    plt = pyplot()
    rows = [i for i, k in enumerate(result.info.get("image_index", range(len(result.images)))) if k == image]
    orig = _display(original, result.mean, result.std)[image]
    recs = _display(result.images[rows], result.mean, result.std)
    errs = result.info.get("feature_error", [np.nan] * len(result.images))
    ncols = max(1, -(-len(rows) // 2))
    fig = plt.figure(figsize=(size * (ncols + 1.15), size * 2 + 0.5))
    grid = fig.add_gridspec(2, ncols + 1, width_ratios=[1.15] + [1] * ncols, wspace=0.05, hspace=0.25)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(to_hwc(orig), interpolation="nearest")
    ax.set_title("original", fontsize=9)
    ax.axis("off")
    for j, (row, rec) in enumerate(zip(rows, recs)):
        ax = fig.add_subplot(grid[j // ncols, 1 + j % ncols])
        ax.imshow(to_hwc(rec), interpolation="nearest")
        ax.set_title(f"init {j + 1}: error {errs[row]:.3f}", fontsize=8, color=_color(result, row))
        ax.axis("off")
    layer = result.info.get("layer", "?")
    fig.suptitle(title or f"{len(rows)} reconstructions from the {layer} code of one image", fontsize=10)
    return fig


def _color(result, row: int) -> str:
    """Black, or red where image ``row`` missed its goal (``info["goal"]``; results saved without one: black)."""
    reached = (result.info.get("goal") or {}).get("reached")
    return "#c0392b" if reached is not None and not reached[row] else "black"


def _first_row(result, image: int) -> int:
    idx = list(result.info.get("image_index", range(len(result.images))))
    return idx.index(image) if image in idx else 0
