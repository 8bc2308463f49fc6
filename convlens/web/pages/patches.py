"""The top patches of a layer's units -- the cached ``top-patches`` result, the one ``convlens top-patches
RUN`` saves, mined as a job with the same call and options when the run lacks it -- and their PNGs: a
unit's receptive-field crop of each top image (``png/layers/{layer}/units/{unit}/patch/{rank}``; ``?max=N``
for the layer grid's thumbnails) and the whole image with the box drawn (``.../region/{rank}``).

The PNGs are served by id: the layer and unit are checked against the model, the rank against the
result; no file is named by a request.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import NotFound, WebError, not_found
from ..png import png, to_uint8
from . import raw
from .conv_units import check_layer, check_unit

K = 9  # top patches per unit, as `convlens top-patches` mines by default


def _mined_on_our_data(ex, top) -> bool:
    if top.n_images != len(ex.data):
        return False

    def data_key():
        from ...taps import BatchSource

        return BatchSource(ex.data).key()
    return not top.data_key or top.data_key == ex.memo.once("data key", data_key)


def patches(ex, layer: str, *, start: bool = True):
    """(TopPatches covering ``layer``, its version, None), or (None, None, the job mining it) after starting
    it (``start``), else (None, None, None).

    Looked for: the default result (``convlens top-patches RUN``; with ``serve --data DIR``, ``--data DIR``),
    then the one of every conv layer kept beside it (``--layer`` each conv layer) that the explorer mines
    when the default exists but covers other layers (the ImageNet demo mines blocks): the default is never
    overwritten. Either must have been mined on the explorer's data."""
    base = ex.data_options
    candidates = [base, {**(base or {}), "layer": list(ex.layers)}]
    default_current = False
    for i, options in enumerate(candidates):
        top, version = ex.saved("top-patches", options, exact=True)
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
    return None, None, job


def mined_units(top, layer: str) -> dict[int, int]:
    """{unit: its row in the result} of the units of ``layer`` that ``top`` mined."""
    return {int(u): r for r, u in enumerate(top.units[layer])}


def unit_status(values: np.ndarray, k: int) -> dict:
    """From one unit's top-k values (NaN where fewer images): its best value, how many of its top images
    activate it at all, and whether it is silent (best <= 0) or rarely active (fewer than k images > 0)."""
    finite = values[np.isfinite(values)]
    best = float(finite[0]) if len(finite) else None
    positive = int(np.sum(finite > 0))
    silent = best is None or not best > 0
    return {"best": best, "positive": positive, "silent": silent, "rare": (not silent) and positive < k}


# ---- PNGs of a unit's top patches ------------------------------------------------------------------------

def ranked(ex, request):
    """(layer, unit, top, row, rank) of a PNG request naming a unit's top image by rank, each checked."""
    layer = check_layer(ex, request.path_params["layer"])
    unit = check_unit(ex, layer, request.path_params["unit"])
    top, _, _ = patches(ex, layer, start=False)
    if top is None or unit not in mined_units(top, layer):
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
    layer, unit, top, r, rank = ranked(ex, request)
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
    layer, unit, top, r, rank = ranked(ex, request)
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
