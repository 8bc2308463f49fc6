"""Linear-probe figure: test accuracy vs depth, one line per classifier and training-set size."""
from __future__ import annotations

import numpy as np

from .common import pyplot

_LABELS = {"svm": "SVM", "softmax": "Softmax"}
_COLORS = {"svm": "#3b6fd8", "softmax": "#d9534f"}


def probe_curves(d: dict, *, ax=None):
    """Accuracy (%) of each layer's probe with ± std error bars, from ``ProbeResult.to_dict()``."""
    plt = pyplot()
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(d["layers"]) + 2.5), 3.8))
    else:
        fig = ax.figure
    mean, std = np.asarray(d["mean"]) * 100, np.asarray(d["std"]) * 100  # (L, K, P)
    x = np.arange(len(d["layers"]))
    styles = ["-", "--", ":", "-."]
    for k, kind in enumerate(d["classifiers"]):
        for p, n in enumerate(d["per_class"]):
            ax.errorbar(x + 0.04 * (k * len(d["per_class"]) + p), mean[:, k, p], yerr=std[:, k, p],
                        linestyle=styles[p % len(styles)], marker="o" if k == 0 else "s", capsize=3,
                        color=_COLORS.get(kind), alpha=0.55 + 0.45 * (p + 1) / len(d["per_class"]),
                        label=f"{_LABELS.get(kind, kind)}, {n}/class")
    ax.axhline(100 * d["chance"], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xticks(x)
    ax.set_xticklabels(d["layers"], rotation=30 if len(x) > 8 else 0, ha="right" if len(x) > 8 else "center")
    ax.set_xlabel("layer (conv/fc outputs read after their ReLU)" if d["tapped"] != d["layers"] else "layer")
    ax.set_ylabel(f"test accuracy (%) on {d['data']}")
    ax.set_ylim(0, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"Linear probes per layer (mean ± std over {d['repeats']} splits)", fontsize=10)
    fig.tight_layout()
    return fig
