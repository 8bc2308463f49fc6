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
    "wrap": "convlens.training.wrap",
    "pretrained": "convlens.training.pretrained", "list_pretrained": "convlens.training.pretrained",
    "imagenet_classes": "convlens.training.pretrained", "photo_batch": "convlens.data.resize",
    "evaluate": "convlens.training.evaluate",
    "human_vs_cnn": "convlens.training.human_vs_cnn", "HumanVsCNN": "convlens.training.human_vs_cnn",
    # insight
    "capture": "convlens.taps",
    "Activations": "convlens.taps",
    "features": "convlens.insight.features",
    "Features": "convlens.insight.features",
    "health": "convlens.insight.health",
    "HealthReport": "convlens.insight.health",
    "probe": "convlens.insight.probes", "ProbeResult": "convlens.insight.probes",
    "ablate": "convlens.insight.ablation", "AblationResult": "convlens.insight.ablation",
    "remove_layers": "convlens.insight.rewiring",
    "invariance": "convlens.insight.invariance", "InvarianceResult": "convlens.insight.invariance",
    "fool_linear": "convlens.insight.linear_fooling", "LinearFooling": "convlens.insight.linear_fooling",
    "eps_vs_dimension": "convlens.insight.linear_fooling", "EpsVsDimension": "convlens.insight.linear_fooling",
    "filters": "convlens.units.filters", "FilterResult": "convlens.units.filters",
    "diagnose_filters": "convlens.units.filters", "diagnose_weights": "convlens.units.filter_diagnosis",
    "FilterDiagnosis": "convlens.units.filter_diagnosis",
    "occlusion": "convlens.units.occlusion", "OcclusionMap": "convlens.units.occlusion",
    "OcclusionMaps": "convlens.units.occlusion",
    "saliency": "convlens.units.backprop", "deconvnet": "convlens.units.backprop",
    "guided_backprop": "convlens.units.backprop", "segment": "convlens.units.segment",
    "grad_cam": "convlens.units.gradcam", "guided_grad_cam": "convlens.units.gradcam",
    "GradCAMResult": "convlens.units.gradcam", "smoothgrad": "convlens.units.attribution",
    "integrated_gradients": "convlens.units.attribution", "IGResult": "convlens.units.attribution",
    "sanity_check": "convlens.units.sanity", "SanityResult": "convlens.units.sanity",
    "top_patches": "convlens.units.patches", "TopPatches": "convlens.units.patches",
    # image optimization (class models, inversion, adversarial, fooling)
    "optimize": "convlens.synthesis.optimize", "OptimizedImage": "convlens.synthesis.optimize",
    "class_model": "convlens.synthesis.class_model", "fooling_image": "convlens.synthesis.fooling",
    "invert": "convlens.synthesis.inversion",
    "optimal_stimuli": "convlens.synthesis.optimal_stimuli", "OptimalStimuli": "convlens.synthesis.optimal_stimuli",
    "hessian_invariances": "convlens.synthesis.invariances", "HessianInvariances": "convlens.synthesis.invariances",
    "adversarial": "convlens.synthesis.adversarial", "AdversarialResult": "convlens.synthesis.adversarial",
    # the CNN code space
    "codes": "convlens.codespace.codes", "Codes": "convlens.codespace.codes",
    "pixel_codes": "convlens.codespace.codes",
    "neighbors": "convlens.codespace.neighbors", "Neighbors": "convlens.codespace.neighbors",
    "agreement_by_layer": "convlens.codespace.code_agreement", "CodeAgreement": "convlens.codespace.code_agreement",
    "tsne": "convlens.codespace.tsne", "TSNEResult": "convlens.codespace.tsne",
    "tsne_grid": "convlens.codespace.tsne_grid", "TSNEGrid": "convlens.codespace.tsne_grid",
    "export_projector": "convlens.codespace.projector", "ProjectorExport": "convlens.codespace.projector",
    # the results of a run
    "ResultStore": "convlens.results",
    "LabelStore": "convlens.results.labels",
    "report": "convlens.reporting",
    # runtime
    "keep_heap": "convlens.heap",
}
_MODULES = {"datasets": "convlens.datasets", "objectives": "convlens.synthesis.objectives"}
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
