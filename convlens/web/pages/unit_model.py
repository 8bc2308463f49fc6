"""An image optimized to excite one unit, on the unit's page: the ``unit-model`` result, computed on request
(``POST api/layers/{layer}/units/{unit}/unit-model``, the page's button) as ``convlens class-model RUN
--layer L --unit U`` would, with its defaults (3 seeds, 100 steps), and saved under its name and options;
its images as PNGs (``png/layers/{layer}/units/{unit}/unit-model/{i}``).
"""
from __future__ import annotations

import numpy as np

from ..errors import NotFound, not_found
from ..png import png
from ..responses import started
from . import raw
from .conv_units import check_layer, check_unit, png_url, quoted

UNIT_MODEL = {"seeds": 3, "steps": 100}  # `convlens class-model --layer L --unit U`'s defaults


def _options(layer: str, unit: int) -> dict:
    return {"layer": layer, "unit": str(unit)}  # as `convlens class-model RUN --layer L --unit U` records them


def unit_model(ex, layer: str, unit: int):
    """(OptimizedImage, its rows showing this unit, version, where from) or None: the result of this unit
    alone, else the default ``unit-model`` (the demo's: 8 units of the last conv) where it holds the unit."""
    for options in (_options(layer, unit), None):
        found, version = ex.saved("unit-model", options, exact=options is None)
        if found is None or found.info.get("layer") != layer:
            continue
        rows = [i for i, t in enumerate(found.info.get("targets") or []) if int(t) == unit]
        if rows:
            return found, rows, version, "unit-model" if options is None else "unit-model (this unit)"
    return None


def unit_model_section(ex, layer: str, unit: int):
    """(the unit's optimized images, None), or (None, the job computing them, if started)."""
    found = unit_model(ex, layer, unit)
    if found is None:
        job = ex.job("unit-model", _options(layer, unit))
        return None, None if job is None else job.to_dict()
    result, rows, version, source = found
    final = np.asarray(result.final, dtype=float)
    after = (result.info.get("activation_after") or [None] * len(final))
    return {"source": source, "steps": result.steps, "objective": result.objective,
            "images": [{"row": i, "seed": (result.info.get("seeds") or [None] * len(final))[i],
                        "activation": after[i] if i < len(after) else None, "final": float(final[i]),
                        "png": png_url(layer, f"units/{unit}/unit-model/{j}", version)} for j, i in enumerate(rows)]}, None


@raw("/png/layers/{layer}/units/{unit}/unit-model/{i}")
def unit_model_png(ex, request):
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    found = unit_model(ex, layer, unit)
    if found is None:
        raise NotFound(f"no image optimized for {layer} unit {unit} yet (its page has the button)")
    result, rows, _, _ = found
    try:
        j = int(request.path_params["i"])
    except ValueError:
        j = -1
    if not 0 <= j < len(rows):
        raise not_found("image", request.path_params["i"], [f"0-{len(rows) - 1}"])
    return png(result.display(mode="stretch")[rows[j]], size=192)


@raw("/api/layers/{layer}/units/{unit}/unit-model", methods=("POST",))
def start_unit_model(ex, request):
    """Start ``convlens class-model RUN --layer L --unit U`` as a job (3 seeds, 100 steps)."""
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    job = None
    if unit_model(ex, layer, unit) is None:
        def compute(progress):
            from ...synthesis.class_model import class_model

            progress(0.02, f"{UNIT_MODEL['steps']} steps from {UNIT_MODEL['seeds']} seeds")
            return class_model(ex.run, None, layer=layer, unit=[unit], n_seeds=UNIT_MODEL["seeds"],
                               steps=UNIT_MODEL["steps"], progress=False)
        _, job = ex.ensure("unit-model", _options(layer, unit), f"Optimizing an image for {layer} unit {unit}",
                           compute)
    return started(request, job, f"layers/{quoted(layer)}/units/{unit}")
