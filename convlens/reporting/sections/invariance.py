"""Report section: invariance to translation, scale and rotation (from ``convlens invariance``'s
``results/invariance-<transform>.json``), drawn as Zeiler & Fergus's Fig. 5."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("invariance", order=60)
def invariance(ctx) -> Section | None:
    from ...insight.invariance import NORMALIZATION, TRANSFORMS, InvarianceResult
    from ...plots.common import to_png
    from ...plots.invariance import invariance_figure

    found = [d for d in (ctx.result(f"invariance-{t}") for t in TRANSFORMS) if d is not None]
    if not found:
        return None
    results = [InvarianceResult.from_dict(d) for d in found]
    first = results[0]
    how = sorted({"re-rendered exactly (shapes generator)" if r.method == "render" else f"resampled (fill={r.fill})"
                  for r in results})
    blocks = [Metrics({"images": ", ".join(first.names()), "transforms": ", ".join(r.transform for r in results),
                       "how": "; ".join(how)}),
              Figure("fig5", to_png(invariance_figure(found)),
                     "Columns: transforms. Rows: normalized distance between the feature vectors of the original and "
                     "the transformed image in a low and a high layer, then P(true class); one line per image "
                     "(open circles: misclassified).")]
    layers = list(dict.fromkeys(name for r in results for name in r.layers))
    rows = []
    for name in layers:
        row = [name]
        for r in results:
            moved = [a for a, amount in enumerate(r.amounts) if not _identity(r, amount)]
            row.append(float(np.nanmean(r.distance[r.layers.index(name)][moved])) if name in r.layers and moved
                       else None)
        rows.append(row)
    rows.append(["P(true class)"] + [float(r.p_true.mean()) for r in results])
    rows.append(["still correct"] + [f"{100 * r.correct.mean():.0f}%" for r in results])
    sweep = [f"{r.transform} {r.amounts.min():g}…{r.amounts.max():g} {r.unit}" for r in results]
    blocks.append(Table(["layer"] + [r.transform for r in results], rows,
                        caption="Mean over images and over the sweep (" + ", ".join(sweep) + ") of the normalized "
                                "distance, then mean P(true class) and the share of (image, amount) pairs still "
                                "correctly classified"))
    tapped = [f"{s} → {t}" for s, t in zip(first.layers, first.tapped) if s != t]
    blocks.append(Text(f"Distance = {NORMALIZATION}, the layer's whole output as one vector, normalized by the "
                       "original image's (as Zeiler & Fergus do)."
                       + (f" Conv/fc layers read after their ReLU ({', '.join(tapped)})." if tapped else "")))
    return Section("invariance", "Invariance to translation, scale and rotation", blocks,
                   intro="Zeiler & Fergus found that small transformations change the first layer's features a lot "
                         "and the top feature layer's much less, and that the output is stable to translation and "
                         "scaling but not to rotation, except for objects with rotational symmetry (the lecture's "
                         "\"Vertical translation / Scale changes / Rotation change\"). Here is the same measurement "
                         "on this model.",
                   cite="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, Fig. 5")


def _identity(result, amount) -> bool:
    from ...insight.invariance import is_identity

    return is_identity(result.transform, float(amount))
