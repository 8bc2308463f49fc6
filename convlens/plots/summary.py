"""The lecture's two observations as one figure: most memory is in early CONV, most params in late FC."""
from __future__ import annotations

from .common import pyplot


def memory_and_params(summary_dict: dict, *, title: str = ""):
    """Bars per layer (conv/pool/fc rows): activations per image and parameters, log scale."""
    plt = pyplot()
    rows = [r for r in summary_dict["layers"] if r["type"] in ("Input", "Conv2d", "MaxPool2d", "AvgPool2d",
                                                                  "Linear", "AdaptiveAvgPool2d")]
    names = [r["name"] for r in rows]
    acts = [max(r["activations"], 1) for r in rows]
    params = [max(r["params"], 0) for r in rows]
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.42 * len(rows)), 5.2), sharex=True)
    axes[0].bar(range(len(rows)), acts, color="#3b6fd8")
    axes[0].set_ylabel("activations / image")
    axes[1].bar(range(len(rows)), [p if p else 0.5 for p in params], color="#e07a3b")
    axes[1].set_ylabel("parameters")
    for ax in axes:
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(range(len(rows)))
    axes[1].set_xticklabels(names, rotation=60, ha="right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig
