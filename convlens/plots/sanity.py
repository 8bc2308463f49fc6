"""Figures for the sanity checks (Adebayo et al. 2018): the similarity curves of the cascading randomization
(their Fig. 4) and each method's map as the layers are randomized (their Fig. 2)."""
from __future__ import annotations

import numpy as np

from .backprop import _row_label
from .common import pyplot, to_hwc

_METRICS = (("spearman_abs", "rank correlation (absolute values)"), ("spearman", "rank correlation (signed)"),
            ("ssim", "SSIM"))


def sanity_curves(result):
    """One panel per similarity measure: for each method, the mean over the images of its similarity to the
    trained model's map (y) at the trained model and after each step of the cascade (x, top layer first);
    the dashed line is the threshold of the verdict; with a random-labels model, its value as a marker at
    the right."""
    plt = pyplot()
    steps = ["trained", *result.steps]
    data = result.data_spearman_abs is not None
    fig, axes = plt.subplots(1, 3, figsize=(13.5, 4.3), squeeze=False)
    colors = plt.get_cmap("tab10")
    for ax, (key, label) in zip(axes[0], _METRICS):
        means = result.means(key)                                              # (M, S)
        for i, m in enumerate(result.methods):
            line = ax.plot(range(len(steps)), [1.0, *means[i]], marker="o", ms=3, color=colors(i % 10), label=m)
            if data:
                values = getattr(result, f"data_{key}")[i]
                v = np.nanmean(values) if np.isfinite(values).any() else np.nan
                ax.plot([len(steps) + 0.5], [v], marker="*", ms=9, color=line[0].get_color())
        limit = {"spearman_abs": result.thresholds[0], "ssim": result.thresholds[1]}.get(key)
        if limit is not None:
            ax.axhline(limit, ls="--", lw=0.8, color="grey")
        ticks = [*steps] + (["random labels"] if data else [])
        ax.set_xticks([*range(len(steps))] + ([len(steps) + 0.5] if data else []))
        ax.set_xticklabels(ticks, rotation=60, ha="right", fontsize=7)
        ax.set_ylim(-0.4, 1.05)
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("similarity to the trained model's map")
    axes[0, -1].legend(fontsize=7, loc="upper right")
    fig.suptitle("cascading randomization from the top layer" + (" (* a model trained on shuffled labels)"
                                                                  if data else ""), fontsize=10)
    fig.tight_layout()
    return fig


def sanity_maps(result, size: float = 1.05):
    """Rows: methods; columns: the image, its map from the trained model, after each cascade step (top layer
    first) and, with a random-labels model, from that model. Absolute maps, each scaled to its 99th
    percentile (the maps SSIM compares)."""
    plt = pyplot()
    data = result.data_maps is not None
    cols = 2 + len(result.steps) + int(data)
    fig, axes = plt.subplots(len(result.methods), cols, figsize=(cols * size + 0.8, len(result.methods) * size + 0.9),
                             squeeze=False)
    heads = ["image", "trained", *result.steps] + (["random labels"] if data else [])
    for r, m in enumerate(result.methods):
        shown = [np.asarray(result.maps[m], dtype=float)[k] for k in range(len(result.steps) + 1)]
        if data:
            shown.append(np.asarray(result.data_maps[m], dtype=float))
        axes[r, 0].imshow(to_hwc(result.image), interpolation="nearest")
        for c, a in enumerate(shown, start=1):
            axes[r, c].imshow(a, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        _row_label(axes[r, 0], m)
    for c, head in enumerate(heads):
        axes[0, c].set_title(head, fontsize=6.5, rotation=30, ha="left", va="bottom")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    fig.tight_layout(h_pad=0.2, w_pad=0.2)
    return fig
