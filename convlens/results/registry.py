"""Every analysis result a run can hold in ``RUN/results``: its name (the file stem), the options that
define it, what it depends on, and how it is written and read back.

Names are what the report's sections ask for (``ctx.result("top-patches")``). Options are named as the
command that computes it names them (``convlens fooling --class`` -> ``classes``). A result computed
with options other than the defaults is kept beside the default one, under ``NAME@KEY`` (see store.py).

Formats are ``"module:attribute"`` strings, imported on first use so that reading the registry (a
listing, a web page) imports no torch.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError, expect, suggest


@dataclass(frozen=True)
class Analysis:
    """One kind of result. ``save(path, value)`` writes ``<stem>.json`` (and ``<stem>.npz`` beside it);
    ``load(path)`` returns the value. ``weights``: it depends on the run's weights; ``data``: it reads
    images (the run's test split unless its ``data``/``image`` option says otherwise; ``default_data``
    for an analysis that reads its own data set). ``single``: one slot, whatever the options (ablation:
    ``RUN/ablation`` holds one set of retrained networks at a time)."""

    name: str
    options: tuple[str, ...]
    save: str
    load: str
    weights: bool = True
    data: bool = True
    default_data: str | None = None
    single: bool = False


# ---- formats: how a value reaches its files and comes back ----------------------------------------

def imported(target: str) -> Any:
    """``"package.module:Name.attr"`` -> the object."""
    module, _, attrs = target.partition(":")
    obj = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def by_method(path: Path, value) -> None:
    """Results that save themselves: ``value.save(path)`` writes the .json (and the .npz)."""
    value.save(path)


def fooling(path: Path, value) -> None:
    from ..synthesis.class_model import save_optimized

    save_optimized(path, value, schema="convlens.fooling/1")


def class_model(path: Path, value) -> None:
    from ..synthesis.class_model import save_optimized

    save_optimized(path, value, schema="convlens.class_model/1")


def inversions(path: Path, value) -> None:
    """``value``: (the original image (1, C, H, W), {layer: OptimizedImage})."""
    from ..synthesis.inversion import save_inversions

    save_inversions(path, *value)


def maps(path: Path, value) -> None:
    """``value``: a list of OcclusionMap."""
    from ..units.occlusion import save_maps

    save_maps(value, path)


def as_dict(path: Path, value) -> None:
    """Results with ``to_dict()`` and no save of their own (the FGSM sweep)."""
    from ..io import atomic_write_json

    atomic_write_json(path, value.to_dict())


def meta_arrays(path: Path, value) -> None:
    """``value``: (a JSON-able dict, {name: array}); the arrays first, so the JSON is written last."""
    from ..io import write_json_npz

    meta, arrays = value
    write_json_npz(path, meta, **arrays)


def read_dict(path: Path) -> dict:
    from ..io import read_json

    return read_json(path)


def read_meta_arrays(path: Path) -> tuple[dict, dict]:
    from ..io import read_json_npz

    return read_json_npz(path)


def from_dict(cls: str):
    """A loader for results whose class has ``from_dict`` and no ``load``."""
    def load(path: Path):
        return imported(cls).from_dict(read_dict(path))
    return load


_HERE = "convlens.results.registry"
_METHOD, _DICT, _PAIR = f"{_HERE}:by_method", f"{_HERE}:read_dict", f"{_HERE}:read_meta_arrays"
_CODES = ("layer", "pool", "data")

ANALYSES: dict[str, Analysis] = {a.name: a for a in [
    Analysis("evaluation", ("data", "k"), _METHOD, _DICT),
    Analysis("health", ("layers", "data", "max_samples"), _METHOD, "convlens.insight.health:HealthReport.load"),
    Analysis("probe", ("layers", "per_class", "repeats", "classifiers", "pool", "data", "seed"), _METHOD,
             f"{_HERE}:load_probe"),
    *(Analysis(f"invariance-{t}", ("layers", "n", "amounts", "data", "fill"), _METHOD, f"{_HERE}:load_invariance")
      for t in ("translate", "scale", "rotate")),
    Analysis("eps-vs-dimension", ("data", "classes", "sizes", "n_per_class"), _METHOD, f"{_HERE}:load_eps",
             weights=False, default_data="photos"),
    Analysis("ablation", ("remove", "epochs", "scratch", "lr", "seed"), _METHOD, f"{_HERE}:load_ablation",
             single=True),
    Analysis("filters", ("layer",), _METHOD, "convlens.units.filters:FilterResult.load", data=False),
    Analysis("top-patches", ("layer", "k", "units", "data"), _METHOD, "convlens.units.patches:TopPatches.load"),
    # the deconvnet projections of the default top-patches' every unit (convlens precompute; units/projection_sets.py)
    Analysis("top-projections", ("data",), f"{_HERE}:meta_arrays", _PAIR),
    Analysis("saliency", ("image", "index", "target", "n"), _METHOD, "convlens.units.segment:BackpropResult.load"),
    # convlens saliency --method gradcam|gradcam++|guided-gradcam|smoothgrad|ig; convlens sanity (units/sanity.py)
    Analysis("attribution", ("image", "index", "target", "n", "layer", "samples", "noise", "steps"), _METHOD,
             "convlens.units.attribution_views:AttributionResult.load"),
    Analysis("sanity", ("index", "target", "n", "method", "random_labels_run", "max_steps", "samples", "steps", "seed"),
             _METHOD, "convlens.units.sanity:SanityResult.load"),
    Analysis("occlusion", ("image", "index", "target", "window", "stride", "baseline", "layer", "unit",
                           "approximate", "tau", "drill_down"), f"{_HERE}:maps", "convlens.units.occlusion:load_maps"),
    Analysis("class-model", ("classes", "seeds", "steps"), f"{_HERE}:class_model",
             "convlens.synthesis.class_model:load_optimized", data=False),
    Analysis("unit-model", ("layer", "unit", "seeds", "steps"), f"{_HERE}:class_model",
             "convlens.synthesis.class_model:load_optimized", data=False),
    # convlens invariances: optima from several starts and their Hessian invariances (synthesis/, Erhan; Le)
    Analysis("optimal-stimuli", ("layer", "unit", "target", "n_inits", "norm", "steps", "seed"), _METHOD,
             "convlens.synthesis.optimal_stimuli:OptimalStimuli.load", data=False),
    Analysis("hessian-invariances", ("layer", "unit", "target", "n_inits", "norm", "steps", "seed", "k", "beta"),
             _METHOD, "convlens.synthesis.invariances:HessianInvariances.load", data=False),
    Analysis("fooling-gradient", ("classes", "confidence", "steps", "seed"), f"{_HERE}:fooling",
             "convlens.synthesis.class_model:load_optimized", data=False),
    Analysis("fooling-evolution", ("classes", "confidence", "generations", "encoding", "seed"), f"{_HERE}:fooling",
             "convlens.synthesis.class_model:load_optimized", data=False),
    Analysis("inversion", ("image", "index", "layers", "steps", "seed"), f"{_HERE}:inversions",
             "convlens.synthesis.inversion:load_inversions"),
    Analysis("inversion-quadrants", ("image", "index", "quadrants", "steps", "n_inits", "seed"), f"{_HERE}:inversions",
             "convlens.synthesis.inversion:load_inversions"),
    Analysis("adversarial", ("image", "index", "target", "method", "eps", "steps", "c"), _METHOD,
             "convlens.synthesis.adversarial:AdversarialResult.load"),
    Analysis("fgsm-sweep", (), f"{_HERE}:as_dict", f"{_HERE}:load_sweep"),
    Analysis("codes-agreement", (*_CODES, "k", "metric"), _METHOD, f"{_HERE}:load_agreement"),
    Analysis("codes-neighbors", (*_CODES, "image", "index", "k", "metric", "queries"), f"{_HERE}:meta_arrays", _PAIR),
    Analysis("codes-tsne", (*_CODES, "n", "perplexity", "seed", "grid"), f"{_HERE}:meta_arrays", _PAIR),
]}

load_probe = from_dict("convlens.insight.probes:ProbeResult")
load_invariance = from_dict("convlens.insight.invariance:InvarianceResult")
load_eps = from_dict("convlens.insight.linear_fooling:EpsVsDimension")
load_ablation = from_dict("convlens.insight.ablation:AblationResult")
load_sweep = from_dict("convlens.synthesis.adversarial:FGSMSweep")
load_agreement = from_dict("convlens.codespace.code_agreement:CodeAgreement")


def analysis(name: str) -> Analysis:
    """The registered analysis ``name``; an InputError with suggestions for any other name."""
    if name not in ANALYSES:
        raise InputError(str(expect("name", "an analysis of the results store (" + ", ".join(ANALYSES) + ")", name))
                         + suggest(name, ANALYSES))
    return ANALYSES[name]
