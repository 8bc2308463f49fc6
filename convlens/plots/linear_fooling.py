"""Figures for fooling a linear classifier: the nudged input, and the nudge needed vs input dimension."""
from __future__ import annotations

import numpy as np

from .common import pyplot


def fooling_bars(d: dict, *, ax=None):
    """Bars of x and the adversarial x per dimension (``LinearFooling.to_dict()``), titled with
    P(class 1) before and after; the sign of each weight is marked under its dimension."""
    plt = pyplot()
    x, x_adv, w = (np.asarray(d[k], dtype=float) for k in ("x", "x_adv", "w"))
    n = min(len(x), 40)
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * n + 1.5), 3.0))
    else:
        fig = ax.figure
    pos = np.arange(n)
    ax.bar(pos - 0.2, x[:n], width=0.4, color="#8a94a6", label="x")
    ax.bar(pos + 0.2, x_adv[:n], width=0.4, color="#d9534f", label="adversarial x")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(pos)
    ax.set_xticklabels(["+" if v > 0 else "−" if v < 0 else "0" for v in w[:n]], fontsize=9)
    ax.set_xlabel("dimension (tick: sign of its weight)" + (f"; first {n} of {len(x)}" if len(x) > n else ""))
    ax.set_title(f"P(class 1): {d['prob_before']:.4f} → {d['prob_after']:.4f}   "
                 f"(score {d['score_before']:.3g} → {d['score_after']:.3g}, eps = {d['eps']:g})", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def eps_vs_dimension_plot(d: dict, *, ax=None):
    """Median minimal flipping eps vs input dimension (log-log), with the 25-75 % band of the test
    images and, for reference, a 1/sqrt(D) line through the first point (``EpsVsDimension.to_dict()``)."""
    plt = pyplot()
    dims = np.asarray(d["dims"], dtype=float)
    eps = [np.asarray(e, dtype=float) for e in d["eps"]]
    med = np.array([np.median(e) for e in eps])
    lo = np.array([np.quantile(e, 0.25) for e in eps])
    hi = np.array([np.quantile(e, 0.75) for e in eps])
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.2, 3.6))
    else:
        fig = ax.figure
    ax.fill_between(dims, lo, hi, color="#3b6fd8", alpha=0.18, linewidth=0, label="25–75% of test images")
    ax.plot(dims, med, "o-", color="#3b6fd8", label="median")
    ax.plot(dims, med[0] * np.sqrt(dims[0] / dims), "--", color="#8a94a6", linewidth=1, label="∝ 1/√D (reference)")
    for s, x, y in zip(d["sizes"], dims, med):
        ax.annotate(f"{s}x{s}", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("input dimension D (pixels × channels)")
    ax.set_ylabel("smallest flipping nudge per pixel")
    ax.set_title(f"{d['classes'][0]} vs {d['classes'][1]}: nudge needed vs dimension", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return fig
