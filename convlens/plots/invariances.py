"""Figures of the lecture's "other methods": the optima of one unit from several starts, sorted by cluster
(Erhan et al. 2009), and its invariances at the optimum as image sequences along geodesics, the activation
under each image (Berkes & Wiskott 2006, Fig. 7; Le et al. 2010)."""
from __future__ import annotations

import math

import numpy as np

from .class_model import show
from .common import pyplot

CLUSTER_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                  "#bcbd22", "#17becf")


def optimal_stimuli_figure(result, *, size: float = 1.35, title: str | None = None):
    """``result``: an ``OptimalStimuli``. Left: the optima sorted by cluster (a coloured frame per cluster),
    each captioned with its cluster and activation; right: their cosine similarities in the same order."""
    plt = pyplot()
    order = result.order
    images = result.display()[order]                                               # (n, H, W, C)
    n = len(images)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig = plt.figure(figsize=(cols * size + 3.0, max(rows * (size + 0.4), 2.6) + 0.5))
    grid = fig.add_gridspec(rows, cols + 3, wspace=0.15, hspace=0.45)
    for i in range(rows * cols):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        if i >= n:
            ax.axis("off")
            continue
        j = order[i]
        show(ax, images[i])
        color = CLUSTER_COLORS[result.clusters[j] % len(CLUSTER_COLORS)]
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_edgecolor(color)
            spine.set_linewidth(2.5)
        ax.set_title(f"cluster {result.clusters[j]}\nact {result.activation[j]:.3g}", fontsize=7, color=color)
    ax = fig.add_subplot(grid[:, cols + 1:])
    im = ax.imshow(result.cosine[np.ix_(order, order)], vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_title("cosine similarity\n(sorted by cluster)", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels([str(result.clusters[j]) for j in order], fontsize=6)
    ax.set_yticklabels([str(result.clusters[j]) for j in order], fontsize=6)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    info = result.info
    fig.suptitle(title or f"{info['label']}: {n} optima from random starts on ||x - mean|| = {info['norm']:.3g} "
                          f"({result.n_clusters} cluster{'s' if result.n_clusters != 1 else ''}, "
                          f"cosine >= {info['same']:g} within one)", fontsize=9)
    return fig


def invariances_figure(result, *, rows=None, size: float = 1.15, title: str | None = None):
    """``result``: a ``HessianInvariances``. One row per direction (``rows``: their indices, default all), x*
    in the middle column, the frames along the geodesic left and right (all on one grey scale), under each
    the activation measured on the model, and the direction itself last (grey = 0, saturating at its 99.5th
    percentile); each row labelled with its kind and eigenvalue λ."""
    plt = pyplot()
    rows = list(range(len(result))) if rows is None else list(rows)
    shown = result.display()[rows]                                                 # (R, F, H, W, C)
    n_rows, n_frames = shown.shape[:2]
    mid = n_frames // 2
    fig, axes = plt.subplots(n_rows, n_frames + 1, figsize=((n_frames + 1) * size + 1.4, n_rows * (size + 0.3) + 0.6),
                             squeeze=False)
    act = result.activation[rows]
    for r, row in enumerate(rows):
        v = result.directions[row].detach().float().cpu().numpy().transpose(1, 2, 0)  # (H, W, C)
        scale = max(float(np.percentile(np.abs(v), 99.5)), float(np.abs(v).max()) / 50, 1e-12)
        show(axes[r, -1], np.clip(0.5 + 0.5 * v / scale, 0.0, 1.0))
        if r == 0:
            axes[r, -1].set_title("direction v", fontsize=7)
        for f in range(n_frames):
            ax = axes[r, f]
            show(ax, shown[r, f])
            center = f == mid and n_frames % 2 == 1
            ax.set_xlabel(f"{act[r, f]:.3g}", fontsize=7, fontweight="bold" if center else "normal", labelpad=1)
            if r == 0:
                ax.set_title(f"{math.degrees(result.angles[f]):+.0f}°" if not center else "x*", fontsize=7)
        kind = result.kinds[row]
        lam = result.eigenvalues[row]
        label = (f"{kind} {row + 1}" if kind == "invariance" else kind) + f"\nλ = {lam:.3g}"
        axes[r, 0].set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
    info = result.info
    smooth = info["smooth"]
    how = (f"softplus copy, β = {smooth['beta']:g} (activation at x* {smooth['activation']:.3g} vs the model's "
           f"{info['activation']:.3g})" if smooth["used"] else "the model as it is")
    fig.suptitle(title or f"{info['label']}: invariances of the optimal stimulus (Hessian on the sphere, {how});\n"
                          "under each image: the model's activation", fontsize=8)
    fig.tight_layout()
    return fig
