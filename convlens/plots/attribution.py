"""Figures for Grad-CAM, guided Grad-CAM, SmoothGrad and Integrated Gradients.

Display, per image: a Grad-CAM map is drawn in the jet colour map over the image (half each), scaled to its
maximum (Selvaraju et al., Fig. 1); an unsigned map (SmoothGrad of the saliency; Integrated Gradients' absolute
attributions summed over colour channels, as Sundararajan et al. show them) in grey, white at its 99th
percentile; a signed map with colour channels (guided Grad-CAM; ``IGResult.plot``) as the projections are
(``plots/backprop.py``: grey at 0, per-image contrast).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .backprop import _np, _row_label, projection_image
from .common import pyplot, to_hwc


def heat_image(image, cam) -> np.ndarray:
    """(H, W, 3): the image with the map ``cam`` (H, W) >= 0 over it in jet, scaled to its maximum."""
    plt = pyplot()
    c = _np(cam).astype(float)
    top = c.max()
    c = c / top if top > 0 else c
    return 0.5 * to_hwc(_np(image)) + 0.5 * plt.get_cmap("jet")(c)[..., :3]


def grey_image(m) -> np.ndarray:
    """(H, W) in [0, 1]: an unsigned map scaled to its 99th percentile (clipped)."""
    m = _np(m).astype(float)
    top = np.percentile(m, 99)
    top = top if top > 0 else (m.max() or 1.0)
    return np.clip(m / top, 0.0, 1.0)


def _grid(images, rows: list[tuple[str, object]], *, titles: Sequence[str] | None = None, size: float = 1.45,
          title: str | None = None):
    """Columns: images; rows: the image, then ``(label, draw(i) -> (H, W) or (H, W, 3) array, or
    (array, cmap))`` for each row."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(n * size + 0.4, (1 + len(rows)) * (size + 0.1) + 0.4),
                             squeeze=False)
    for i in range(n):
        axes[0, i].imshow(to_hwc(_np(images[i])), interpolation="nearest")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
        for r, (_, draw) in enumerate(rows, start=1):
            a = draw(i)
            axes[r, i].imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for r, label in enumerate(["image", *[label for label, _ in rows]]):
        _row_label(axes[r, 0], label)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(h_pad=0.4, w_pad=0.3)
    return fig


def cam_figure(images, upsampled, *, title: str | None = None, titles: Sequence[str] | None = None):
    """The images and their Grad-CAM maps over them."""
    return _grid(images, [("Grad-CAM", lambda i: heat_image(images[i], upsampled[i]))], titles=titles, title=title)


def signed_figure(images, attributions, *, title: str | None = None, titles: Sequence[str] | None = None):
    """The images and signed attributions (N, C, H, W), grey at 0."""
    return _grid(images, [("attribution", lambda i: projection_image(attributions[i]))], titles=titles, title=title)


ROWS = {  # method -> (row label, how one image's map is drawn)
    "gradcam": ("Grad-CAM", lambda r, i: heat_image(r.images[i], r.gradcam[i])),
    "gradcam++": ("Grad-CAM++", lambda r, i: heat_image(r.images[i], r.gradcam_pp[i])),
    "guided-gradcam": ("guided Grad-CAM", lambda r, i: projection_image(r.guided_gradcam[i])),
    "smoothgrad": ("SmoothGrad", lambda r, i: grey_image(r.smoothgrad[i])),
    "ig": ("integrated grad.", lambda r, i: grey_image(np.abs(r.ig[i]).sum(0))),
}


def attribution_figure(result, method: str = "all"):
    """An :class:`~convlens.units.attribution_views.AttributionResult` as one figure: ``method`` one of ``ROWS``
    or "all" (one row each)."""
    from ..errors import expect

    chosen = list(ROWS) if method == "all" else [method] if method in ROWS else None
    if chosen is None:
        raise expect("method", f"one of {', '.join(ROWS)} or 'all'", method)
    titles = [result.name(int(t)) + ("" if int(t) == int(p) else f" (pred. {result.name(int(p))})")
              for t, p in zip(result.targets, result.predicted)]
    rows = [(ROWS[m][0], (lambda draw: lambda i: draw(result, i))(ROWS[m][1])) for m in chosen]
    return _grid(result.images, rows, titles=titles)
