"""``/layers/{layer}/units/{unit}``: one unit. Its top-k patches (the crop, and the whole image with its
receptive-field box: :mod:`.patches`), their deconvnet projections (:mod:`.projections`), an image
optimized to excite it (on demand: :mod:`.unit_model`), its optimal stimuli from several starts and their
Hessian invariances (on demand: :mod:`.unit_invariances`), its activation histogram over the data
(:mod:`.histogram`) and the classes of its top images; previous/next unit and layer.
"""
from __future__ import annotations

from collections import Counter

from . import page
from .conv_units import check_layer, check_unit, layers_around, png_url, quoted, unit_count
from .histogram import histogram
from .patches import mined_units, patches, unit_status
from .projections import projections
from .unit_invariances import invariances_section
from .unit_model import unit_model_section


def _top_entries(ex, top, layer: str, unit: int, version: str) -> list[dict]:
    data = ex.data
    names = list(getattr(data, "class_names", None) or [])
    labels = getattr(data, "labels", None)
    out = []
    for rank, e in enumerate(top.top(layer, unit)):
        i = e["image"]
        label = int(labels[i]) if labels is not None else None
        out.append({"rank": rank, "image": f"t{i}", "index": i, "value": e["value"], "position": list(e["position"]),
                    "box": list(e["box"]), "label": label,
                    "class": names[label] if label is not None and label < len(names) else None,
                    "patch": png_url(layer, f"units/{unit}/patch/{rank}", version),
                    "region": png_url(layer, f"units/{unit}/region/{rank}", version),
                    "projection": png_url(layer, f"units/{unit}/projection/{rank}", version)})
    return out


@page("/layers/{layer}/units/{unit}", "unit.html")
def unit_page(ex, request) -> dict:
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    n = unit_count(ex, layer)
    prev, nxt = layers_around(ex, layer)
    out = {"layer": layer, "unit": unit, "units": n, "prev_unit": unit - 1 if unit > 0 else None,
           "next_unit": unit + 1 if unit + 1 < n else None, "prev_layer": prev, "next_layer": nxt,
           "top": None, "k": None, "status": None, "classes": None, "projections": None, "job": None,
           "histogram": None, "histogram_job": None, "note": None, "data_error": ex.data_or_error()[1]}
    out["unit_model"], out["unit_model_job"] = unit_model_section(ex, layer, unit)
    out["unit_model_start"] = f"api/layers/{quoted(layer)}/units/{unit}/unit-model"
    out["invariances"] = invariances_section(ex, layer, unit)
    if out["data_error"]:
        return out
    top, version, job = patches(ex, layer)
    if top is None:
        out["job"] = job.to_dict() if job is not None else None
    elif unit not in mined_units(top, layer):
        out["note"] = f"unit {unit} was not mined (the result holds units {top.units[layer].tolist()[:20]} …)"
    else:
        r = top.row(layer, unit)
        out["k"] = top.k
        out["status"] = unit_status(top.values[layer][r], top.k)
        entries = _top_entries(ex, top, layer, unit, version)
        out["top"] = entries
        counts = Counter(e["class"] if e["class"] is not None else "?" for e in entries)
        out["classes"] = [{"class": c, "count": m} for c, m in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
        found, job = projections(ex, top, layer, unit, version)
        out["projections"] = {"rule": "deconvnet", "source": None if found is None else found[1],
                              "ready": found is not None, "job": None if job is None else job.to_dict()}
        out["field"] = top.fields.get(layer)
    out["histogram"], out["histogram_job"] = histogram(ex, layer, unit, top)
    return out
