"""Filter grids with the diagnosis in the title.

The first layer (it sees the image) is drawn as Krizhevsky et al. 2012, Fig. 3 draw AlexNet's conv1:
one RGB tile per filter (grey for 1-channel input), each min-max normalized over its own weights.
A higher layer's filter has one kernel per input channel, which no colour can show: there each row
is a filter and each column an input channel, grey tiles with 0 at mid-grey and each filter scaled by
its own largest |weight| (so a row shows which input channels the filter reads, and how).
Filters with a near-duplicate in the layer get a red frame.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np

from .common import pyplot

DUPLICATE = "#d62728"
GAP = (0.78, 0.86, 0.95)  # between grey tiles


def rgb_canvas(weights: np.ndarray, *, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """(F, C, kh, kw) filters with C in (1, 3) -> an (H, W, 3) image in [0, 1]: one tile per filter, each
    min-max normalized over its own weights, ``pad`` white pixels between tiles, ``cols`` tiles a row."""
    w = np.asarray(weights, dtype=np.float64)
    f, c, kh, kw = w.shape
    if c not in (1, 3):
        raise ValueError(f"rgb_canvas needs 1 or 3 input channels; got {c}")
    cols = cols or _cols(f)
    rows = math.ceil(f / cols)
    lo, hi = w.min((1, 2, 3), keepdims=True), w.max((1, 2, 3), keepdims=True)
    tiles = (w - lo) / np.maximum(hi - lo, 1e-12)  # (F, C, kh, kw) in [0, 1]
    tiles = np.broadcast_to(tiles, (f, 3, kh, kw)).transpose(0, 2, 3, 1)  # (F, kh, kw, 3); grey repeats
    canvas = np.ones((rows * (kh + pad) + pad, cols * (kw + pad) + pad, 3))
    for i, tile in enumerate(tiles):
        r, q = divmod(i, cols)
        canvas[pad + r * (kh + pad):pad + r * (kh + pad) + kh, pad + q * (kw + pad):pad + q * (kw + pad) + kw] = tile
    return canvas


def channel_canvas(weights: np.ndarray, *, pad: int = 1) -> np.ndarray:
    """(F, C, kh, kw) -> an (H, W, 3) image of grey tiles: row = filter, column = input channel; 0 is 0.5
    and each filter is scaled by its own max |weight|; ``pad`` pale blue pixels between tiles (white and
    black are weights)."""
    w = np.asarray(weights, dtype=np.float64)
    f, c, kh, kw = w.shape
    scale = np.abs(w).max((1, 2, 3), keepdims=True)
    tiles = 0.5 + 0.5 * w / np.maximum(scale, 1e-12)  # (F, C, kh, kw) in [0, 1]
    canvas = np.empty((f * (kh + pad) + pad, c * (kw + pad) + pad, 3))
    canvas[:] = GAP
    for i in range(f):
        for j in range(c):
            canvas[pad + i * (kh + pad):pad + i * (kh + pad) + kh, pad + j * (kw + pad):pad + j * (kw + pad) + kw] = \
                tiles[i, j, :, :, None]
    return canvas


def _cols(n: int) -> int:
    return max(1, min(n, 8 if n <= 64 else 16))


def filters_figure(weights: np.ndarray, diagnosis: dict, *, rgb: bool = True, max_filters: int | None = None,
                   max_channels: int = 16, duplicate_cos: float = 0.9):
    """``weights`` (F, C, kh, kw) and ``FilterDiagnosis.to_dict()`` -> a figure: the grid (RGB tiles for a
    first layer, filter x channel grey tiles otherwise; at most ``max_filters`` filters, default 96 RGB
    or 16 rows, and ``max_channels`` channels) titled with the verdict and its reasons."""
    plt = pyplot()
    w = np.asarray(weights)
    f, c, kh, kw = w.shape
    rgb = rgb and c in (1, 3)
    limit = max_filters or (96 if rgb else 16)
    shown = w[:limit, :max_channels] if not rgb else w[:limit]
    copy_of = np.asarray(diagnosis.get("copy_of") or [-1] * f)
    dup = np.flatnonzero(copy_of[:len(shown)] >= 0)
    pad = 1
    if rgb:
        cols = _cols(len(shown))
        canvas = rgb_canvas(shown, cols=cols, pad=pad)
        boxes = [(divmod(i, cols), (1, 1)) for i in dup]  # ((row, col), (rows, cols)) in tiles
    else:
        canvas = channel_canvas(shown, pad=pad)
        boxes = [((i, 0), (1, shown.shape[1])) for i in dup]
    height, width = canvas.shape[:2]
    scale = min(9.0 / width, 7.0 / height, 0.35)  # inches per canvas pixel
    fig_w, fig_h = max(width * scale, 4.5), height * scale + 1.4
    fig, ax = plt.subplots(figsize=(fig_w, fig_h))
    ax.imshow(canvas, interpolation="nearest")
    for (r, q), (nr, nc) in boxes:  # a frame along the middle of the white gap around the tile(s)
        x0, y0 = pad + q * (kw + pad) - 0.5 - pad / 2, pad + r * (kh + pad) - 0.5 - pad / 2
        ax.add_patch(plt.Rectangle((x0, y0), nc * (kw + pad), nr * (kh + pad), fill=False, edgecolor=DUPLICATE,
                                   linewidth=1.5))
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    if not rgb:
        ax.set_xlabel(f"input channel (first {shown.shape[1]} of {c})" if shown.shape[1] < c else "input channel")
        ax.set_ylabel(f"filter (first {len(shown)} of {f})" if len(shown) < f else "filter")
    elif len(shown) < f:
        ax.set_xlabel(f"first {len(shown)} of {f} filters")
    verdict = diagnosis.get("verdict", "")
    color = "#2ca02c" if verdict == "good" else DUPLICATE
    shape = "x".join(str(v) for v in diagnosis.get("shape", w.shape))
    fig.suptitle(f"{diagnosis.get('name', 'filters')} ({shape}): {verdict}", fontsize=11, color=color,
                 fontweight="bold")
    wrap = max(40, int(fig_w * 14))
    text = [textwrap.fill(r, wrap) for r in diagnosis.get("reasons", [])[:3]]
    if len(dup):
        text.append(f"red frame: the filter has a near-copy in the layer (cos >= {duplicate_cos:g})")
    ax.set_title("\n".join(text), fontsize=7.5, color="#333333")
    fig.tight_layout()
    return fig
