"""Invariance figure after Zeiler & Fergus 2014, Fig. 5: one column per transform (translation, scale,
rotation); rows: the normalized feature distance of a low layer, of a high layer, and P(true class),
each against the transform amount, one line per image (the same colour in every panel)."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import pyplot

_AXIS = {"translate": "vertical translation (px)", "scale": "scale (linear factor)", "rotate": "rotation (degrees)"}
_TITLE = {"translate": "Vertical translation", "scale": "Scale change", "rotate": "Rotation"}
_ORDER = {"translate": 0, "scale": 1, "rotate": 2}


def _distances(d: dict, layer: str) -> np.ndarray:
    li = d["layers"].index(layer)
    return np.array([[np.nan if v is None else v for v in row] for row in d["distance"][li]], dtype=float)  # (A, N)


def invariance_figure(results: Sequence[dict], *, layers: Sequence[str] | None = None):
    """``results``: ``InvarianceResult.to_dict()`` of one or more transforms (ordered translate, scale,
    rotate). ``layers``: the two layers to show (default: the first and the last of each result).
    Where an image is misclassified, its P(true class) point is drawn as an open circle."""
    plt = pyplot()
    results = sorted(results, key=lambda d: _ORDER.get(d["transform"], 9))
    ncols = len(results)
    fig, axes = plt.subplots(3, ncols, figsize=(3.6 * ncols + 0.6, 7.6), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for c, d in enumerate(results):
        amounts = np.asarray(d["amounts"], dtype=float)
        shown = list(layers) if layers is not None else [d["layers"][0], d["layers"][-1]]
        names = d.get("image_names") or [str(k) for k in d["labels"]]
        for r, layer in enumerate(shown[:2]):
            ax = axes[r, c]
            dist = _distances(d, layer)
            for i in range(dist.shape[1]):
                ax.plot(amounts, dist[:, i], "-", marker=".", color=colors[i % 10], linewidth=1.2, label=names[i])
            ax.set_ylabel(f"{layer}: normalized distance")
            ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        ax = axes[2, c]
        p = np.asarray(d["p_true"], dtype=float)  # (A, N)
        wrong = np.asarray(d["predicted"]) != np.asarray(d["labels"])[None, :]
        for i in range(p.shape[1]):
            ax.plot(amounts, p[:, i], "-", color=colors[i % 10], linewidth=1.2, label=names[i])
            ax.plot(amounts[~wrong[:, i]], p[~wrong[:, i], i], "o", color=colors[i % 10], markersize=3)
            ax.plot(amounts[wrong[:, i]], p[wrong[:, i], i], "o", mfc="white", color=colors[i % 10], markersize=4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("P(true class)")
        ax.set_xlabel(_AXIS.get(d["transform"], d["transform"]))
        ax.grid(alpha=0.3)
        how = "re-rendered" if d.get("method") == "render" else f"resampled, fill={d.get('fill')}"
        axes[0, c].set_title(f"{_TITLE.get(d['transform'], d['transform'])} ({how})", fontsize=10)
        if d["transform"] == "rotate":
            for ax in axes[:, c]:
                ax.set_xticks(np.arange(0, amounts.max() + 1, 90))
    handles, labels = axes[2, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8,
               frameon=False, bbox_to_anchor=(0.5, 0.015))
    fig.text(0.01, 0.003, "distance = ||φ(x) − φ(T(x))|| / ||φ(x)||; open circles: misclassified", fontsize=7,
             color="#555")
    return fig


def layer_means(d: dict, *, ax=None):
    """Mean normalized distance over the images vs the amount, one line per layer (low to high)."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.0, 3.4))
    else:
        fig = ax.figure
    amounts = np.asarray(d["amounts"], dtype=float)
    cmap = plt.get_cmap("viridis")
    for li, layer in enumerate(d["layers"]):
        mean = np.nanmean(_distances(d, layer), axis=1)
        ax.plot(amounts, mean, "-o", markersize=3, color=cmap(li / max(1, len(d["layers"]) - 1)), label=layer)
    ax.set_xlabel(_AXIS.get(d["transform"], d["transform"]))
    ax.set_ylabel("mean normalized distance")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig
