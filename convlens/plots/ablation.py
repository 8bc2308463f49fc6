"""Layer-ablation figure: the accuracy lost by each removal, with the parameters it removed."""
from __future__ import annotations

from .common import pyplot


def ablation_bars(d: dict, *, ax=None):
    """Horizontal bars of the accuracy drop (percentage points) per removal set, from ``AblationResult.to_dict()``."""
    plt = pyplot()
    rows = [r for r in d["rows"] if r["removed"]]
    if ax is None:
        fig, ax = plt.subplots(figsize=(6.5, 0.55 * len(rows) + 1.4))
    else:
        fig = ax.figure
    drops = [100 * r["drop"] for r in rows]
    labels = [", ".join(r["removed"]) for r in rows]
    y = range(len(rows))
    ax.barh(y, drops, color=["#d9534f" if v > 0 else "#3b6fd8" for v in drops])
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=9)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    for i, (v, r) in enumerate(zip(drops, rows)):
        ax.text(v, i, f" {v:.1f} pts  (-{r['params_removed']:,} params)", va="center", fontsize=8,
                ha="left" if v >= 0 else "right")
    lo, hi = min(drops + [0.0]), max(drops + [0.0])
    pad = 0.6 * (hi - lo or 1.0)
    ax.set_xlim(lo - (pad if lo < 0 else 0.05 * pad), hi + pad)
    full = d["rows"][0]
    how = "fine-tuned" if d["mode"] == "finetune" else "trained from scratch"
    ax.set_xlabel(f"accuracy drop vs the full network ({100 * full['accuracy']:.1f} %), percentage points")
    ax.set_title(f"Layer ablation: every network {how} for {d['epochs']} epochs", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig
