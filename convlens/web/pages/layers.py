"""``/layers/{layer}`` and ``/layers/{layer}/units/{unit}``: a conv layer's units and one unit.

**The layer page**: every unit as a thumbnail of its strongest patch (the cached ``top-patches`` result,
the one ``convlens top-patches RUN`` saves; mined as a job with the same call and options when the run
lacks it), the layer's filter grid with its diagnosis (a cached ``filters`` result where it covers the
layer, else ``diagnose_weights`` on the layer's weights: no data, milliseconds), and the units that never
fire marked: *silent* where the best activation over the data is <= 0, *rarely active* where fewer than
k images activate it at all (from the top-k), *dead* where the cached ``health`` result saw a unit never
active.

**The unit page**: the unit's top-k patches (the crop, and the whole image with its receptive-field box),
their deconvnet projections (a cached ``top-projections`` result, else ``top_projections`` on demand:
one backward over the k images, kept in memory), an image optimized to excite it (the ``unit-model``
result, computed on request as ``convlens class-model RUN --layer L --unit U`` would), its activation
histogram over the data (the unit's maximum per image, from one forward of the layer's every unit, a job
kept in memory) and the classes of its top images.

Thumbnails are PNGs served by id (``png/layers/{layer}/units/{unit}/patch/{rank}``...): the layer and
unit are checked against the model, the rank against the result; no file is named by a request. Their
URLs carry the result's version (``?v=``) so a recomputed result is not shown from the browser's cache.
"""
from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import numpy as np
import torch
from starlette.responses import JSONResponse, RedirectResponse

from ..errors import NotFound, not_found
from ..png import png
from . import page, raw
from .model import data_options, data_or_none, job_shown, memo, relative_back, remember_job, saved, wants_html

K = 9                  # top patches per unit, as `convlens top-patches` mines by default
HIST_BINS = 30
HIST_VALUES = 2000     # the JSON lists every image's value up to this many images
RARE_SPARSITY = 0.99   # health: a unit inactive at >= 99% of positions and samples is "rarely active"
FILTERS_SHOWN, CHANNELS_SHOWN = 64, 32  # the grey filter x channel grid of a higher layer, at most
PROJECTIONS_KEPT = 64  # units whose projection PNGs stay in memory
MAXIMA_KEPT = 8        # layers whose per-image maxima (N x units floats) stay in memory
THUMB = 64             # the layer grid's thumbnails: at most this many pixels a side
UNIT_MODEL = {"seeds": 3, "steps": 100}  # `convlens class-model --layer L --unit U`'s defaults
_LRU_LOCK = threading.Lock()


def _lru(ex, name: str) -> OrderedDict:
    return memo(ex).setdefault(name, OrderedDict())


def _lru_get(cache: OrderedDict, key):
    with _LRU_LOCK:
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
        return found


def _lru_put(cache: OrderedDict, key, value, keep: int) -> None:
    with _LRU_LOCK:
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > keep:
            cache.popitem(last=False)


# ---- the layers the explorer has pages for ---------------------------------------------------------------

def convs(ex) -> dict:
    """{display name: (module path, module)} of every conv layer, in forward order."""
    found = memo(ex).get("convs")
    if found is None:
        from ...units.filters import conv_layers

        found = memo(ex)["convs"] = {name: (path, module) for name, path, module in conv_layers(ex.run.model)}
    return found


def check_layer(ex, layer: str) -> str:
    if layer not in convs(ex):
        raise not_found("layer", layer, ex.layers)
    return layer


def unit_count(ex, layer: str) -> int:
    return int(convs(ex)[layer][1].weight.shape[0])


def check_unit(ex, layer: str, unit: str) -> int:
    n = unit_count(ex, layer)
    try:
        u = int(unit)
    except (TypeError, ValueError):
        u = None
    if u is None or not 0 <= u < n or str(u) != str(unit).strip():
        err = not_found("unit", unit, [f"0-{n - 1}"])
        err.message = f"no unit {unit!r} in {layer}: its units are 0-{n - 1}"
        if u is not None:
            err.suggestions = [str(min(max(u, 0), n - 1))]
        raise err
    return u


def _neighbours(ex, layer: str) -> tuple[str | None, str | None]:
    i = ex.layers.index(layer)
    return (ex.layers[i - 1] if i > 0 else None), (ex.layers[i + 1] if i + 1 < len(ex.layers) else None)


def _summary_row(ex, layer: str) -> dict | None:
    path = convs(ex)[layer][0]
    for row in ex.summary["layers"]:
        if row["name"] == layer:
            return row
    for row in ex.summary["layers"]:
        if row.get("path") == path:
            return row
    return None


# ---- the top patches --------------------------------------------------------------------------------------

def _data_key(ex) -> str:
    key = memo(ex).get("data_key")
    if key is None:
        from ...taps import BatchSource

        key = memo(ex)["data_key"] = BatchSource(ex.data).key()
    return key


def _mined_on_our_data(ex, top) -> bool:
    if top.n_images != len(ex.data):
        return False
    return not top.data_key or top.data_key == _data_key(ex)


def patches(ex, layer: str, *, start: bool = True):
    """(TopPatches covering ``layer``, its version, None), or (None, None, the job mining it) after starting
    it (``start``), else (None, None, None).

    Looked for: the default result (``convlens top-patches RUN``; with ``serve --data DIR``, ``--data DIR``),
    then the one of every conv layer kept beside it (``--layer`` each conv layer) that the explorer mines
    when the default exists but covers other layers (the ImageNet demo mines blocks): the default is never
    overwritten. Either must have been mined on the explorer's data."""
    base = data_options(ex)
    candidates = [base, {**(base or {}), "layer": list(ex.layers)}]
    default_current = False
    for i, options in enumerate(candidates):
        top, version = saved(ex, "top-patches", options, exact=True)
        if top is None or not _mined_on_our_data(ex, top):
            continue
        default_current = default_current or i == 0
        if layer in top.layers and top.k >= 1:
            return top, version, None
    if not start:
        return None, None, None
    options = candidates[1] if default_current else candidates[0]
    layers = None if options is candidates[0] else list(ex.layers)
    data = ex.data

    def compute(progress):
        from ...units.patches import top_patches

        seen = [0]

        def counted(x):  # the identity on each batch: reports how far the one pass is
            seen[0] += len(x)
            progress(seen[0] / max(len(data), 1), f"{seen[0]:,} of {len(data):,} images")
            return x
        return top_patches(ex.run, data, layers, k=K, progress=False, preprocess=counted)
    what = "every conv layer" if layers is None else f"the {len(layers)} conv layers"
    top, job = ex.ensure("top-patches", options, f"Mining the top-{K} patches of {what}", compute)
    if top is not None:
        return top, "new", None
    remember_job(ex, "top-patches", job)
    return None, None, job


def _units_of(top, layer: str) -> dict[int, int]:
    return {int(u): r for r, u in enumerate(top.units[layer])}


def _unit_status(values: np.ndarray, k: int) -> dict:
    """From one unit's top-k values (NaN where fewer images): its best value, how many of its top images
    activate it at all, and whether it is silent (best <= 0) or rarely active (fewer than k images > 0)."""
    finite = values[np.isfinite(values)]
    best = float(finite[0]) if len(finite) else None
    positive = int(np.sum(finite > 0))
    silent = best is None or not best > 0
    return {"best": best, "positive": positive, "silent": silent, "rare": (not silent) and positive < k}


def _health_layer(ex, top, layer: str):
    found, _ = saved(ex, "health", data_options(ex))
    if found is None or top is None:
        return None
    path = top.paths.get(layer)
    for h in found.layers:
        if h.path == path:
            return h
    return None


def _q(layer: str) -> str:
    from urllib.parse import quote

    return quote(layer, safe="")


def _url(layer: str, tail: str, version: str | None = None) -> str:
    return f"png/layers/{_q(layer)}/{tail}" + (f"?v={version}" if version else "")


# ---- the filters ------------------------------------------------------------------------------------------

def filters_of(ex, layer: str) -> dict:
    """The layer's filter diagnosis (from a cached ``filters`` result that covers it, else computed from the
    weights) and its grid's URL."""
    cache = memo(ex).setdefault("filters", {})
    found, version = saved(ex, "filters")  # the default: the first layer's weights, every layer's diagnosis
    if found is None or found.layer != layer:
        mine, mine_version = saved(ex, "filters", {"layer": layer})  # `convlens filters RUN --layer L`
        if mine is not None:
            found, version = mine, mine_version
    key = (layer, version)
    if key in cache:
        return cache[key]
    path, module = convs(ex)[layer]
    diagnosis, source = None, "computed from the weights"
    if found is not None:
        try:
            diagnosis, source = found[layer].to_dict(), "the saved filters result"
        except KeyError:
            diagnosis = None
    if diagnosis is None:
        from ...layers import user_path
        from ...units.filters import diagnose_weights

        diagnosis = diagnose_weights(module.weight, name=layer, path=user_path(ex.run.model, path)).to_dict()
    shape = list(module.weight.shape)
    copies = [i for i, c in enumerate(diagnosis.get("copy_of") or []) if c is not None and c >= 0]
    rgb = _rgb_grid(ex, layer)
    shown = (f"all {shape[0]} filters" if rgb else
             f"filters x input channels: {min(shape[0], FILTERS_SHOWN)} of {shape[0]} filters, "
             f"{min(shape[1], CHANNELS_SHOWN)} of {shape[1]} channels")
    out = {"shape": shape, "verdict": diagnosis.get("verdict"), "issues": diagnosis.get("issues", []),
           "reasons": diagnosis.get("reasons", []), "notes": diagnosis.get("notes", []),
           "measures": {k: diagnosis.get(k) for k in ("high_frequency", "high_frequency_random", "smoothness",
                                                       "smoothness_random", "structure_z", "similarity",
                                                       "similarity_random", "redundancy", "redundancy_random")},
           "near_copies": copies, "source": source, "grid": _url(layer, "filters"),
           "grid_shows": shown, "rgb": rgb}
    cache[key] = out
    return out


def _rgb_grid(ex, layer: str) -> bool:
    """One tile per filter (RGB for the layer that sees the image, grey for one input channel), else the
    filter x channel grey grid."""
    w = convs(ex)[layer][1].weight
    return w.shape[1] == 1 or (layer == ex.layers[0] and w.shape[1] == 3)


@raw("/png/layers/{layer}/filters")
def filters_png(ex, request):
    from ...plots.filters import channel_canvas, rgb_canvas

    layer = check_layer(ex, request.path_params["layer"])
    w = convs(ex)[layer][1].weight.detach().to("cpu", torch.float32).numpy()
    canvas = rgb_canvas(w) if _rgb_grid(ex, layer) else channel_canvas(w[:FILTERS_SHOWN, :CHANNELS_SHOWN])
    return png(canvas, size=480)


# ---- the layer page ---------------------------------------------------------------------------------------

@page("/layers/{layer}", "layer.html")
def layer_page(ex, request) -> dict:
    layer = check_layer(ex, request.path_params["layer"])
    path, module = convs(ex)[layer]
    prev, nxt = _neighbours(ex, layer)
    n = unit_count(ex, layer)
    row = _summary_row(ex, layer)
    out = {"layer": layer, "path": path, "type": type(module).__name__, "units": n,
           "index": ex.layers.index(layer), "layers": len(ex.layers), "prev_layer": prev, "next_layer": nxt,
           "output_shape": row and row.get("output_shape"), "rf": row and row.get("rf"),
           "params": row and row.get("params"), "filters": filters_of(ex, layer),
           "patches": None, "job": None, "grid": [], "silent": [], "rare": [], "dead": [], "health": None,
           "data_error": data_or_none(ex)[1]}
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


def _grid(ex, top, version: str, layer: str) -> dict:
    """The layer's unit cells and marks, kept in memory per version of the top patches and the health
    result (a 1152-unit layer's cells take longer to build than to serve)."""
    _, health_version = saved(ex, "health", data_options(ex))
    cache = _lru(ex, "grids")
    key = (layer, version, health_version)
    hit = _lru_get(cache, key)
    if hit is not None:
        return hit
    out = {"health": None}
    health = _health_layer(ex, top, layer)
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
        status = _unit_status(values[r], top.k)
        cell = {"unit": u, **status, "image": None if indices[r, 0] < 0 else f"t{int(indices[r, 0])}",
                "dead": u in dead_h, "rare_health": u in rare_h,
                "href": f"layers/{_q(layer)}/units/{u}",
                "thumb": None if indices[r, 0] < 0 else _url(layer, f"units/{u}/patch/0", version) + f"&max={THUMB}"}
        cell["mark"] = "dead" if cell["dead"] else "silent" if cell["silent"] else \
            "rare" if cell["rare"] or cell["rare_health"] else None
        cell["label"] = f"unit {u}" + ("" if status["best"] is None else f": best {status['best']:.3g}") + \
            {"dead": " (dead)", "silent": " (silent)", "rare": " (rarely active)", None: ""}[cell["mark"]]
        grid.append(cell)
    out["grid"] = grid
    out["silent"] = [c["unit"] for c in grid if c["silent"]]
    out["rare"] = [c["unit"] for c in grid if c["rare"] or c["rare_health"]]
    out["dead"] = [c["unit"] for c in grid if c["dead"]]
    _lru_put(cache, key, out, 16)
    return out


# ---- the unit page ----------------------------------------------------------------------------------------

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
                    "patch": _url(layer, f"units/{unit}/patch/{rank}", version),
                    "region": _url(layer, f"units/{unit}/region/{rank}", version),
                    "projection": _url(layer, f"units/{unit}/projection/{rank}", version)})
    return out


@page("/layers/{layer}/units/{unit}", "unit.html")
def unit_page(ex, request) -> dict:
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    n = unit_count(ex, layer)
    prev, nxt = _neighbours(ex, layer)
    out = {"layer": layer, "unit": unit, "units": n, "prev_unit": unit - 1 if unit > 0 else None,
           "next_unit": unit + 1 if unit + 1 < n else None, "prev_layer": prev, "next_layer": nxt,
           "top": None, "k": None, "status": None, "classes": None, "projections": None, "job": None,
           "histogram": None, "histogram_job": None, "note": None, "data_error": data_or_none(ex)[1]}
    out["unit_model"], out["unit_model_job"] = unit_model_section(ex, layer, unit)
    out["unit_model_start"] = f"api/layers/{_q(layer)}/units/{unit}/unit-model"
    if out["data_error"]:
        return out
    top, version, job = patches(ex, layer)
    if top is None:
        out["job"] = job.to_dict() if job is not None else None
    elif unit not in _units_of(top, layer):
        out["note"] = f"unit {unit} was not mined (the result holds units {top.units[layer].tolist()[:20]} …)"
    else:
        r = top.row(layer, unit)
        out["k"] = top.k
        out["status"] = _unit_status(top.values[layer][r], top.k)
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


# ---- PNGs of a unit's top patches ------------------------------------------------------------------------

def _entry(ex, request):
    """(layer, unit, top, row, rank) of a PNG request, each checked."""
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    top, _, _ = patches(ex, layer, start=False)
    if top is None or unit not in _units_of(top, layer):
        raise NotFound(f"no top patches of {layer} unit {unit} yet (open its page to mine them)")
    r = top.row(layer, unit)
    found = int(np.sum(top.indices[layer][r] >= 0))
    try:
        rank = int(request.path_params["rank"])
    except ValueError:
        rank = -1
    if not 0 <= rank < found:
        raise not_found("rank", request.path_params["rank"], [f"0-{found - 1}"] if found else [])
    return layer, unit, top, r, rank


def _crop(ex, top, layer: str, r: int, rank: int) -> torch.Tensor:
    """The receptive-field box of one top image (C, h, w): ``TopPatches.crops(pad=False)`` of that rank,
    cut from the explorer's images (checked once to be the data they were mined on)."""
    i = int(top.indices[layer][r, rank])
    t, left, b, right = (int(v) for v in top.boxes[layer][r, rank])
    return ex.data.images[i][:, t:b, left:right]


def _fit(image, side: int) -> np.ndarray:
    """``image`` as (H, W[, 3]) uint8, shrunk (box filter, aspect kept) to at most ``side`` pixels a side."""
    from PIL import Image

    from ..png import to_uint8

    a = to_uint8(image)
    if max(a.shape[:2]) <= side:
        return a
    im = Image.fromarray(a)
    im.thumbnail((side, side), Image.BOX)
    return np.asarray(im)


@raw("/png/layers/{layer}/units/{unit}/patch/{rank}")
def patch_png(ex, request):
    """The receptive-field crop of one top image at its own size; ``?max=N`` shrinks it to at most N pixels a
    side (the layer grid's thumbnails: a deep layer's box is the whole image)."""
    from ..errors import WebError

    layer, unit, top, r, rank = _entry(ex, request)
    crop = _crop(ex, top, layer, r, rank)
    side = request.query_params.get("max")
    if side is None:
        return png(crop)
    if not side.isdigit() or not 8 <= int(side) <= 1024:
        raise WebError(f"max must be an int from 8 to 1024 (pixels a side); got {side!r}")
    return png(_fit(crop, int(side)))


@raw("/png/layers/{layer}/units/{unit}/region/{rank}")
def region_png(ex, request):
    """The whole image with the receptive-field box drawn (R-CNN's "top regions")."""
    from ..png import to_uint8

    layer, unit, top, r, rank = _entry(ex, request)
    image = to_uint8(ex.data.images[int(top.indices[layer][r, rank])])
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    f = max(1, 224 // max(image.shape[:2]))
    image = np.repeat(np.repeat(image, f, axis=0), f, axis=1).copy()
    t, left, b, right = (int(v) * f for v in top.boxes[layer][r, rank])
    h, w = image.shape[:2]
    t, left, b, right = max(t, 0), max(left, 0), min(b, h), min(right, w)
    color = np.array([255, 214, 0], dtype=np.uint8)
    for d in range(2):  # a 2-pixel frame just inside the box
        image[min(t + d, h - 1), left:right] = color
        image[max(b - 1 - d, 0), left:right] = color
        image[t:b, min(left + d, w - 1)] = color
        image[t:b, max(right - 1 - d, 0)] = color
    return png(image)


def _saved_projections(ex, top, layer: str, unit: int):
    """The unit's projections from a cached ``top-projections`` result (``convlens precompute``) made from
    these very top patches, else None."""
    from ...results.registry import ANALYSES

    if "top-projections" not in ANALYSES:
        return None
    found, _ = saved(ex, "top-projections", data_options(ex), exact=True)
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
    from ..png import encode

    return [encode(projection_image(p)) for p in found]


def projections(ex, top, layer: str, unit: int, version: str, *, start: bool = True):
    """(the PNGs of the unit's deconvnet projections, where they come from, None), or (None, None, the job
    computing them): read from a saved ``top-projections`` result, else ``top_projections`` on the unit's top
    images (one backward pass; seconds for a deep layer of an ImageNet net on a CPU), kept in memory for
    the last ``PROJECTIONS_KEPT`` units."""
    cache = _lru(ex, "projections")
    key = (layer, unit, version)
    found = _lru_get(cache, key)
    if found is not None:
        return found, None
    saved_set = _saved_projections(ex, top, layer, unit)
    if saved_set is not None:
        found = (_projection_pngs(saved_set), "the saved top-projections result")
        _lru_put(cache, key, found, PROJECTIONS_KEPT)
        return found, None
    if not start:
        return None, None

    def work(progress):
        from ...units.backprop import top_projections

        progress(0.05, f"projecting {int(np.sum(top.indices[layer][top.row(layer, unit)] >= 0))} images")
        with ex.lock:
            computed = top_projections(ex.run, top, ex.data, layer, unit)
        _lru_put(cache, key, (_projection_pngs(computed), "computed on demand (a backward pass from the unit at "
                                                           "each top image's ranked position)"), PROJECTIONS_KEPT)
        return True
    job = ex.jobs.submit(f"projections {ex.name} {layer} {unit} {version}",
                         f"Deconvnet projections of {layer} unit {unit}", work)
    found = _lru_get(cache, key)
    if found is not None:
        return found, None
    if job.state == "done":  # computed, then evicted: compute again
        ex.jobs.forget(job.key)
        job = ex.jobs.submit(job.key, job.title, work)
    return None, job


@raw("/png/layers/{layer}/units/{unit}/projection/{rank}")
def projection_png(ex, request):
    from starlette.responses import Response

    layer, unit, top, r, rank = _entry(ex, request)
    _, version, _ = patches(ex, layer, start=False)
    found, _ = projections(ex, top, layer, unit, version, start=False)
    if found is None:
        raise NotFound(f"the projections of {layer} unit {unit} are not computed yet (its page starts them)")
    return Response(found[0][rank], media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


# ---- the activation histogram -----------------------------------------------------------------------------

def layer_maxima(ex, layer: str):
    """(N, U) float32: each image's strongest activation of each unit of ``layer`` (the tensor top-patches
    ranks: a grammar net's conv read after its BN and ReLU), or (None, job) while a job computes it."""
    cache = _lru(ex, "maxima")
    found = _lru_get(cache, layer)
    if found is not None:
        return found, None
    data = ex.data

    def work(progress):
        from ...taps import capture, eval_mode, model_device
        from ...training.runs import model_and_run
        from ...units._topk import choose_layers

        with ex.lock:
            model, _ = model_and_run(ex.run)
            _, (tap,) = choose_layers(model, [layer])
            device, dtype = model_device(model)
            reduce = lambda t: (t.flatten(2).amax(2) if t.ndim > 2 else t).float().cpu()  # noqa: E731
            parts, n = [], len(data)
            with eval_mode(model), torch.no_grad(), capture(model, [tap], stop_at_last=True, transform=reduce) as acts:
                for b0 in range(0, n, 128):
                    acts.forward(data.images[b0:b0 + 128].to(device=device, dtype=dtype))
                    parts.append(acts[tap])
                    progress(min(b0 + 128, n) / n, f"{min(b0 + 128, n):,} of {n:,} images")
        _lru_put(cache, layer, torch.cat(parts).numpy(), MAXIMA_KEPT)
        return True
    key = f"maxima {ex.name} {layer}"
    job = ex.jobs.submit(key, f"Activations of {layer} over {len(data):,} images", work)
    found = _lru_get(cache, layer)
    if found is not None:
        return found, None
    if job.state == "done":  # computed, then evicted: compute again
        ex.jobs.forget(key)
        job = ex.jobs.submit(key, job.title, work)
    return None, job


def histogram(ex, layer: str, unit: int, top):
    maxima, job = layer_maxima(ex, layer)
    if maxima is None:
        return None, job.to_dict()
    values = maxima[:, unit].astype(np.float64)
    counts, edges = np.histogram(values, bins=HIST_BINS)
    peak = int(counts.max()) if len(counts) else 0
    bars = [{"x": i, "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c),
             "height": 0 if not peak else round(100 * c / peak, 2)} for i, c in enumerate(counts)]
    out = {"n": int(len(values)), "edges": edges.tolist(), "counts": counts.tolist(), "bars": bars,
           "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
           "positive": int(np.sum(values > 0)), "values": values.tolist() if len(values) <= HIST_VALUES else None}
    if top is not None and unit in _units_of(top, layer):
        vals = top.values[layer][top.row(layer, unit)]
        out["top_min"] = float(np.nanmin(vals)) if np.isfinite(vals).any() else None
    return out, None


# ---- the image optimized to excite the unit (on request) -------------------------------------------------

def _unit_model_options(layer: str, unit: int) -> dict:
    return {"layer": layer, "unit": str(unit)}  # as `convlens class-model RUN --layer L --unit U` records them


def unit_model(ex, layer: str, unit: int):
    """(OptimizedImage, its rows showing this unit, version, where from) or None: the result of this unit
    alone, else the default ``unit-model`` (the demo's: 8 units of the last conv) where it holds the unit."""
    for options in (_unit_model_options(layer, unit), None):
        found, version = saved(ex, "unit-model", options, exact=options is None)
        if found is None or found.info.get("layer") != layer:
            continue
        rows = [i for i, t in enumerate(found.info.get("targets") or []) if int(t) == unit]
        if rows:
            return found, rows, version, "unit-model" if options is None else "unit-model (this unit)"
    return None


def unit_model_section(ex, layer: str, unit: int):
    found = unit_model(ex, layer, unit)
    if found is None:
        return None, job_shown(ex, f"unit-model {layer} {unit}")
    result, rows, version, source = found
    final = np.asarray(result.final, dtype=float)
    after = (result.info.get("activation_after") or [None] * len(final))
    return {"source": source, "steps": result.steps, "objective": result.objective,
            "images": [{"row": i, "seed": (result.info.get("seeds") or [None] * len(final))[i],
                        "activation": after[i] if i < len(after) else None, "final": float(final[i]),
                        "png": _url(layer, f"units/{unit}/unit-model/{j}", version)} for j, i in enumerate(rows)]}, None


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
        _, job = ex.ensure("unit-model", _unit_model_options(layer, unit),
                           f"Optimizing an image for {layer} unit {unit}", compute)
        remember_job(ex, f"unit-model {layer} {unit}", job)
    if wants_html(request):
        return RedirectResponse(relative_back(request, f"layers/{_q(layer)}/units/{unit}"),
                                status_code=303)
    return JSONResponse({"job": None if job is None else job.to_dict()}, status_code=202 if job else 200)
