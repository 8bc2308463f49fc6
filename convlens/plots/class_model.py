"""Class model figure after Simonyan et al. 2014, Fig. 1 (the lecture's dumbbell / cup / dalmatian grid):
one column per class (or hidden unit), one row per seed, each image captioned with its class and
P(class) -- or the unit and its activation."""
from __future__ import annotations

import numpy as np

from .common import pyplot


def show(ax, image: np.ndarray) -> None:
    """One (H, W, C) image in [0, 1] on ``ax`` (1 channel in grey), without axes."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def class_model_figure(result, *, mode: str = "stretch", size: float = 1.45, title: str | None = None):
    """``result``: the :class:`~convlens.synthesis.optimize.OptimizedImage` of ``convlens.class_model``.
    ``mode="stretch"`` shows each image stretched to its own range (the structure; the paper's display),
    ``"clip"`` the pixels as the model saw them."""
    plt = pyplot()
    info = result.info
    cols = int(info.get("n_targets", len(result)))
    rows = max(1, len(result) // max(1, cols))
    images = result.display(mode=mode)                                             # (N, H, W, C)
    h, w = images.shape[1:3]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size * max(1.0, w / h), rows * (size + 0.32) + 0.3),
                             squeeze=False)
    labels, seeds = info.get("labels", []), info.get("seeds", [])
    for i, ax in enumerate(axes.flat):
        if i >= len(images):
            ax.axis("off")
            continue
        show(ax, images[i])
        label = labels[i] if i < len(labels) else str(i)
        if info.get("kind") == "unit":
            caption = f"{label}\nact {info['activation_after'][i]:.3g}"
            color = "black"
        else:
            p = info["prob_after"][i]
            hit = info["top1"][i] == info["targets"][i]
            caption, color = f"{label}\nP={p:.3f}" if p < 0.9995 else f"{label}\nP>0.999", "black" if hit else "#c0392b"
        ax.set_title(caption, fontsize=8, color=color)
        if i % cols == 0 and seeds:
            ax.set_ylabel(f"seed {seeds[i]}", fontsize=8)
    default = (f"Activation maximization: the image maximizing each of {cols} units of {info.get('layer')}"
               if info.get("kind") == "unit" else "Class model visualization: the image maximizing each class score")
    fig.suptitle(title or f"{default} ({result.steps} steps)", fontsize=10)
    fig.tight_layout()
    return fig
