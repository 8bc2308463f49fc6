"""Figures for training health (``HealthReport.to_dict()`` in, matplotlib figures out).

- ``health_overview(d)``: per layer, the shares of dead / input-ignoring / always-on units and the
  mean |r| (with the verdict thresholds), then per-layer histograms of sparsity across samples
  (one value per unit) and across features (one value per sample).
- ``layer_figure(layer)``: one layer as on the lecture's good/bad training slides: the activation
  matrix (samples x units) and the unit-correlation heatmap, plus its most-correlated pairs.
- ``plot_activation_matrix(values)``: the matrix alone (also used by ``Features.plot``).
"""
from __future__ import annotations

import numpy as np

from .common import pyplot

_BARS = (("dead_fraction", "dead", "#c0392b", "dead_fraction"),
         ("constant_fraction", "ignore the input", "#e67e22", "constant_fraction"),
         ("always_active_fraction", "always on", "#7f8c8d", None))


def plot_activation_matrix(values, *, title: str = "", ax=None):
    """An image of (samples, units) activations: rows are samples, columns units (bright = strong)."""
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4))
    arr = np.asarray(values, dtype=float)
    top = np.nanpercentile(arr, 99) if arr.size and np.isfinite(arr).any() else 1.0
    im = ax.imshow(arr, aspect="auto", interpolation="nearest", cmap="magma", vmin=min(0.0, np.nanmin(arr))
                   if arr.size and np.isfinite(arr).any() else 0.0, vmax=top if top > 0 else 1.0)
    ax.set_xlabel("unit")
    ax.set_ylabel("sample")
    if title:
        ax.set_title(title, fontsize=10)
    (fig or ax.figure).colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig or ax.figure


def correlation_heatmap(corr, *, title: str = "", ax=None):
    """Pearson r between units (-1 blue .. 1 red; grey where a unit does not vary)."""
    plt = pyplot()
    fig = None
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.5, 4))
    arr = np.ma.masked_invalid(np.asarray(corr, dtype=float))
    cmap = plt.get_cmap("coolwarm").with_extremes(bad="#d9d9d9")
    im = ax.imshow(arr, cmap=cmap, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_xlabel("unit")
    ax.set_ylabel("unit")
    if title:
        ax.set_title(title, fontsize=10)
    (fig or ax.figure).colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return fig or ax.figure


def health_overview(d: dict):
    """Summary bars across layers, then one sparsity histogram per layer."""
    plt = pyplot()
    layers = d["layers"]
    n = len(layers)
    cols = max(1, min(n, 6))
    hist_rows = -(-n // cols)
    fig = plt.figure(figsize=(max(7.0, 1.9 * cols), 3.2 + 2.1 * hist_rows))
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[1.5] + [1.0] * hist_rows, hspace=0.6, wspace=0.35)
    ax = fig.add_subplot(grid[0, :])
    x = np.arange(n)
    width = 0.8 / (len(_BARS) + 1)
    limits = d.get("thresholds", {})
    for i, (key, label, color, limit) in enumerate(_BARS):
        ax.bar(x + (i - len(_BARS) / 2) * width, [layer[key] for layer in layers], width, label=label, color=color)
    corr = [layer["mean_abs_corr"] if layer["mean_abs_corr"] is not None else 0.0 for layer in layers]
    ax.bar(x + (len(_BARS) / 2) * width, corr, width, label="mean |r|", color="#2980b9")
    for key, color in (("dead_fraction", "#c0392b"), ("mean_abs_corr", "#2980b9")):
        if key in limits:
            ax.axhline(limits[key], color=color, lw=0.8, ls="--")
    ax.set_xticks(x, [f"{layer['name']}\n{'✓' if not layer['issues'] else '!'}" for layer in layers], fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("share / |r|")
    ax.set_title(f"Training health ({d['samples']} samples): {d['verdict']}", fontsize=10)
    ax.legend(fontsize=7, ncol=4, loc="upper left", frameon=False)
    bins = np.linspace(0, 1, 21)
    for i, layer in enumerate(layers):
        hx = fig.add_subplot(grid[1 + i // cols, i % cols])
        hx.hist(layer["unit_sparsity"] or [], bins=bins, alpha=0.7, color="#8e44ad", label="per unit",
                density=True)
        hx.hist(layer["sample_sparsity"] or [], bins=bins, alpha=0.5, color="#16a085", label="per sample",
                density=True)
        hx.set_title(f"{layer['name']}: {layer['verdict']}", fontsize=8,
                     color="black" if not layer["issues"] else "#c0392b")
        hx.set_xlabel("inactive share", fontsize=7)
        hx.tick_params(labelsize=7)
        if i == 0:
            hx.legend(fontsize=6, frameon=False)
    return fig


def layer_figure(layer: dict):
    """Activation matrix and unit-correlation heatmap of one layer (``LayerHealth.to_dict()``)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    if layer.get("values") is not None:
        plot_activation_matrix(layer["values"], title=f"{layer['name']}: activations (mean-pooled)", ax=axes[0])
    if layer.get("corr") is not None:
        r = "-" if layer["mean_abs_corr"] is None else f"{layer['mean_abs_corr']:.2f}"
        correlation_heatmap(layer["corr"], title=f"{layer['name']}: unit correlation (mean |r| {r})", ax=axes[1])
    shown = min(layer["units"], len(layer["corr"]) if layer.get("corr") is not None else layer["units"])
    note = f" (first {shown} of {layer['units']} units)" if shown < layer["units"] else ""
    fig.suptitle(f"{layer['name']}: {layer['verdict']}{note}", fontsize=11)
    fig.tight_layout()
    return fig
