"""Any optimized images (class models, unit models, fooling images, inversions) in a row, each under the
number its goal is judged by, in red where it missed."""
from __future__ import annotations

from .class_model import show
from .common import pyplot


def optimized_figure(result, *, mode: str = "stretch", size: float = 1.6, title: str | None = None):
    """``result``: an ``OptimizedImage``. ``mode``: "stretch" (each image to its own range) or "clip"."""
    plt = pyplot()
    images = result.display(mode=mode)                                             # (N, H, W, C)
    goal = result.info.get("goal") or {}
    labels = result.info.get("labels") or [str(i) for i in range(len(images))]
    n = len(images)
    cols = min(n, 8)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.35) + 0.35), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        show(ax, images[i])
        caption, color = str(labels[i]) if i < len(labels) else str(i), "black"
        if goal.get("values"):
            caption += f"\n{goal.get('measure', '')} {goal['values'][i]:.3g}"
            color = "black" if goal["reached"][i] else "#c0392b"
        ax.set_title(caption, fontsize=8, color=color)
    fig.suptitle(title or (goal.get("goal") or result.objective), fontsize=9)
    fig.tight_layout()
    return fig
