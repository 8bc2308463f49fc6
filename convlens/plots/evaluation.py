"""Evaluation figures: per-class accuracy, the confusion matrix, easiest/hardest class examples."""
from __future__ import annotations

import numpy as np

from .common import image_grid, pyplot


def per_class_accuracy(per_class: dict[str, float | None]):
    plt = pyplot()
    items = sorted(((a if a is not None else 0.0), n) for n, a in per_class.items())
    names = [n for _, n in items]
    accs = [100 * a for a, _ in items]
    fig, ax = plt.subplots(figsize=(7, 0.32 * len(names) + 1.0))
    colors = ["#d9534f" if a < 90 else "#3b6fd8" for a in accs]
    ax.barh(range(len(names)), accs, color=colors)
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names, fontsize=9)
    ax.set_xlim(min(accs + [100]) - 5 if min(accs) > 50 else 0, 100.5)
    ax.set_xlabel("top-1 accuracy (%)")
    for i, a in enumerate(accs):
        ax.text(a, i, f" {a:.1f}", va="center", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def confusion_matrix(confusion, class_names: list[str]):
    """Row-normalized confusion matrix (rows: true class, columns: predicted), counts printed."""
    plt = pyplot()
    conf = np.asarray(confusion, dtype=float)
    rates = conf / np.maximum(conf.sum(1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(0.5 * n + 2.5, 0.5 * n + 2))
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 25:
        for t in range(n):
            for p in range(n):
                if conf[t, p]:
                    ax.text(p, t, f"{int(conf[t, p])}", ha="center", va="center", fontsize=7,
                            color="white" if rates[t, p] > 0.5 else "#1d2433")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    return fig


def class_examples(rows: list[dict], images, *, predictions=None, class_names=None, title: str = ""):
    """One image per listed class (the first example), titled 'class (accuracy)' as in the lecture's
    easiest/hardest classes slide; for misclassified examples the prediction is shown."""
    picked, titles, colors = [], [], []
    for r in rows:
        if not r["examples"]:
            continue
        i = r["examples"][0]
        picked.append(images[i])
        label = f"{r['class']} ({100 * r['accuracy']:.0f})"
        if predictions is not None and class_names is not None and int(predictions[i]) != r["index"]:
            label += f"\n→ {class_names[int(predictions[i])]}"
            colors.append("#c0392b")
        else:
            colors.append("#1d6b2f")
        titles.append(label)
    if not picked:
        return None
    return image_grid(picked, titles=titles, title_colors=colors, ncols=len(picked), size=1.6, suptitle=title)
