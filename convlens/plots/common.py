"""Shared figure helpers: a headless pyplot, figure -> PNG bytes, image grids."""
from __future__ import annotations

import io

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend (works without a display)."""
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig, *, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes and close it."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return buf.getvalue()


def to_hwc(image) -> np.ndarray:
    """A (C, H, W) tensor/array in [0, 1] -> (H, W, 3) float array for imshow (1 channel -> grey)."""
    arr = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image, dtype=float)
    if arr.ndim == 3:
        arr = np.transpose(arr, (1, 2, 0))  # (H, W, C)
        if arr.shape[2] == 1:
            arr = np.repeat(arr, 3, axis=2)
    return np.clip(arr, 0.0, 1.0)


def image_grid(images, *, titles=None, ncols: int = 8, size: float = 1.3, suptitle: str | None = None,
               title_colors=None):
    """A figure of images (a sequence of (C, H, W) in [0, 1]) in a grid with optional titles."""
    plt = pyplot()
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, -(-n // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * (size + (0.25 if titles else 0))),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(to_hwc(images[i]), interpolation="nearest")
            if titles:
                color = title_colors[i] if title_colors else "black"
                ax.set_title(titles[i], fontsize=8, color=color)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig
