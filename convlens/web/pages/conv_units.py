"""The conv layers and units the explorer has pages for (no routes here): each layer's module and number of
units, the checks that turn an unknown layer or unit of a request into a 404 with suggestions, the layers
before and after one, the layer's row of the summary table, and the URLs of their PNGs.
"""
from __future__ import annotations

from urllib.parse import quote

import torch

from ..errors import not_found


def convs(ex) -> dict:
    """{display name: (module path, module)} of every conv layer, in forward order."""
    def make():
        from ...units.filters import conv_layers

        return {name: (path, module) for name, path, module in conv_layers(ex.run.model)}
    return ex.memo.once("convs", make)


def weights(ex, layer: str):
    """A CPU float32 copy of the conv layer's weight, kept. While a trace runs (the summary, receptive fields:
    under the model lock) ``torch.func.functional_call`` swaps the module's parameters for meta stand-ins; a
    reader that finds one waits for the lock, after which the real weight is back."""
    def make():
        module = convs(ex)[layer][1]
        w = module.weight
        if w.is_meta:
            with ex.lock:
                w = module.weight
        return w.detach().to("cpu", dtype=torch.float32).clone()
    return ex.memo.lru("weights", 256).get_or_make(layer, make)


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


def layers_around(ex, layer: str) -> tuple[str | None, str | None]:
    """(the layer before ``layer``, the one after) in forward order; None at either end."""
    i = ex.layers.index(layer)
    return (ex.layers[i - 1] if i > 0 else None), (ex.layers[i + 1] if i + 1 < len(ex.layers) else None)


def summary_row(ex, layer: str) -> dict | None:
    """The layer's row of the summary table (by name, else by module path)."""
    path = convs(ex)[layer][0]
    for row in ex.summary["layers"]:
        if row["name"] == layer:
            return row
    for row in ex.summary["layers"]:
        if row.get("path") == path:
            return row
    return None


def quoted(layer: str) -> str:
    """The layer's name as one segment of a URL path."""
    return quote(layer, safe="")


def png_url(layer: str, tail: str, version: str | None = None) -> str:
    """``png/layers/{layer}/{tail}``, with ``?v=version`` (a result's version) when given."""
    return f"png/layers/{quoted(layer)}/{tail}" + (f"?v={version}" if version else "")
