"""Figures of the CNN code space: nearest neighbours (query column, neighbours beside it, raw pixels
for contrast), the t-SNE scatter by class, Karpathy's cnnembed thumbnail map, the t-SNE grid mosaic,
and neighbour label agreement per layer. Thumbnails are uint8 (N, h, w, 3) arrays
(``convlens.codespace.codes.thumbnails``); canvases are composed in numpy and drawn with one imshow."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import pyplot

SAME, OTHER = (46, 160, 67), (214, 39, 40)  # frame colours: neighbour of the query's class / of another


def _class_name(k, class_names) -> str:
    k = int(k)
    return class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)


def neighbors_figure(query: np.ndarray, panels: Sequence[dict], *, query_labels=None, class_names=None,
                     title: str | None = None):
    """``query`` (Q, h, w, 3) uint8 in a column; per panel (``{"title", "thumbs": (Q, k, h, w, 3),
    "same": (Q, k) bool or None}``) the k nearest neighbours beside each query, framed green when a
    neighbour has the query's class and red when not."""
    plt = pyplot()
    q, h, w = query.shape[:3]
    pad, frame, gap, left = 3, 3, 28, 0
    cell_w, cell_h = w + 2 * frame + pad, h + 2 * frame + pad
    ks = [p["thumbs"].shape[1] for p in panels]
    width = cell_w * (1 + sum(ks)) + gap * len(panels)
    canvas = np.full((q * cell_h, width, 3), 255, dtype=np.uint8)

    def put(r, x0, img, color):
        y0 = r * cell_h
        if color is not None:
            canvas[y0:y0 + h + 2 * frame, x0:x0 + w + 2 * frame] = color
        canvas[y0 + frame:y0 + frame + h, x0 + frame:x0 + frame + w] = img

    starts = []
    for r in range(q):
        put(r, left, query[r], (90, 90, 90))
        x = cell_w + gap
        for p in panels:
            if r == 0:
                starts.append(x)
            same = p.get("same")
            for j in range(p["thumbs"].shape[1]):
                color = None if same is None else (SAME if same[r, j] else OTHER)
                put(r, x + j * cell_w, p["thumbs"][r, j], color)
            x += cell_w * p["thumbs"].shape[1] + gap
    dpi = 100
    fig = plt.figure(figsize=(width / dpi + 1.2, canvas.shape[0] / dpi + 0.7), dpi=dpi)
    ax = fig.add_axes((0.9 / (width / dpi + 1.2), 0.05, width / dpi / (width / dpi + 1.2), 0.85))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    ax.text(cell_w / 2 - pad, -6, "query", ha="center", va="bottom", fontsize=9, weight="bold")
    for x, p, k in zip(starts, panels, ks):
        ax.text(x + (cell_w * k) / 2, -6, p["title"], ha="center", va="bottom", fontsize=9, weight="bold")
    if query_labels is not None:
        for r, lab in enumerate(query_labels):
            ax.text(-6, r * cell_h + h / 2 + frame, _class_name(lab, class_names), ha="right", va="center",
                    fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def tsne_scatter(embedding: np.ndarray, labels=None, class_names=None, *, ax=None, title: str | None = None):
    """The 2-D embedding as points coloured by class, with a legend of class names."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(7.2, 6.2))
    else:
        fig = ax.figure
    emb = np.asarray(embedding)
    size = max(2.0, min(18.0, 6000.0 / max(1, len(emb))))
    if labels is None:
        ax.scatter(emb[:, 0], emb[:, 1], s=size, color="#3b6ea8", alpha=0.8, linewidths=0)
    else:
        labels = np.asarray(labels)
        classes = np.unique(labels)
        cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
        for i, k in enumerate(classes):
            sel = labels == k
            ax.scatter(emb[sel, 0], emb[sel, 1], s=size, color=cmap(i % cmap.N), alpha=0.85, linewidths=0,
                       label=_class_name(k, class_names))
        if len(classes) <= 20:
            ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8, frameon=False, markerscale=2)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return fig


def thumbnail_map(embedding: np.ndarray, thumbs: np.ndarray, *, size: int = 2000,
                  background: int = 255) -> np.ndarray:
    """(size, size', 3) uint8 canvas with each thumbnail centred at its embedded position (Karpathy's
    cnnembed); the embedding is scaled to the canvas, each axis by its own range (a constant axis: the
    middle), y up, later images drawn over earlier ones."""
    th, tw = thumbs.shape[1:3]
    emb = np.asarray(embedding, dtype=float)                  # (N, 2)
    lo, span = emb.min(0), np.ptp(emb, axis=0)                # (2,) each
    pts = np.where(span > 0, (emb - lo) / np.where(span > 0, span, 1.0), 0.5)  # (N, 2) in [0, 1]
    aspect = float(span[1] / span[0]) if span[0] > 0 and span[1] > 0 else 1.0
    width, height = int(size), max(th + 1, int(round(size * min(max(aspect, 0.5), 2.0))))
    canvas = np.full((height, width, 3), background, dtype=np.uint8)
    xs = np.round(pts[:, 0] * (width - tw)).astype(int)
    ys = np.round((1 - pts[:, 1]) * (height - th)).astype(int)
    for x, y, img in zip(xs, ys, thumbs):
        canvas[y:y + th, x:x + tw] = img
    return canvas


def thumbnail_map_figure(embedding: np.ndarray, thumbs: np.ndarray, *, size: int = 2000, ax=None,
                         title: str | None = None):
    return mosaic_figure(thumbnail_map(embedding, thumbs, size=size), ax=ax, title=title)


def mosaic_figure(image: np.ndarray, *, ax=None, title: str | None = None, dpi: int = 110):
    """An (H, W, 3) uint8 canvas shown at about one screen pixel per image pixel (no axes)."""
    plt = pyplot()
    if ax is None:
        h, w = image.shape[:2]
        fig = plt.figure(figsize=(w / dpi, h / dpi + (0.35 if title else 0)), dpi=dpi)
        ax = fig.add_axes((0, 0, 1, h / (h + (0.35 * dpi if title else 0))))
    else:
        fig = ax.figure
    ax.imshow(image, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def agreement_figure(rows: Sequence[dict], *, k: int, chance: float | None = None, ax=None):
    """Bars: share of the k nearest neighbours of the query's class, per representation (``rows``:
    ``{"layer", "agreement"}``, raw pixels first in grey)."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.7 * len(rows) + 1.5), 3.2))
    else:
        fig = ax.figure
    names = [r["layer"] for r in rows]
    values = [100 * float(r["agreement"]) for r in rows]
    colors = ["#9a9a9a" if r["layer"] == "pixels" else "#3b6ea8" for r in rows]
    bars = ax.bar(range(len(rows)), values, color=colors)
    for b, v in zip(bars, values):
        ax.text(b.get_x() + b.get_width() / 2, v + 1, f"{v:.0f}%", ha="center", va="bottom", fontsize=8)
    if chance is not None:
        ax.axhline(100 * chance, color="#d62728", linestyle="--", linewidth=1, label=f"chance ({100 * chance:.0f}%)")
        ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_xticks(range(len(rows)), names, rotation=30 if len(rows) > 6 else 0, ha="right" if len(rows) > 6 else "center")
    ax.set_ylim(0, 108)
    ax.set_ylabel(f"neighbours of the same class (k={k})")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig
