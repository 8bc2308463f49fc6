"""Saliency-seeded segmentation: Simonyan, Vedaldi & Zisserman 2014, Sec. 3.1 ("weakly supervised
object localisation", https://arxiv.org/abs/1312.6034), the lecture's "Graph-cut based Segmentation".

A class saliency map (``convlens.saliency``) is computed from a classifier that never saw a mask;
it still highlights the object, though only its most discriminative parts. Simonyan et al. spread it
to the whole object with GraphCut colour segmentation (Boykov & Jolly 2001), done here with OpenCV's
GrabCut (Rother et al. 2004; the same graph cut with Gaussian-mixture colour models):

* the **foreground** colour model (a 5-component GMM) is estimated from the pixels whose saliency
  is above the ``fg_quantile`` = 95% quantile of the image's saliency distribution, the
  **background** model from those below the ``bg_quantile`` = 30% quantile (Simonyan's thresholds),
  and from those pixels only;
* one graph cut labels every pixel with these models (Simonyan's GraphCut step). The seeds are
  *not* hard constraints: a salient background pixel may end up background. ``iterations - 1``
  more GrabCut rounds then re-fit the models to the current labelling and cut again (5 in all by
  default; ``iterations=1`` is the paper's single cut);
* the mask is the **largest connected component** of the foreground (8-connectivity), as in the
  paper (``largest_component=False`` keeps every component).

GrabCut needs an 8-bit colour image: images in [0, 1] are scaled to 0-255 (other ranges are
min-max scaled per image) and a 1-channel image is repeated to 3 grey channels. An image whose
saliency is constant (95% quantile = 30% quantile) has nothing to seed from and gets an empty mask;
ties at a quantile (flat regions) count as seeds. Each colour model needs at least 5 seed pixels, so
images below about 10x10 pixels raise InputError. On the demo shapesnet (``shapes`` test images,
where the true masks are known) the masks reach a mean IoU of 0.94 with the true masks (200 images);
seeding with hard constraints instead (the salient pixels forced to foreground) gives about 0.41.

``explain(model, x, target)`` computes every backprop view of a few images at once -- saliency, its
mask, deconvnet and guided backprop, IoU where true masks are given -- as a :class:`BackpropResult`
(``save``/``load`` as .json + .npz, ``plot("saliency" | "deconvnet" | "guided" | "projections")``);
``convlens saliency`` and the report's saliency section use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, expect

__all__ = ["segment", "grabcut_from_saliency", "iou", "explain", "BackpropResult"]

_COMPONENTS = 5  # Gaussians per colour model in OpenCV's GrabCut


def segment(model, x, target=None, *, fg_quantile: float = 0.95, bg_quantile: float = 0.30,
            iterations: int = 5, largest_component: bool = True) -> torch.Tensor:
    """Foreground masks (N, H, W) bool: GrabCut seeded by the class saliency of ``target``.

    ``model``: an nn.Module, a Run or a run directory; ``x``: (N, C, H, W) images (a Run's pixel
    model takes [0, 1]); ``target``: the class (index or name, or one per image; None: the
    predicted class). Quantiles and iterations: see the module docstring. Returned on the CPU.
    """
    from .backprop import saliency

    _check(fg_quantile, bg_quantile, iterations)
    maps = saliency(model, x, target)                                  # (N, H, W)
    images = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    images = images.unsqueeze(0) if images.dim() == 3 else images      # (N, C, H, W)
    return torch.from_numpy(np.stack([
        grabcut_from_saliency(img, sal, fg_quantile=fg_quantile, bg_quantile=bg_quantile, iterations=iterations,
                              largest_component=largest_component)
        for img, sal in zip(images, maps)]))


def grabcut_from_saliency(image, saliency_map, *, fg_quantile: float = 0.95, bg_quantile: float = 0.30,
                          iterations: int = 5, largest_component: bool = True) -> np.ndarray:
    """One image (C, H, W) and its saliency map (H, W) -> the foreground mask (H, W) bool."""
    import cv2

    _check(fg_quantile, bg_quantile, iterations)
    sal = _numpy(saliency_map).astype(np.float64)
    img = _uint8_hwc(_numpy(image))
    if sal.shape != img.shape[:2]:
        raise expect("saliency_map", f"an (H, W) map of the image's size {img.shape[:2]}", sal.shape)
    hi, lo = np.quantile(sal, fg_quantile), np.quantile(sal, bg_quantile)
    fg, bg = sal > hi, sal < lo
    fg, bg = fg if fg.any() else sal >= hi, bg if bg.any() else sal <= lo  # ties at the quantile (flat regions)
    if not hi > lo:
        return np.zeros(sal.shape, bool)  # a flat map: nothing to seed from
    if min(fg.sum(), bg.sum()) < _COMPONENTS:
        raise InputError(f"image {sal.shape[0]}x{sal.shape[1]} is too small to seed GrabCut: {int(fg.sum())} "
                         f"foreground and {int(bg.sum())} background seed pixels, each colour model needs at least "
                         f"{_COMPONENTS}; use a larger image or wider quantiles")
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.setRNGSeed(0)  # GrabCut's k-means initialization: the same mask every time
    seeds = np.ascontiguousarray(np.concatenate([img[fg], img[bg]])[None])                 # (1, K, 3)
    seed_labels = np.concatenate([np.full(int(fg.sum()), cv2.GC_FGD, np.uint8),
                                  np.full(int(bg.sum()), cv2.GC_BGD, np.uint8)])[None]   # (1, K)
    cv2.grabCut(seeds, seed_labels, None, bgd, fgd, 0, cv2.GC_INIT_WITH_MASK)  # the models, from seeds only
    labels = np.full(sal.shape, cv2.GC_PR_BGD, np.uint8)                     # (H, W) every pixel free
    cv2.grabCut(img, labels, None, bgd, fgd, 1, cv2.GC_EVAL_FREEZE_MODEL)    # one cut with those models
    if iterations > 1 and 0 < np.isin(labels, (cv2.GC_FGD, cv2.GC_PR_FGD)).sum() < labels.size:
        cv2.grabCut(img, labels, None, bgd, fgd, int(iterations) - 1, cv2.GC_EVAL)  # GrabCut refinement
    mask = (labels == cv2.GC_FGD) | (labels == cv2.GC_PR_FGD)
    if largest_component and mask.any():
        count, comp, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        mask = comp == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return mask


def iou(pred, true) -> np.ndarray:
    """Intersection over union of boolean masks (..., H, W) -> (...,); 1 where both are empty."""
    p, t = _numpy(pred).astype(bool), _numpy(true).astype(bool)
    if p.shape != t.shape:
        raise expect("true", f"masks of the predicted masks' shape {p.shape}", t.shape)
    inter = (p & t).sum((-2, -1))
    union = (p | t).sum((-2, -1))
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _check(fg_quantile, bg_quantile, iterations) -> None:
    for name, q in (("fg_quantile", fg_quantile), ("bg_quantile", bg_quantile)):
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise expect(name, "a quantile in [0, 1]", q)
    if not bg_quantile < fg_quantile:
        raise InputError(f"bg_quantile must be below fg_quantile; got bg_quantile={bg_quantile}, "
                         f"fg_quantile={fg_quantile}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise expect("iterations", "a positive int", iterations)


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _uint8_hwc(image: np.ndarray) -> np.ndarray:
    """(C, H, W) with C in {1, 3} -> (H, W, 3) uint8, contiguous (what cv2.grabCut takes)."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise expect("image", "a (C, H, W) image with 1 or 3 channels", f"shape {image.shape}")
    img = image.astype(np.float64)
    lo, hi = float(img.min()), float(img.max())
    if lo < 0.0 or hi > 1.0:  # not [0, 1] pixels: stretch this image's range
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    img = np.transpose(np.round(img * 255.0).astype(np.uint8), (1, 2, 0))  # (H, W, C)
    return np.ascontiguousarray(np.repeat(img, 3, axis=2) if img.shape[2] == 1 else img)


# ---- every view of a few images at once (what the CLI saves and the report shows) --------------------------

@dataclass(eq=False, repr=False)
class BackpropResult:
    """Saliency, its GrabCut mask, deconvnet and guided-backprop projections of the same images.

    ``images`` (N, C, H, W) in [0, 1]; ``saliency`` (N, H, W); ``deconvnet``/``guided`` (N, C, H, W),
    all from the class score ``targets`` (N,); ``masks`` (N, H, W) bool from :func:`segment`;
    ``true_masks`` and ``iou`` (N,) where the true object masks are known (``shapes``), else None.
    """

    images: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray
    saliency: np.ndarray
    deconvnet: np.ndarray
    guided: np.ndarray
    masks: np.ndarray
    labels: np.ndarray | None = None
    true_masks: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    segment_params: dict = field(default_factory=dict)
    model: str = ""
    data: str = ""
    schema: str = "convlens.backprop/1"

    @property
    def iou(self) -> np.ndarray | None:
        return None if self.true_masks is None else iou(self.masks, self.true_masks)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> "BackpropResult":
        """Image ``i``'s views as a result of their own (``result[i].plot()``)."""
        from ..batch import pick

        return pick(self, i, listed=("indices",))

    def name(self, k: int) -> str:
        return self.class_names[k] if 0 <= k < len(self.class_names) else str(k)

    def __repr__(self) -> str:
        lines = [f"Backprop views of {len(self.images)} image(s) of {self.data or 'data'} by {self.model or 'model'} "
                 "(saliency + GrabCut mask, deconvnet, guided backprop)"]
        ious = self.iou
        for i, t in enumerate(self.targets):
            line = f"  image {self.indices[i] if self.indices else i}: target {self.name(int(t))}, " \
                   f"predicted {self.name(int(self.predicted[i]))}, mask {int(self.masks[i].sum())} px"
            lines.append(line + (f", IoU {ious[i]:.3f}" if ious is not None else ""))
        if ious is not None:
            lines.append(f"mean IoU with the true masks: {ious.mean():.3f}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        ious = self.iou
        return {"schema": self.schema, "model": self.model, "data": self.data, "indices": list(self.indices),
                "targets": self.targets.tolist(), "predicted": self.predicted.tolist(),
                "labels": None if self.labels is None else self.labels.tolist(),
                "class_names": list(self.class_names), "target_names": [self.name(int(t)) for t in self.targets],
                "mask_pixels": self.masks.sum((1, 2)).tolist(),
                "iou": None if ious is None else ious.tolist(),
                "mean_iou": None if ious is None else float(ious.mean()),
                "segment": dict(self.segment_params), "image_hw": list(self.images.shape[2:])}

    def save(self, path) -> Path:
        """``path`` (.json) and the same name with .npz (the images and maps), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        arrays = {k: getattr(self, k) for k in _ARRAYS if getattr(self, k) is not None}
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        return atomic_write_json(path.with_suffix(".json"), self.to_dict())

    @classmethod
    def from_parts(cls, d: dict, arrays: dict) -> "BackpropResult":
        labels = d.get("labels")
        return cls(**{k: np.asarray(arrays[k]) for k in _ARRAYS if k in arrays},
                   targets=np.asarray(d["targets"], dtype=np.int64), predicted=np.asarray(d["predicted"], np.int64),
                   labels=None if labels is None else np.asarray(labels, dtype=np.int64),
                   class_names=tuple(d.get("class_names", ())), indices=tuple(d.get("indices", ())),
                   segment_params=dict(d.get("segment", {})), model=d.get("model", ""), data=d.get("data", ""))

    @classmethod
    def load(cls, path) -> "BackpropResult":
        from ..errors import DataError
        from ..io import read_json, read_npz

        path = Path(path)
        for p in (path.with_suffix(".json"), path.with_suffix(".npz")):
            if not p.is_file():
                raise DataError(f"{p}: no such file; expected a result written by BackpropResult.save")
        return cls.from_parts(read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz")))

    def plot(self, method: str = "saliency"):
        """``"saliency"``: image | saliency | GrabCut mask | true mask (with IoU), Simonyan's Fig. 3;
        ``"deconvnet"``/``"guided"``/``"projections"``: the projections, normalized per image."""
        from ..plots.backprop import result_figure

        return result_figure(self, method)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


_ARRAYS = ("images", "saliency", "deconvnet", "guided", "masks", "true_masks")


def explain(model, x, target=None, *, labels=None, true_masks=None, fg_quantile: float = 0.95,
            bg_quantile: float = 0.30, iterations: int = 5, indices=(), data: str = "") -> BackpropResult:
    """Every backprop view of images ``x`` (N, C, H, W) at once: saliency and its GrabCut mask,
    deconvnet and guided backprop, all from the class score ``target`` (None: the predicted class).
    ``true_masks`` (N, H, W) give each mask's IoU; ``labels`` are only recorded."""
    from ..taps import eval_mode
    from ..inputs import as_images, forward_errors
    from .backprop import (_label, _model_and_run, deconvnet, guided_backprop, saliency)
    from ..targets import class_names_of, target_indices

    net, run = _model_and_run(model)
    images = as_images(x, net)
    with torch.no_grad(), eval_mode(net), forward_errors(net, images):
        predicted = net(images).argmax(1)                                       # (N,)
    targets = predicted if target is None else target_indices(target, len(images), class_names=class_names_of(net))
    sal = saliency(net, images, targets)                                        # (N, H, W)
    params = {"fg_quantile": fg_quantile, "bg_quantile": bg_quantile, "iterations": iterations}
    masks = np.stack([grabcut_from_saliency(img, s, **params) for img, s in zip(images, sal)])  # (N, H, W)
    as_np = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    return BackpropResult(
        images=as_np(images), targets=as_np(targets).astype(np.int64), predicted=as_np(predicted).astype(np.int64),
        saliency=as_np(sal), deconvnet=as_np(deconvnet(net, images, targets)),
        guided=as_np(guided_backprop(net, images, targets)), masks=masks,
        labels=None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64),
        true_masks=None if true_masks is None else np.asarray(torch.as_tensor(true_masks).cpu(), dtype=bool),
        class_names=tuple(class_names_of(net) or ()), indices=tuple(int(i) for i in indices),
        segment_params=params, model=_label(net, run), data=data)
