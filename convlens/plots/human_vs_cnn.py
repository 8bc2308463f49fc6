"""CNN vs Human figure: the 2x2 table of the lecture's slide, both errors with their 95 % intervals, and the
time per image. Drawn from ``HumanVsCNN.to_dict()``."""
from __future__ import annotations

import numpy as np

from .common import pyplot

_CELL_TEXT = (("both right", "only the CNN wrong"), ("only the human wrong", "both wrong"))


def human_vs_cnn_figure(d: dict):
    """Three panels: the top-5 2x2 table (rows human right/wrong, columns CNN right/wrong), top-1 and top-5
    error of human and CNN with Wilson intervals, and the histogram of seconds per image."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1, 1.1, 1.3]})
    t = d["table"]
    counts = np.array([[t["both_correct"], t["human_only_correct"]], [t["cnn_only_correct"], t["both_wrong"]]])
    ax = axes[0]
    ax.imshow(counts, cmap="Blues", vmin=0, vmax=max(1, counts.max()))
    for r in range(2):
        for c in range(2):
            dark = counts[r, c] > 0.6 * max(1, counts.max())
            ax.text(c, r, f"{counts[r, c]:,}", ha="center", va="center", fontsize=16,
                    color="white" if dark else "#1d2433", fontweight="bold")
            ax.text(c, r + 0.3, _CELL_TEXT[r][c], ha="center", va="center", fontsize=8,
                    color="white" if dark else "#5b6670")
    ax.set_xticks([0, 1], ["CNN right", "CNN wrong"])
    ax.set_yticks([0, 1], ["human right", "human wrong"])
    ax.set_title(f"top-5, {d['n']:,} images (McNemar p = {d['mcnemar_p']:.3g})", fontsize=10)

    ax = axes[1]
    x = np.arange(2)
    for i, (who, color) in enumerate((("human", "#e07b39"), ("cnn", "#3b6fd8"))):
        errs = [100 * (d[who]["top1_error"] if d[who]["top1_error"] is not None else np.nan),
                100 * (d[who]["top5_error"] if d[who]["top5_error"] is not None else np.nan)]
        cis = [d[who]["top1_ci"], d[who]["top5_ci"]]
        lo = [max(0.0, e - 100 * (ci[0] if ci[0] is not None else np.nan)) for e, ci in zip(errs, cis)]
        hi = [max(0.0, 100 * (ci[1] if ci[1] is not None else np.nan) - e) for e, ci in zip(errs, cis)]
        ax.bar(x + (i - 0.5) * 0.38, errs, 0.36, yerr=[lo, hi], capsize=4, color=color,
               label="human" if who == "human" else "CNN")
        for xi, e in zip(x + (i - 0.5) * 0.38, errs):
            if np.isfinite(e):
                ax.text(xi, e / 2, f"{e:.1f}", ha="center", va="center", fontsize=8, color="white")
    ax.set_xticks(x, ["top-1 error", "top-5 error"])
    ax.set_ylabel("error (%), 95% Wilson interval")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    kappa = d.get("kappa")
    ax.set_title("error" + (f" (error consistency kappa = {kappa:.2f})" if kappa is not None and
                            np.isfinite(kappa) else ""), fontsize=10)

    ax = axes[2]
    s = d["seconds"]
    if s["counts"]:
        edges = np.asarray(s["edges"])
        ax.bar(edges[:-1], s["counts"], np.diff(edges), align="edge", color="#6b8e23", edgecolor="white")
        ax.axvline(s["median"], color="#1d2433", linestyle="--", linewidth=1)
        ax.set_title(f"seconds per image (median {s['median']:.1f} s)", fontsize=10)
    else:
        ax.text(0.5, 0.5, "not timed", ha="center", va="center", transform=ax.transAxes)
        ax.set_title("seconds per image", fontsize=10)
    ax.set_xlabel("seconds")
    ax.set_ylabel("images")
    fig.tight_layout()
    return fig
