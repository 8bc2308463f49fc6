"""Filter visualization and diagnosis: ``filters(model, layer) -> FilterResult``.

The lecture shows first-layer filters as an image grid (Krizhevsky et al., "ImageNet Classification
with Deep Convolutional Neural Networks", NIPS 2012, Fig. 3: each filter min-max normalized on its
own) and then quizzes: *good* filters, or *too noisy*, *too correlated*, *lacking structure*
(M. Ranzato's "Diagnosing: a quiz": "good training: learned filters exhibit structure and are
uncorrelated"). ``diagnose_filters(model)`` makes the quiz a function for every Conv2d layer;
``diagnose_weights(w)`` does it for any (out, in, kh, kw) array.

The measures and verdicts are ``filter_diagnosis.py``'s.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InputError, expect
from ..layers import model_label, user_path
from .filter_diagnosis import THRESHOLDS, FilterDiagnosis, diagnose_weights, diagnosis_table

__all__ = ["filters", "diagnose_filters", "conv_layers", "FilterResult"]


def conv_layers(model: nn.Module) -> list[tuple[str, str, nn.Conv2d]]:
    """(display name, module path, module) of every Conv2d, in registration order."""
    from ..layers import display_names

    shown = display_names(model)
    return [(shown.get(p, p), p, m) for p, m in model.named_modules() if p and is_conv2d(m)]


def is_conv2d(m: nn.Module) -> bool:
    """An ``nn.Conv2d``, or a TorchScript module compiled from one (filters need only its weights, which
    TorchScript keeps)."""
    if isinstance(m, nn.Conv2d):
        return True
    return isinstance(m, torch.jit.ScriptModule) and getattr(m, "original_name", "") == "Conv2d" and \
        getattr(m, "weight", None) is not None and m.weight.dim() == 4


def diagnose_filters(model_or_run, *, thresholds: dict | None = None) -> list[FilterDiagnosis]:
    """The diagnosis of every Conv2d layer of a Run, run directory or nn.Module (weights only, no data)."""
    from ..training.runs import model_and_run

    model, _ = model_and_run(model_or_run)
    convs = _convs_or_raise(model)
    return [diagnose_weights(m.weight, name=n, path=p, thresholds=thresholds) for n, p, m in convs]


def _convs_or_raise(model: nn.Module):
    convs = conv_layers(model)
    if not convs:
        raise InputError(f"model must have a Conv2d layer to show filters; this {model_label(model)} has none")
    return [(n, user_path(model, p), m) for n, p, m in convs]  # paths as the user writes them


# ---- the result ------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class FilterResult:
    """One layer's filters (``weights`` (out, in, kh, kw)) and the diagnosis of every conv layer."""

    layer: str
    path: str
    weights: np.ndarray               # (out, in, kh, kw) float32, a copy
    sees_image: bool                  # the first conv: drawn in RGB (or grey) as in the AlexNet figure
    layers: list[FilterDiagnosis]     # every Conv2d of the model, in order
    model: str = ""
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))
    schema: str = "convlens.filters/1"

    @property
    def diagnosis(self) -> FilterDiagnosis:
        return self[self.path]

    @property
    def verdict(self) -> str:
        return self.diagnosis.verdict

    def __getitem__(self, name: str) -> FilterDiagnosis:
        for d in self.layers:
            if name in (d.name, d.path):
                return d
        raise KeyError(f"{name!r} is not a conv layer here; layers: {', '.join(d.name for d in self.layers)}")

    def __repr__(self) -> str:
        return f"Filters of {self.layer} ({'x'.join(map(str, self.weights.shape))}) in {self.model or 'model'}\n" \
               + diagnosis_table(self.layers)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "layer": self.layer, "path": self.path, "shape": list(self.weights.shape),
                "sees_image": self.sees_image, "model": self.model, "verdict": self.verdict,
                "thresholds": dict(self.thresholds), "layers": [d.to_dict() for d in self.layers]}

    def save(self, path: str | os.PathLike) -> Path:
        """JSON at ``path`` and the weights in ``path`` with suffix ``.npz``."""
        from ..io import atomic_write_json, atomic_write_npz

        atomic_write_npz(Path(path).with_suffix(".npz"), weights=self.weights)
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FilterResult":
        from ..io import read_json, read_npz

        return cls.from_dict(read_json(path), read_npz(Path(path).with_suffix(".npz"))["weights"])

    @classmethod
    def from_dict(cls, d: dict, weights: np.ndarray) -> "FilterResult":
        return cls(d["layer"], d["path"], np.asarray(weights), bool(d["sees_image"]),
                   [FilterDiagnosis.from_dict(x) for x in d["layers"]], d.get("model", ""), dict(d["thresholds"]))

    def plot(self, *, max_filters: int | None = None, max_channels: int = 16):
        """The filter grid with the verdict in the title (``convlens.plots.filters``)."""
        from ..plots.filters import filters_figure

        return filters_figure(self.weights, self.diagnosis.to_dict(), rgb=self.sees_image, max_filters=max_filters,
                              max_channels=max_channels, duplicate_cos=self.thresholds["duplicate_cos"])

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


def filters(model_or_run, layer: str | None = None, *, thresholds: dict | None = None) -> FilterResult:
    """The filters of ``layer`` (default: the first Conv2d; a lecture name such as ``conv1`` or a module
    path) and the diagnosis of every conv layer. ``model_or_run``: a Run, a run directory or an nn.Module.
    Reads the weights only (no data, no forward pass); the model is not modified."""
    from ..layers import resolve
    from ..training.runs import Run, model_and_run

    model, run = model_and_run(model_or_run)
    convs = _convs_or_raise(model)
    if layer is None:
        name, path, module = convs[0]
    else:
        if not isinstance(layer, str):
            raise expect("layer", "a layer name (str) such as 'conv1'", layer)
        path, module = resolve(model, layer)
        path = user_path(model, path)
        if not is_conv2d(module):
            names = ", ".join(n for n, _, _ in convs)
            raise InputError(f"layer must be a Conv2d to show its filters; {layer!r} is a {type(module).__name__}. "
                             f"Conv layers: {names}")
        name = next(n for n, p, _ in convs if p == path)
    diagnoses = [diagnose_weights(m.weight, name=n, path=p, thresholds=thresholds) for n, p, m in convs]
    weights = module.weight.detach().to("cpu", torch.float32).numpy().copy()  # (out, in, kh, kw)
    label = model_label(model)
    if isinstance(run, Run):
        label = (run.manifest.get("arch") or {}).get("name") or str(run.dir or run.path or "run")
    return FilterResult(name, path, weights, path == convs[0][1] and weights.shape[1] in (1, 3), diagnoses,
                        label, {**THRESHOLDS, **(thresholds or {})})
