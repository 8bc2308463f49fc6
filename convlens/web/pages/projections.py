"""A unit's deconvnet projections, one per top patch (Zeiler & Fergus's figure 2), and their PNGs
(``png/layers/{layer}/units/{unit}/projection/{rank}``): read from a cached ``top-projections`` result
(``convlens precompute``) made from the same top patches, else ``top_projections`` on the unit's top images
as a job (one backward pass), kept in memory for the last :data:`PROJECTIONS_KEPT` units.
"""
from __future__ import annotations

import numpy as np

from ..errors import NotFound
from ..png import encode, response
from . import raw
from .patches import patches, ranked

PROJECTIONS_KEPT = 64  # units whose projection PNGs stay in memory


def _saved_projections(ex, top, layer: str, unit: int):
    """The unit's projections from a cached ``top-projections`` result (``convlens precompute``) made from
    these very top patches, else None."""
    from ...results.registry import ANALYSES

    if "top-projections" not in ANALYSES:
        return None
    found = ex.result("top-projections", ex.data_options, exact=True)
    if found is None:
        return None
    meta, arrays = found
    if layer not in meta.get("layers", []) or (meta.get("data_key") and meta["data_key"] != top.data_key) \
            or meta.get("rule", "deconvnet") != "deconvnet":
        return None
    i = meta["layers"].index(layer)
    hit = np.flatnonzero(arrays[f"units_{i}"] == unit)
    r = top.row(layer, unit)
    if not len(hit) or not np.array_equal(arrays[f"indices_{i}"][int(hit[0])], top.indices[layer][r]):
        return None
    from ...units.projection_sets import unit_projections

    return unit_projections(meta, arrays, layer, unit)


def _projection_pngs(found) -> list[bytes]:
    from ...plots.backprop import projection_image

    return [encode(projection_image(p)) for p in found]


def projections(ex, top, layer: str, unit: int, version: str, *, start: bool = True):
    """(the PNGs of the unit's deconvnet projections, where they come from, None), or (None, None, the job
    computing them): read from a saved ``top-projections`` result, else ``top_projections`` on the unit's top
    images (one backward pass; seconds for a deep layer of an ImageNet net on a CPU), kept in memory for
    the last ``PROJECTIONS_KEPT`` units."""
    cache = ex.memo.lru("projections", PROJECTIONS_KEPT)
    key = (layer, unit, version)
    found = cache.get(key)
    if found is not None:
        return found, None
    saved_set = _saved_projections(ex, top, layer, unit)
    if saved_set is not None:
        return cache.put(key, (_projection_pngs(saved_set), "the saved top-projections result")), None
    if not start:
        return None, None

    def compute(progress):
        from ...units.backprop import top_projections

        progress(0.05, f"projecting {int(np.sum(top.indices[layer][top.row(layer, unit)] >= 0))} images")
        with ex.lock:
            computed = top_projections(ex.run, top, ex.data, layer, unit)
        return _projection_pngs(computed), ("computed on demand (a backward pass from the unit at each top "
                                            "image's ranked position)")
    return ex.kept(cache, key, f"projections {ex.name} {layer} {unit} {version}",
                   f"Deconvnet projections of {layer} unit {unit}", compute)


@raw("/png/layers/{layer}/units/{unit}/projection/{rank}")
def projection_png(ex, request):
    layer, unit, top, r, rank = ranked(ex, request)
    _, version, _ = patches(ex, layer, start=False)
    found, _ = projections(ex, top, layer, unit, version, start=False)
    if found is None:
        raise NotFound(f"the projections of {layer} unit {unit} are not computed yet (its page starts them)")
    return response(found[0][rank])
