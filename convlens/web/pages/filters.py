"""A conv layer's filters, on its page: the diagnosis (from a cached ``filters`` result that covers the
layer, else ``diagnose_weights`` on its weights: no data, milliseconds) and the filter grid as a PNG
(``png/layers/{layer}/filters``): one RGB tile per filter for the layer that sees the image, else the grey
filter x input channel grid, capped at :data:`FILTERS_SHOWN` x :data:`CHANNELS_SHOWN`.
"""
from __future__ import annotations

from ..png import png
from . import raw
from .conv_units import check_layer, convs, png_url, weights

FILTERS_SHOWN, CHANNELS_SHOWN = 64, 32  # the grey filter x channel grid of a higher layer, at most
DIAGNOSES_KEPT = 256


def filters_of(ex, layer: str) -> dict:
    """The layer's filter diagnosis (from a cached ``filters`` result that covers it, else computed from the
    weights) and its grid's URL."""
    found, version = ex.saved("filters")  # the default: the first layer's weights, every layer's diagnosis
    if found is None or found.layer != layer:
        mine, mine_version = ex.saved("filters", {"layer": layer})  # `convlens filters RUN --layer L`
        if mine is not None:
            found, version = mine, mine_version
    return ex.memo.lru("filters", DIAGNOSES_KEPT).get_or_make((layer, version), lambda: _diagnosis(ex, layer, found))


def _diagnosis(ex, layer: str, found) -> dict:
    path, _ = convs(ex)[layer]
    diagnosis, source = None, "computed from the weights"
    if found is not None:
        try:
            diagnosis, source = found[layer].to_dict(), "the saved filters result"
        except KeyError:
            diagnosis = None
    if diagnosis is None:
        from ...layers import user_path
        from ...units.filters import diagnose_weights

        diagnosis = diagnose_weights(weights(ex, layer), name=layer, path=user_path(ex.run.model, path)).to_dict()
    shape = list(weights(ex, layer).shape)
    copies = [i for i, c in enumerate(diagnosis.get("copy_of") or []) if c is not None and c >= 0]
    rgb = _rgb_grid(ex, layer)
    shown = (f"all {shape[0]} filters" if rgb else
             f"filters x input channels: {min(shape[0], FILTERS_SHOWN)} of {shape[0]} filters, "
             f"{min(shape[1], CHANNELS_SHOWN)} of {shape[1]} channels")
    return {"shape": shape, "verdict": diagnosis.get("verdict"), "issues": diagnosis.get("issues", []),
            "reasons": diagnosis.get("reasons", []), "notes": diagnosis.get("notes", []),
            "measures": {k: diagnosis.get(k) for k in ("high_frequency", "high_frequency_random", "smoothness",
                                                        "smoothness_random", "structure_z", "similarity",
                                                        "similarity_random", "redundancy", "redundancy_random")},
            "near_copies": copies, "source": source, "grid": png_url(layer, "filters"),
            "grid_shows": shown, "rgb": rgb}


def _rgb_grid(ex, layer: str) -> bool:
    """One tile per filter (RGB for the layer that sees the image, grey for one input channel), else the
    filter x channel grey grid."""
    w = weights(ex, layer)
    return w.shape[1] == 1 or (layer == ex.layers[0] and w.shape[1] == 3)


@raw("/png/layers/{layer}/filters")
def filters_png(ex, request):
    from ...plots.filters import channel_canvas, rgb_canvas

    layer = check_layer(ex, request.path_params["layer"])
    w = weights(ex, layer).numpy()
    canvas = rgb_canvas(w) if _rgb_grid(ex, layer) else channel_canvas(w[:FILTERS_SHOWN, :CHANNELS_SHOWN])
    return png(canvas, size=480)
