"""convlens: understand and visualize convolutional neural networks.

A flat public API over small private modules (``from convlens import summary, parse``); names
are imported on first use so that ``import convlens`` stays light.
"""
from __future__ import annotations

import importlib

from .errors import (
    ConvLensError,
    DataError,
    InputError,
    LayerNotFoundError,
    RunError,
    ShapeError,
    SpecError,
    UnknownModelError,
)

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # architecture
    "parse": "convlens.arch.grammar",
    "describe": "convlens.arch.grammar",
    "GrammarNet": "convlens.arch.grammar",
    "create": "convlens.arch.zoo",
    "list_models": "convlens.arch.zoo",
    "summary": "convlens.arch.summary",
    "Summary": "convlens.arch.summary",
    "receptive_field": "convlens.arch.receptive",
    "resolve_layer": "convlens.layers",
    # training and evaluation
    "gradcheck": "convlens.training.gradcheck",
    "train": "convlens.training.fit",
    "load_run": "convlens.training.runs",
    "evaluate": "convlens.training.evaluate",
    # insight
    "capture": "convlens.taps",
    "Activations": "convlens.taps",
    "features": "convlens.insight.features",
    "Features": "convlens.insight.features",
    "health": "convlens.insight.health",
    "HealthReport": "convlens.insight.health",
    "probe": "convlens.insight.probes", "ProbeResult": "convlens.insight.probes",
    "ablate": "convlens.insight.ablation", "AblationResult": "convlens.insight.ablation",
    "remove_layers": "convlens.insight.ablation",
    "invariance": "convlens.insight.invariance", "InvarianceResult": "convlens.insight.invariance",
    "fool_linear": "convlens.insight.linear_fooling", "LinearFooling": "convlens.insight.linear_fooling",
    "eps_vs_dimension": "convlens.insight.linear_fooling", "EpsVsDimension": "convlens.insight.linear_fooling",
    "filters": "convlens.visualize.filters", "FilterResult": "convlens.visualize.filters",
    "diagnose_filters": "convlens.visualize.filters", "diagnose_weights": "convlens.visualize.filters",
    "FilterDiagnosis": "convlens.visualize.filters",
    "occlusion": "convlens.visualize.occlusion", "OcclusionMap": "convlens.visualize.occlusion",
    "saliency": "convlens.visualize.backprop", "deconvnet": "convlens.visualize.backprop",
    "guided_backprop": "convlens.visualize.backprop", "segment": "convlens.visualize.segment",
    "top_patches": "convlens.visualize.patches", "TopPatches": "convlens.visualize.patches",
    # image optimization (class models, inversion, adversarial, fooling)
    "optimize": "convlens.visualize.optimize", "OptimizedImage": "convlens.visualize.optimize",
    "class_model": "convlens.visualize.class_model", "fooling_image": "convlens.visualize.fooling",
    "invert": "convlens.visualize.inversion",
    "adversarial": "convlens.visualize.adversarial", "AdversarialResult": "convlens.visualize.adversarial",
    # the CNN code space
    "codes": "convlens.visualize.codes", "Codes": "convlens.visualize.codes",
    "pixel_codes": "convlens.visualize.codes",
    "neighbors": "convlens.visualize.neighbors", "Neighbors": "convlens.visualize.neighbors",
    "agreement_by_layer": "convlens.visualize.code_agreement", "CodeAgreement": "convlens.visualize.code_agreement",
    "tsne": "convlens.visualize.tsne", "TSNEResult": "convlens.visualize.tsne",
    "tsne_grid": "convlens.visualize.tsne_grid", "TSNEGrid": "convlens.visualize.tsne_grid",
    "export_projector": "convlens.visualize.projector", "ProjectorExport": "convlens.visualize.projector",
    # runtime
    "keep_heap": "convlens.heap",
}
_MODULES = {"datasets": "convlens.datasets", "objectives": "convlens.visualize.objectives"}
_ALIASES = {"resolve_layer": "resolve"}

__all__ = sorted(_API) + sorted(_MODULES) + [
    "ConvLensError", "DataError", "InputError", "LayerNotFoundError", "RunError", "ShapeError", "SpecError",
    "UnknownModelError",
]


def __getattr__(name: str):
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), _ALIASES.get(name, name))
        globals()[name] = value
        return value
    raise AttributeError(f"module 'convlens' has no attribute {name!r}")


def __dir__():
    return __all__
