"""Figures for adversarial examples: the lecture's triptych after Szegedy et al. 2014, Fig. 5 (correct
image | distortion magnified | adversarial image, "ostrich"), and accuracy against the FGSM budget."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import pyplot, to_hwc


def triptych_figure(result, *, images: Sequence[int] | None = None, magnify: float = 10.0, size: float = 1.9,
                    title: str | None = None):
    """One row per image of an :class:`~convlens.synthesis.adversarial.AdversarialResult`: the original
    with its predicted class and probability, the distortion ``x_adv - x`` times ``magnify`` around
    mid-grey (0.5; clipped), with its L2 / L∞ size, and the adversarial image with the new prediction
    (red when the attack failed)."""
    plt = pyplot()
    rows = list(range(len(result))) if images is None else [int(i) for i in images]
    orig, adv = result.display(result.original[rows]), result.display(result.adversarial[rows])  # (R, C, H, W)
    dist = np.clip(0.5 + magnify * (adv - orig), 0.0, 1.0)
    pb, pa, ok = result.pred_before[rows], result.pred_after[rows], result.success[rows]
    fig, axes = plt.subplots(len(rows), 3, figsize=(3 * size + 0.3, len(rows) * (size + 0.75)), squeeze=False)
    for r, i in enumerate(rows):
        a, b = pb[r], pa[r]
        correct = result.label_source == "predicted" or a == result.labels[i]
        axes[r, 0].imshow(to_hwc(orig[r]), interpolation="nearest")
        axes[r, 0].set_title(f"{result.name(a)} {100 * result.probs_before[i, a]:.1f}%"
                             + ("" if correct else f"\n(true: {result.name(result.labels[i])})"), fontsize=8,
                             color="black" if correct else "#b00")
        axes[r, 1].imshow(to_hwc(dist[r]), interpolation="nearest")
        axes[r, 1].set_title(f"distortion ×{magnify:g}\nL2 {result.l2[i]:.3g}, L∞ {result.linf[i]:.3g}", fontsize=8)
        axes[r, 2].imshow(to_hwc(adv[r]), interpolation="nearest")
        after = f"{result.name(b)} {100 * result.probs_after[i, b]:.1f}%"
        axes[r, 2].set_title(after + ("" if ok[r] else "\n(failed)"),
                             fontsize=8, color="black" if ok[r] else "#b00")
        for ax in axes[r]:
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, label in zip(axes[-1], ("correct", "+ distort", "= adversarial")):
        ax.set_xlabel(label, fontsize=9)
    targets = sorted({result.name(t) for t in result.target}) if result.target is not None else []
    goal = "→ " + ", ".join(targets) if targets else "untargeted"
    fig.suptitle(title or f"{result.method} {goal}", fontsize=10)
    fig.tight_layout()
    return fig


def sweep_figure(sweeps: Sequence[dict], *, ax=None, box_255: bool = True):
    """Accuracy on untargeted adversarial images against the L∞ budget eps, one line per method
    (``FGSMSweep.to_dict()``); eps on the x axis in /255 units when ``box_255``."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.6, 3.2))
    else:
        fig = ax.figure
    for d in sweeps:
        eps = np.asarray(d["eps"], dtype=float) * (255 if box_255 else 1)
        ax.plot(eps, 100 * np.asarray(d["accuracy"]), "-o", markersize=4, label=f"{d['method']} (n={d['n']})")
    ax.set_xlabel("eps (L∞, /255)" if box_255 else "eps (L∞)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
