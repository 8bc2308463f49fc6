"""Report section: class saliency, its GrabCut segmentation (with IoU against the true masks where
known) and deconvnet / guided-backprop projections of the same images (from ``convlens saliency``'s
``results/saliency.json`` + ``.npz``)."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section

TOP_UNITS = 4  # units per layer in the "deconv of the top-9" figure


@section("saliency", order=100)
def saliency(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...units.segment import BackpropResult

    d, arrays = ctx.result("saliency"), ctx.arrays("saliency")
    if d is None or arrays is None:
        top = _deconv_top(ctx)
        return None if not top else Section("saliency", "Deconvnet projections of the top-9 patches", top,
                                            cite="Zeiler & Fergus, Visualizing and Understanding Convolutional "
                                                 "Networks, ECCV 2014, Fig. 2")
    res = BackpropResult.from_parts(d, arrays)
    ious = res.iou
    seg = res.segment_params
    metrics = {"images": str(len(res.images)), "data": res.data or "-"}
    if ious is not None:
        metrics["mean IoU (GrabCut vs true mask)"] = f"{ious.mean():.3f}"
    metrics["GrabCut seeds"] = (f"saliency > {100 * seg.get('fg_quantile', 0.95):g}% / < "
                                f"{100 * seg.get('bg_quantile', 0.30):g}% quantile, {seg.get('iterations', 5)} rounds")
    blocks = [Metrics(metrics),
              Figure("saliency-segmentation", to_png(res.plot("saliency")),
                     "Rows: the image, its class saliency map max_c |dS_c/dI| (white: most salient), the GrabCut "
                     "mask seeded by it" + (", and the true object mask; the IoU of the two in the corner of each mask."
                                            if ious is not None else ".")),
              Figure("projections", to_png(res.plot("projections")),
                     "Deconvnet and guided-backprop projections of the same class scores to pixel space, "
                     "normalized per image (grey: 0).")]
    rows = [[res.indices[i] if res.indices else i, res.name(int(res.targets[i])), res.name(int(res.predicted[i])),
             int(res.masks[i].sum())] + ([float(ious[i])] if ious is not None else []) for i in range(len(res.images))]
    blocks.append(Table(["image", "class (target)", "predicted", "mask pixels"] + (["IoU"] if ious is not None else []),
                        rows, caption="Per image: the class whose score was differentiated, the prediction, the size "
                                      "of the GrabCut mask" + (" and its IoU with the true mask" if ious is not None
                                                               else "")))
    blocks.append(Text("The classifier never saw a mask: the saliency map alone seeds the segmentation. The "
                       "foreground colour model is fitted to the most salient pixels, the background model to the "
                       "least salient ones; a graph cut then labels every pixel by colour and neighbourhood, and the "
                       "largest connected foreground component is kept (Simonyan et al., Sec. 3.1). Deconvnet "
                       "rectifies the signal at each ReLU on the way down; guided backprop also keeps only where the "
                       "forward ReLU input was positive, which is why its picture is sharper."))
    blocks += _deconv_top(ctx)
    return Section("saliency", "Saliency, segmentation and backprop projections", blocks,
                   intro="Which pixels does the class score depend on? The lecture's \"Image Specific Class Saliency "
                         "Visualization\": the gradient of the class score with respect to the image, its absolute "
                         "value maximized over colour channels, and the graph-cut segmentation it seeds; next to it "
                         "the deconvnet projection of the same score (Zeiler & Fergus) and guided backpropagation.",
                   cite="Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR workshop 2014; "
                        "Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014; "
                        "Springenberg et al., Striving for Simplicity, ICLR workshop 2015")


def _deconv_top(ctx) -> list:
    """Zeiler & Fergus Fig. 2 from the saved top patches (``convlens top-patches``): for a low, a middle
    and a high layer, the strongest units' top-9 patches beside their deconvnet projections."""
    from ...errors import ConvLensError
    from ...plots.backprop import deconv_top_figure
    from ...plots.common import to_png
    from ...units.backprop import top_projections
    from ...units.patches import TopPatches

    d, arrays = ctx.result("top-patches"), ctx.arrays("top-patches")
    if d is None or arrays is None:
        return []
    try:
        top = TopPatches.from_parts(d, arrays)
        if top.data_spec:
            from ... import datasets

            data = datasets.load(**top.data_spec)
        else:
            data = ctx.test_data
        top.source(data)  # the very images they were mined on, or DataError
    except (ConvLensError, OSError, KeyError, TypeError) as err:
        return [Text(f"Deconvnet projections of the top-9 patches are not shown: the patches or the images they "
                     f"were mined on could not be read back ({err}).")]
    names = list(top.layers)
    layers = names if len(names) <= 3 else [names[0], names[len(names) // 2], names[-1]]
    model, rows = ctx.run.pixel_model(), []
    for n in layers:
        v = top.values[n]                                              # (U, k), NaN where no image
        best = np.nan_to_num(v, nan=-np.inf).max(1)                   # (U,) the top-1 value
        units = [int(top.units[n][i]) for i in np.argsort(-best, kind="stable")[:TOP_UNITS]]
        rows.append((n, [(u, top_projections(model, top, data, n, u), top.crops(n, u, data, pad=True))
                         for u in units]))
    fig = deconv_top_figure(rows, k=top.k)
    return [Figure("deconv-top9", to_png(fig),
                   f"Zeiler & Fergus's Fig. 2 on this model: per unit (the {TOP_UNITS} strongest of "
                   f"{', '.join(layers)}), "
                   f"its top-{top.k} test patches (right) and, on the left, each image projected to pixel space by "
                   "the deconvnet from that unit's strongest activation alone (everything else in the layer "
                   "zeroed), cropped to the same receptive field and normalized per patch (grey: 0).")]
