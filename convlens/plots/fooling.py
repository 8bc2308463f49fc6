"""Fooling images after Nguyen, Yosinski & Clune 2015, Fig. 1 (the lecture's ">99.6% confidences"
slide): one image per class, captioned with the class the model sees and its confidence; one row
per method (gradient ascent from noise, evolution)."""
from __future__ import annotations

from typing import Sequence

from .class_model import show
from .common import pyplot


def percent(p: float) -> str:
    """'99.87%', or '>99.99%' where rounding would print 100.00%."""
    return ">99.99%" if p >= 0.99995 else f"{100 * p:.2f}%"


def fooling_figure(results, *, size: float = 1.45, title: str | None = None):
    """``results``: one :class:`~convlens.synthesis.optimize.OptimizedImage` of ``convlens.fooling_image``
    or a sequence of them (one row each). A caption in red: the image did not reach the confidence goal."""
    plt = pyplot()
    rows: Sequence = [results] if not isinstance(results, (list, tuple)) else list(results)
    cols = max(len(r) for r in rows)
    h, w = rows[0].images.shape[2:]
    fig, axes = plt.subplots(len(rows), cols, figsize=(cols * size * max(1.0, w / h), len(rows) * (size + 0.32) + 0.3),
                             squeeze=False)
    for r, result in enumerate(rows):
        info = result.info
        images = result.display(mode="clip")                                       # (N, H, W, C)
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(images):
                ax.axis("off")
                continue
            show(ax, images[c])
            ok = info["reached"][c]
            ax.set_title(f"{info['labels'][c]}\n{percent(info['confidence'][c])}", fontsize=8,
                         color="black" if ok else "#c0392b")
        how = (f"{info.get('encoding', '')} evolution, {info.get('generations')} gen." if info["method"] == "evolution"
               else f"gradient, {info.get('steps')} steps")
        axes[r, 0].set_ylabel(how, fontsize=8)
    goal = rows[0].info.get("confidence_goal", 0.996)
    fig.suptitle(title or f"Fooling images: classified with ≥ {100 * goal:.1f}% confidence", fontsize=10)
    fig.tight_layout()
    return fig
