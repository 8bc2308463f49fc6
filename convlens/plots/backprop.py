"""Figures for the backprop visualizations: Simonyan et al.'s saliency + GrabCut segmentation
(2014, Fig. 3), deconvnet / guided-backprop projections, and Zeiler & Fergus's "top-9 patches beside
their deconvnet projections" (2014, Fig. 2).

Every map is normalized per image for display: a saliency map to [0, its max] in grey (white: most
salient), a projection (signed, per colour channel) to grey at 0 with ``p / s`` added, ``s`` the
99.5th percentile of ``|p|`` of that image (so a few extreme pixels do not wash out the rest).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import pyplot, to_hwc

_METHOD_TITLES = {"saliency": "saliency", "deconvnet": "deconvnet", "guided": "guided backprop"}


def _np(a) -> np.ndarray:
    return a.detach().cpu().float().numpy() if hasattr(a, "detach") else np.asarray(a, dtype=float)


def projection_image(p) -> np.ndarray:
    """A signed projection (C, H, W) -> (H, W, 3) in [0, 1]: 0.5 grey at zero, per-image contrast."""
    p = _np(p).astype(float)
    s = np.percentile(np.abs(p), 99.5)
    s = s if s > 0 else (np.abs(p).max() or 1.0)
    return to_hwc(np.clip(0.5 + 0.5 * p / s, 0.0, 1.0))


def saliency_image(s) -> np.ndarray:
    """A saliency map (H, W) -> (H, W) in [0, 1] (divided by its max)."""
    s = _np(s).astype(float)
    top = s.max()
    return s / top if top > 0 else s


def masked_image(image, mask) -> np.ndarray:
    """The image with the pixels outside ``mask`` dimmed to a quarter (H, W, 3)."""
    img = to_hwc(image)
    m = _np(mask).astype(bool)[..., None]
    return np.where(m, img, 0.25 * img + 0.75 * 0.15)


def _row_label(ax, text: str) -> None:
    ax.text(-0.08, 0.5, text, transform=ax.transAxes, rotation=90, ha="right", va="center", fontsize=9)


def saliency_figure(images, saliency, masks=None, true_masks=None, *, ious=None,
                    titles: Sequence[str] | None = None, size: float = 1.45):
    """Columns: images; rows: the image, its class saliency map, the GrabCut mask (with its IoU when
    ``ious`` are given) and the true mask when known."""
    plt = pyplot()
    n = len(images)
    rows = [("image", lambda ax, i: ax.imshow(to_hwc(_np(images[i])), interpolation="nearest")),
            ("saliency", lambda ax, i: ax.imshow(saliency_image(saliency[i]), cmap="gray", vmin=0, vmax=1,
                                                 interpolation="nearest"))]
    if masks is not None:
        rows.append(("GrabCut mask", lambda ax, i: ax.imshow(masked_image(_np(images[i]), masks[i]),
                                                             interpolation="nearest")))
    if true_masks is not None:
        rows.append(("true mask", lambda ax, i: ax.imshow(masked_image(_np(images[i]), true_masks[i]),
                                                          interpolation="nearest")))
    fig, axes = plt.subplots(len(rows), n, figsize=(n * size + 0.4, len(rows) * (size + 0.1) + 0.3), squeeze=False)
    for r, (label, draw) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            draw(ax, i)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0 and titles is not None:
                ax.set_title(titles[i], fontsize=8)
            if label == "GrabCut mask" and ious is not None:
                ax.text(0.03, 0.97, f"IoU {float(ious[i]):.2f}", transform=ax.transAxes, ha="left", va="top",
                        fontsize=7, bbox={"facecolor": "white", "alpha": 0.8, "pad": 1.5, "linewidth": 0})
        _row_label(axes[r, 0], label)
    fig.tight_layout(h_pad=0.4, w_pad=0.3)
    return fig


def projection_figure(images, projections: dict, *, titles: Sequence[str] | None = None, size: float = 1.45):
    """Columns: images; rows: the image, then each named projection (N, C, H, W), normalized per image."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(1 + len(projections), n, figsize=(n * size + 0.4, (1 + len(projections)) * (size + 0.1)
                                                              + 0.3), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(to_hwc(_np(images[i])), interpolation="nearest")
        if titles is not None:
            axes[0, i].set_title(titles[i], fontsize=8)
        for r, p in enumerate(projections.values(), start=1):
            axes[r, i].imshow(projection_image(p[i]), interpolation="nearest")
    for ax in axes.flat:
        ax.set_xticks([]), ax.set_yticks([])
    for r, label in enumerate(["image", *projections], start=0):
        _row_label(axes[r, 0], _METHOD_TITLES.get(label, label))
    fig.tight_layout(h_pad=0.4, w_pad=0.3)
    return fig


def result_figure(result, method: str = "saliency"):
    """A :class:`~convlens.units.segment.BackpropResult` as one figure: ``method`` "saliency"
    (with the GrabCut and true masks), "deconvnet", "guided", or "projections" (both)."""
    from ..errors import expect

    titles = [f"{result.name(int(t))}" + ("" if int(t) == int(p) else f" (pred. {result.name(int(p))})")
              for t, p in zip(result.targets, result.predicted)]
    if method == "saliency":
        return saliency_figure(result.images, result.saliency, result.masks, result.true_masks, ious=result.iou,
                               titles=titles)
    chosen = {"deconvnet": ["deconvnet"], "guided": ["guided"], "projections": ["deconvnet", "guided"]}.get(method)
    if chosen is None:
        raise expect("method", "'saliency', 'deconvnet', 'guided' or 'projections'", method)
    return projection_figure(result.images, {m: getattr(result, m) for m in chosen}, titles=titles)


def deconv_top_figure(rows: Sequence[tuple[str, Sequence[tuple[int, Sequence, Sequence]]]], *, k: int,
                      rule: str = "deconvnet", size: float = 1.7):
    """Zeiler & Fergus 2014, Fig. 2: per unit, the deconvnet projections of its top-k images from that
    unit (left, each normalized on its own) beside the image patches themselves (right). ``rows``: one
    per layer, ``(layer, [(unit, projections, patches), ...])``, the unit's projections
    (:func:`~convlens.units.backprop.top_projections`) and patches (``TopPatches.crops``) cropped with
    the same receptive-field boxes, (C, h, w) each, best first; ``k`` cells per mosaic."""
    from .patches import mosaic

    plt = pyplot()
    drawn = []
    for name, units in rows:
        cells = []
        for u, projections, patches in units:
            shown = [np.transpose(projection_image(p), (2, 0, 1)) if _np(p).size else p for p in projections]
            left, right = mosaic(shown, k), mosaic(patches, k)                 # (H, W, 3) each
            h = max(left.shape[0], right.shape[0])
            gap = np.ones((h, max(2, left.shape[1] // 10), 3))
            cells.append((int(u), np.concatenate([_pad_to(left, h), gap, _pad_to(right, h)], axis=1)))
        drawn.append((name, cells))
    ncols = max([len(c) for _, c in drawn] + [1])
    fig, axes = plt.subplots(len(drawn), ncols, figsize=(ncols * size * 2.1 + 0.5, len(drawn) * (size + 0.35) + 0.5),
                             squeeze=False)
    for r, (name, cells) in enumerate(drawn):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(cells):
                ax.imshow(cells[c][1], interpolation="nearest")
                ax.set_title(f"{name} unit {cells[c][0]}", fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=10)
    method = _METHOD_TITLES.get(rule, rule)
    fig.suptitle(f"Top-{k} patches (right) and their {method} projections from the unit (left)", fontsize=10)
    fig.tight_layout()
    return fig


def _pad_to(image: np.ndarray, h: int) -> np.ndarray:
    if image.shape[0] == h:
        return image
    return np.concatenate([image, np.ones((h - image.shape[0], *image.shape[1:]))], axis=0)
