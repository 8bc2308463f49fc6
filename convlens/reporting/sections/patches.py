"""Report section: top-9 patches of a low, a middle and a high conv layer, and R-CNN top regions of one
unit (from ``convlens top-patches``'s ``results/top-patches.json`` / ``.npz``)."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section

UNITS_SHOWN = 6


@section("patches", order=90)
def patches(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...units.patches import TopPatches

    d, arrays = ctx.result("top-patches"), ctx.arrays("top-patches")
    if d is None or arrays is None:
        return None
    tp = TopPatches.from_parts(d, arrays)
    data, why = _data(ctx, tp)
    per = d["per_layer"]
    rows = [[n, tp.paths[n], per[n]["units"], "x".join(map(str, per[n]["map_hw"])),
             "x".join(map(str, per[n]["field"]["rf"])) if per[n]["field"] else "?", per[n]["box_method"],
             per[n]["median_top1"], per[n]["silent_units"]] for n in tp.layers]
    blocks = [Metrics({"images ranked": f"{tp.rows_mined:,}", "data": tp.data or "?", "k": str(tp.k),
                       "layers": ", ".join(tp.layers)}),
              Table(["layer", "module read", "units", "map", "receptive field", "boxes", "median top-1 value",
                     "silent units"], rows,
                    caption="Per layer: its feature map, receptive field (pixels), how boxes were found, the median "
                            "over units of the best image's activation, and units whose best image gives <= 0")]
    if data is None:
        blocks.append(Text(f"The images are not shown: {why}"))
    else:
        shown = _layers(tp)
        fig = tp.plot(shown, data, units={n: _units(tp, n) for n in shown})
        blocks.append(Figure("top9", to_png(fig),
                             f"Top-{tp.k} patches: per unit, the {tp.k} images that activate it most, cropped to the "
                             "unit's receptive field at the maximal position (checkerboard: field outside the image). Rows: "
                             f"{', '.join(shown)}; columns: the {UNITS_SHOWN} units with the strongest responses."))
        layer, unit = _region_unit(tp, shown)
        blocks.append(Figure("top-regions", to_png(tp.plot_regions(layer, unit, data)),
                             f"Top regions of {layer} unit {unit}: its receptive field at the maximal position "
                             "and the activation value, drawn in white on the whole image (R-CNN Fig. 4)."))
    return Section("patches", "What units respond to: top-9 patches", blocks,
                   intro="Not samples from the model: the parts of real test images that give the strongest "
                         "activation of each feature map (each image counted once per unit, at its maximal "
                         "position). Low layers pick colours and edges, higher layers parts and whole shapes.",
                   cite="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, Fig. 2; "
                        "Girshick et al., Rich feature hierarchies for accurate object detection, CVPR 2014, Fig. 4")


def _data(ctx, tp):
    """(the images mined, or None, and why not)."""
    from ...errors import ConvLensError

    try:
        if tp.data_spec:
            from ... import datasets

            data = datasets.load(**tp.data_spec)
        else:
            data = ctx.test_data
        tp.source(data)
        return data, ""
    except (ConvLensError, OSError, TypeError) as err:
        return None, f"the data they were mined on ({tp.data or '?'}) could not be loaded again ({err})."


def _layers(tp) -> list[str]:
    """A low, a middle and a high layer (all of them when there are three or fewer)."""
    names = list(tp.layers)
    return names if len(names) <= 3 else [names[0], names[len(names) // 2], names[-1]]


def _units(tp, layer: str) -> list[int]:
    """The units with the highest mean top-k activation (silent units last)."""
    v = tp.values[layer]                                   # (U, k), NaN where no image
    count = np.isfinite(v).sum(1)
    mean = np.where(count > 0, np.nansum(v, 1) / np.maximum(count, 1), -np.inf)
    order = np.argsort(-mean, kind="stable")[:UNITS_SHOWN]
    return [int(tp.units[layer][i]) for i in order]


def _region_unit(tp, shown) -> tuple[str, int]:
    """R-CNN shows a high layer's units; here the highest shown layer whose field is under 3/4 of the image
    (a box that covers everything says little), and its strongest unit."""
    hw = tp.image_hw
    small = [n for n in shown if tp.fields.get(n) and max(a / b for a, b in zip(tp.fields[n]["rf"], hw)) < 0.75]
    layer = small[-1] if small else shown[-1]
    return layer, _units(tp, layer)[0]
