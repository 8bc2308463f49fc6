"""Every newer attribution map of a few images at once, for ``convlens saliency --method gradcam|...`` and the
report: Grad-CAM and Grad-CAM++ (``gradcam.py``), guided Grad-CAM, SmoothGrad of the saliency map and
Integrated Gradients with its completeness error (``attribution.py``), all of the same class per image.

``attribute(model, x, target)`` -> :class:`AttributionResult` (``save``/``load`` as .json + .npz,
``plot("gradcam" | "gradcam++" | "guided-gradcam" | "smoothgrad" | "ig" | "all")``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError

__all__ = ["attribute", "AttributionResult", "VIEWS"]

VIEWS = ("gradcam", "gradcam++", "guided-gradcam", "smoothgrad", "ig")


def attribute(model, x, target=None, *, layer: str | None = None, samples: int = 50, noise: float = 0.15,
              steps: int = 50, labels=None, indices=(), data: str = "") -> "AttributionResult":
    """Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad (``samples`` copies, ``noise``) and Integrated Gradients
    (``steps``, baseline 0) of images ``x`` for class ``target`` (None: each image's predicted class);
    ``layer``: Grad-CAM's (default: the last conv layer's rectified maps); ``labels`` are only recorded."""
    from .attribution import integrated_gradients, resolve_targets, smoothgrad
    from .backprop import _label, _model_and_run, guided_backprop
    from .gradcam import default_layer, grad_cam
    from ..inputs import as_images
    from ..targets import class_names_of

    net, run = _model_and_run(model)
    images = as_images(x, net)
    predicted = resolve_targets(net, images, None)                              # (N,)
    targets = predicted if target is None else resolve_targets(net, images, target)
    path = default_layer(net, images) if layer is None else layer
    cam, cam_pp = grad_cam(net, images, targets, layer=path), grad_cam(net, images, targets, layer=path, plus=True)
    ig = integrated_gradients(net, images, targets, steps=steps)
    as_np = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
    return AttributionResult(
        images=as_np(images), targets=as_np(targets).astype(np.int64), predicted=as_np(predicted).astype(np.int64),
        gradcam=as_np(cam.upsampled), gradcam_pp=as_np(cam_pp.upsampled),
        guided_gradcam=as_np(guided_backprop(net, images, targets) * cam.upsampled[:, None]),
        smoothgrad=as_np(smoothgrad(net, images, targets, n=samples, noise=noise)), ig=as_np(ig.attributions),
        ig_scores=as_np(ig.scores), ig_baseline_scores=as_np(ig.baseline_scores),
        labels=None if labels is None else np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64),
        class_names=tuple(class_names_of(net) or ()), indices=tuple(int(i) for i in indices),
        params={"layer": cam.layer, "samples": samples, "noise": noise, "steps": steps, "ig_method": ig.method,
                "ig_baseline": 0.0},
        model=_label(net, run), data=data)


@dataclass(eq=False, repr=False)
class AttributionResult:
    """The maps of N images (N, C, H, W) in the model's input: ``gradcam`` / ``gradcam_pp`` (N, H, W) upsampled,
    ``guided_gradcam`` and ``ig`` (N, C, H, W) signed, ``smoothgrad`` (N, H, W), all for classes ``targets``;
    ``ig_scores`` / ``ig_baseline_scores`` (N,) the class score at the image and the baseline."""

    images: np.ndarray
    targets: np.ndarray
    predicted: np.ndarray
    gradcam: np.ndarray
    gradcam_pp: np.ndarray
    guided_gradcam: np.ndarray
    smoothgrad: np.ndarray
    ig: np.ndarray
    ig_scores: np.ndarray
    ig_baseline_scores: np.ndarray
    labels: np.ndarray | None = None
    class_names: tuple[str, ...] = ()
    indices: tuple[int, ...] = ()
    params: dict = field(default_factory=dict)
    model: str = ""
    data: str = ""
    schema: str = "convlens.attribution/1"

    @property
    def ig_delta(self) -> np.ndarray:
        """(N,) Integrated Gradients' completeness gap: the attributions' sum - (score - baseline score)."""
        return self.ig.reshape(len(self.ig), -1).sum(1) - (self.ig_scores - self.ig_baseline_scores)

    @property
    def ig_error(self) -> np.ndarray:
        """(N,) |ig_delta| relative to |score - baseline score|."""
        return np.abs(self.ig_delta) / np.maximum(np.abs(self.ig_scores - self.ig_baseline_scores), 1e-12)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> "AttributionResult":
        from ..batch import pick

        return pick(self, i, listed=("indices",))

    def name(self, k: int) -> str:
        return self.class_names[k] if 0 <= k < len(self.class_names) else str(k)

    def __repr__(self) -> str:
        p = self.params
        lines = [f"Grad-CAM / Grad-CAM++ at {p.get('layer')!r}, guided Grad-CAM, SmoothGrad ({p.get('samples')} samples, "
                 f"noise {p.get('noise')}) and Integrated Gradients ({p.get('steps')} steps) of {len(self)} image(s) of "
                 f"{self.data or 'data'} by {self.model or 'model'}"]
        err = self.ig_error
        for i, t in enumerate(self.targets):
            peak = np.unravel_index(int(np.argmax(self.gradcam[i])), self.gradcam[i].shape)
            lines.append(f"  image {self.indices[i] if self.indices else i}: target {self.name(int(t))}, predicted "
                         f"{self.name(int(self.predicted[i]))}, Grad-CAM peak at (row {peak[0]}, col {peak[1]}), IG "
                         f"completeness error {100 * err[i]:.2f}%")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "model": self.model, "data": self.data, "indices": list(self.indices),
                "targets": self.targets.tolist(), "predicted": self.predicted.tolist(),
                "labels": None if self.labels is None else self.labels.tolist(), "class_names": list(self.class_names),
                "target_names": [self.name(int(t)) for t in self.targets], "params": dict(self.params),
                "ig_scores": self.ig_scores.tolist(), "ig_baseline_scores": self.ig_baseline_scores.tolist(),
                "ig_delta": self.ig_delta.tolist(), "ig_completeness_error": self.ig_error.tolist(),
                "image_hw": list(self.images.shape[2:])}

    def save(self, path) -> Path:
        """``path`` (.json) and the same name with .npz (the images and maps), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        atomic_write_npz(path.with_suffix(".npz"), **{k: getattr(self, k) for k in _ARRAYS})
        return atomic_write_json(path.with_suffix(".json"), self.to_dict())

    @classmethod
    def from_parts(cls, d: dict, arrays: dict) -> "AttributionResult":
        labels = d.get("labels")
        return cls(**{k: np.asarray(arrays[k]) for k in _ARRAYS},
                   targets=np.asarray(d["targets"], np.int64), predicted=np.asarray(d["predicted"], np.int64),
                   ig_scores=np.asarray(d["ig_scores"], np.float32),
                   ig_baseline_scores=np.asarray(d["ig_baseline_scores"], np.float32),
                   labels=None if labels is None else np.asarray(labels, np.int64),
                   class_names=tuple(d.get("class_names", ())), indices=tuple(d.get("indices", ())),
                   params=dict(d.get("params", {})), model=d.get("model", ""), data=d.get("data", ""))

    @classmethod
    def load(cls, path) -> "AttributionResult":
        from ..io import read_json, read_npz

        path = Path(path)
        for p in (path.with_suffix(".json"), path.with_suffix(".npz")):
            if not p.is_file():
                raise DataError(f"{p}: no such file; expected a result written by AttributionResult.save")
        return cls.from_parts(read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz")))

    def plot(self, method: str = "all"):
        """``method``'s maps under the images (one of ``VIEWS``), or every map ("all")."""
        from ..plots.attribution import attribution_figure

        return attribution_figure(self, method)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


_ARRAYS = ("images", "gradcam", "gradcam_pp", "guided_gradcam", "smoothgrad", "ig")
