"""``/layers/{layer}``: a conv layer's units. Every unit as a thumbnail of its strongest patch (the cached
``top-patches`` result, mined as a job when the run lacks it: :mod:`.patches`), the layer's filter grid
with its diagnosis (:mod:`.filters`), and the units that never fire marked: *silent* where the best
activation over the data is <= 0, *rarely active* where fewer than k images activate it at all (from the
top-k), *dead* where the cached ``health`` result saw a unit never active.

Thumbnail URLs carry the result's version (``?v=``) so a recomputed result is not shown from the
browser's cache.
"""
from __future__ import annotations

import numpy as np

from . import page
from .conv_units import check_layer, convs, layers_around, png_url, quoted, summary_row, unit_count
from .filters import filters_of
from .patches import patches, unit_status

RARE_SPARSITY = 0.99   # health: a unit inactive at >= 99% of positions and samples is "rarely active"
THUMB = 64             # the layer grid's thumbnails: at most this many pixels a side
GRIDS_KEPT = 16        # layers whose unit grid stays in memory


@page("/layers/{layer}", "layer.html")
def layer_page(ex, request) -> dict:
    layer = check_layer(ex, request.path_params["layer"])
    path, module = convs(ex)[layer]
    prev, nxt = layers_around(ex, layer)
    n = unit_count(ex, layer)
    row = summary_row(ex, layer)
    out = {"layer": layer, "path": path, "type": type(module).__name__, "units": n,
           "index": ex.layers.index(layer), "layers": len(ex.layers), "prev_layer": prev, "next_layer": nxt,
           "output_shape": row and row.get("output_shape"), "rf": row and row.get("rf"),
           "params": row and row.get("params"), "filters": filters_of(ex, layer),
           "patches": None, "job": None, "grid": [], "silent": [], "rare": [], "dead": [], "health": None,
           "data_error": ex.data_or_error()[1]}
    if out["data_error"]:
        return out
    top, version, job = patches(ex, layer)
    if top is None:
        out["job"] = job.to_dict() if job is not None else None
        return out
    out["patches"] = {"k": top.k, "n_images": top.n_images, "rows_mined": top.rows_mined, "tapped": top.paths[layer],
                      "map_hw": list(top.map_hw.get(layer, ())), "field": top.fields.get(layer),
                      "box_method": top.box_method.get(layer), "version": version}
    out.update(_grid(ex, top, version, layer))
    return out


def grids(ex):
    """The unit grids kept in memory, per layer and version of the top patches and the health result (a
    1152-unit layer's cells take longer to build than to serve)."""
    return ex.memo.lru("layer grids", GRIDS_KEPT)


def _grid(ex, top, version: str, layer: str) -> dict:
    """The layer's unit cells and marks."""
    health, health_version = ex.saved("health", ex.data_options)
    return grids(ex).get_or_make((layer, version, health_version), lambda: _cells(top, version, layer, health))


def _health_layer(health, top, layer: str):
    if health is None or top is None:
        return None
    path = top.paths.get(layer)
    for h in health.layers:
        if h.path == path:
            return h
    return None


def _cells(top, version: str, layer: str, health) -> dict:
    out = {"health": None}
    health = _health_layer(health, top, layer)
    dead_h, rare_h = set(), set()
    if health is not None and health.unit_sparsity is not None:
        s = np.asarray(health.unit_sparsity, dtype=float)
        dead_h = set(np.flatnonzero(s >= 1.0).tolist())
        rare_h = set(np.flatnonzero((s >= RARE_SPARSITY) & (s < 1.0)).tolist())
        out["health"] = {"layer": health.name, "verdict": health.verdict, "dead_fraction": health.dead_fraction,
                         "units": health.units, "samples": health.samples}
    grid = []
    values, indices = top.values[layer], top.indices[layer]
    for r, u in enumerate(top.units[layer].tolist()):
        status = unit_status(values[r], top.k)
        cell = {"unit": u, **status, "image": None if indices[r, 0] < 0 else f"t{int(indices[r, 0])}",
                "dead": u in dead_h, "rare_health": u in rare_h,
                "href": f"layers/{quoted(layer)}/units/{u}",
                "thumb": None if indices[r, 0] < 0 else png_url(layer, f"units/{u}/patch/0", version) + f"&max={THUMB}"}
        cell["mark"] = "dead" if cell["dead"] else "silent" if cell["silent"] else \
            "rare" if cell["rare"] or cell["rare_health"] else None
        cell["label"] = f"unit {u}" + ("" if status["best"] is None else f": best {status['best']:.3g}") + \
            {"dead": " (dead)", "silent": " (silent)", "rare": " (rarely active)", None: ""}[cell["mark"]]
        grid.append(cell)
    out["grid"] = grid
    out["silent"] = [c["unit"] for c in grid if c["silent"]]
    out["rare"] = [c["unit"] for c in grid if c["rare"] or c["rare_health"]]
    out["dead"] = [c["unit"] for c in grid if c["dead"]]
    return out
