"""One conv layer's activations on an image as a channel grid, on the image's page, as in Yosinski et al.'s
Deep Visualization Toolbox: a small grey tile per channel, scaled by the whole layer's range on this image
(black: the layer's minimum, white: its maximum), a layer picker, at most :data:`CHANNELS` tiles per page;
each tile links to its unit's page. The grid is one PNG (``png/images/{id}/activations/{layer}?channels=P``)
laid out as the page's links are (:func:`grid_layout`). The layer's output is one forward under the model
lock, kept in memory.
"""
from __future__ import annotations

import math
from urllib.parse import quote

import numpy as np
import torch
from starlette.responses import Response

from ...errors import ConvLensError
from .. import uploads as up
from ..errors import NotFound, not_found
from ..params import image_id, int_param
from ..png import encode, response
from . import raw

CHANNELS = 256       # channel tiles per page of the activation grid
STRONGEST = 8        # strongest channels listed
GAP = 2              # px between tiles
MIN_TILE = 40        # tiles smaller than this are enlarged (integer factor, nearest neighbour)
MAX_GRID_PIXELS = 2_500_000  # a larger grid has its tiles shrunk (averaged by an integer factor)
ACTIVATIONS_KEPT, GRIDS_KEPT = 16, 32  # (image, layer) outputs and grid PNGs kept in memory


def activation(ex, image_id: str, layer: str) -> np.ndarray:
    """(C, H, W) float32: the layer's output for the image (one forward under the model lock, kept)."""
    from ...taps import activations, eval_mode

    if layer not in ex.layers:
        raise not_found("layer", layer, ex.layers)

    def make():
        x = up.image(ex, image_id)[None]
        with ex.lock:
            net = ex.run.pixel_model()
            with eval_mode(net):
                acts = activations(ex.run, x, [layer])
        a = acts[layer]
        a = a[0] if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))[0]
        a = a.detach().cpu().float()
        if a.dim() == 1:
            a = a[:, None, None]
        elif a.dim() == 2:
            a = a[None]
        return a.numpy()
    return ex.memo.lru("activations", ACTIVATIONS_KEPT).get_or_make((image_id, layer), make)


def grid_layout(n: int, h: int, w: int) -> dict:
    """Where ``n`` tiles of an (h, w) map go in the channel grid: columns, tile size (enlarged or shrunk by
    an integer factor), gap. The page's links and the PNG use the same layout."""
    up_f = max(1, math.ceil(MIN_TILE / max(1, min(h, w))))
    th, tw = h * up_f, w * up_f
    cols = max(1, math.ceil(math.sqrt(n * th / max(tw, 1))))
    rows = max(1, math.ceil(n / cols))
    down = 1
    while (rows * (th // down + GAP)) * (cols * (tw // down + GAP)) > MAX_GRID_PIXELS and min(th, tw) // down > 8:
        down += 1
    return {"cols": cols, "rows": rows, "up": up_f, "down": down, "tile_h": th // down, "tile_w": tw // down,
            "gap": GAP, "width": cols * (tw // down + GAP) - GAP, "height": rows * (th // down + GAP) - GAP}


def channel_page(request, a: np.ndarray) -> tuple[int, int, range]:
    """(``?channels=``: the page of channels shown, the number of pages, the channels on it)."""
    pages = max(1, math.ceil(len(a) / CHANNELS))
    p = int_param(request, "channels", 1, 1, pages)
    return p, pages, range((p - 1) * CHANNELS, min(len(a), p * CHANNELS))


def grid_image(a: np.ndarray, units: range, layout: dict) -> np.ndarray:
    """The channel grid (H, W, 3) uint8: each channel's map in grey, scaled by the layer's range."""
    import torch.nn.functional as F

    lo, hi = float(np.min(a)), float(np.max(a))
    scaled = np.zeros_like(a) if hi - lo < 1e-12 else (a - lo) / (hi - lo)
    t = torch.from_numpy(np.ascontiguousarray(scaled[units.start:units.stop]))[:, None]  # (n, 1, h, w)
    if layout["up"] > 1:
        t = t.repeat_interleave(layout["up"], 2).repeat_interleave(layout["up"], 3)
    if layout["down"] > 1:
        t = F.avg_pool2d(t, layout["down"], ceil_mode=False)
    tiles = (t[:, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    th, tw, gap = layout["tile_h"], layout["tile_w"], layout["gap"]
    canvas = np.empty((layout["height"], layout["width"], 3), np.uint8)
    canvas[:] = (176, 196, 214)  # the gaps: a light blue, so a black tile is told from the background
    for i, tile in enumerate(tiles):
        r, c = divmod(i, layout["cols"])
        y, x = r * (th + gap), c * (tw + gap)
        canvas[y:y + th, x:x + tw] = tile[:th, :tw, None]
    return canvas


def activations_section(ex, request, image_id: str) -> tuple[dict | None, str | None]:
    """(the image page's channel grid of the layer ``?layer=`` names (default: the first), None), or (None,
    why not: a TorchScript model has no forward hooks to read a layer with)."""
    layers = ex.layers
    layer = request.query_params.get("layer") or (layers[0] if layers else None)
    try:
        a = activation(ex, image_id, layer) if layers else None
    except NotFound:
        raise
    except ConvLensError as err:
        return None, str(err)
    if a is None:
        return None, None
    p, pages, units = channel_page(request, a)
    layout = grid_layout(len(units), a.shape[1], a.shape[2])
    means = a.reshape(len(a), -1).mean(1)
    maxes = a.reshape(len(a), -1).max(1)
    tiles = []
    for i, u in enumerate(units):
        r_, c_ = divmod(i, layout["cols"])
        y, x = r_ * (layout["tile_h"] + GAP), c_ * (layout["tile_w"] + GAP)
        tiles.append({"unit": u, "box": [x, y, x + layout["tile_w"], y + layout["tile_h"]],
                      "mean": float(means[u]), "max": float(maxes[u])})
    li = layers.index(layer)
    strongest = np.argsort(-means, kind="stable")[:STRONGEST]
    return {"layer": layer, "layers": layers, "index": li, "channels": int(len(a)),
            "map": [int(a.shape[1]), int(a.shape[2])],
            "prev_layer": layers[li - 1] if li > 0 else None,
            "next_layer": layers[li + 1] if li + 1 < len(layers) else None,
            "page": p, "pages": pages, "first": units.start, "last": units.stop - 1,
            "range": [float(a.min()), float(a.max())], "layout": layout, "tiles": tiles,
            "grid": f"png/images/{image_id}/activations/{quote(layer, safe='')}?channels={p}",
            "strongest": [{"unit": int(u), "mean": float(means[u])} for u in strongest]}, None


@raw("/png/images/{id}/activations/{layer}", name="activation_grid_png")
def activation_grid_png(ex, request) -> Response:
    shown = image_id(ex, request)
    layer = request.path_params["layer"]
    a = activation(ex, shown, layer)
    p, _, units = channel_page(request, a)

    def make():
        return encode(grid_image(a, units, grid_layout(len(units), a.shape[1], a.shape[2])))
    return response(ex.memo.lru("activation grids", GRIDS_KEPT).get_or_make((shown, layer, p), make))
