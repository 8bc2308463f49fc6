"""Report section: Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad and Integrated Gradients of a few images
(from ``convlens saliency --method gradcam``'s ``results/attribution.json`` + ``.npz``)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("attribution", order=104)
def attribution(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...units.attribution_views import AttributionResult

    d, arrays = ctx.result("attribution"), ctx.arrays("attribution")
    if d is None or arrays is None:
        return None
    res = AttributionResult.from_parts(d, arrays)
    p = res.params
    err = res.ig_error
    blocks = [Metrics({"images": str(len(res)), "Grad-CAM layer": str(p.get("layer")),
                       "SmoothGrad": f"{p.get('samples')} samples, noise {p.get('noise')} of the range",
                       "IG": f"{p.get('steps')} steps ({p.get('ig_method')}), baseline {p.get('ig_baseline')}",
                       "IG completeness error (max)": f"{100 * float(err.max()):.2f}%"}),
              Figure("attribution", to_png(res.plot("all")),
                     "Rows: the image; Grad-CAM and Grad-CAM++ over it (jet, each scaled to its maximum); guided "
                     "Grad-CAM (signed, grey at 0, per-image contrast); SmoothGrad of the saliency map and Integrated "
                     "Gradients' absolute attributions summed over colour channels (white: the 99th percentile).")]
    rows = [[res.indices[i] if res.indices else i, res.name(int(res.targets[i])), res.name(int(res.predicted[i])),
             float(res.ig_scores[i]), float(res.ig_baseline_scores[i]), float(res.ig_delta[i]), f"{100 * err[i]:.2f}%"]
            for i in range(len(res))]
    blocks.append(Table(["image", "class (target)", "predicted", "score", "baseline score", "IG sum - difference",
                         "completeness error"], rows,
                        caption="Integrated Gradients' completeness: its attributions add up to the score's difference "
                                "between the image and the baseline, up to the integral's approximation"))
    blocks.append(Text("Grad-CAM weighs the last convolutional layer's feature maps by their average gradient: a coarse "
                       "map of where the class is, at that layer's resolution. Guided Grad-CAM multiplies it with guided "
                       "backpropagation for detail. SmoothGrad averages the saliency map over noisy copies of the image; "
                       "Integrated Gradients sums the gradient along the path from a black image. Which of these maps "
                       "depend on what the model learned is measured in the sanity checks below."))
    return Section("attribution", "Grad-CAM, SmoothGrad and Integrated Gradients", blocks,
                   intro="Newer answers to \"which pixels does the class score depend on?\" than the gradient itself.",
                   cite="Selvaraju et al., Grad-CAM, ICCV 2017; Chattopadhay et al., Grad-CAM++, WACV 2018; Smilkov "
                        "et al., SmoothGrad, 2017; Sundararajan, Taly & Yan, Axiomatic Attribution for Deep Networks, "
                        "ICML 2017")
