"""Report section: representation inversion (from ``convlens invert``'s ``results/inversion*.json/.npz``),
drawn as Mahendran & Vedaldi's "reconstructions from intermediate layers" and "multiple reconstructions"."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("inversion", order=130)
def inversion(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.inversion import layers_figure, quadrants_figure
    from ...synthesis.inversion import from_saved

    d, arrays = ctx.result("inversion"), ctx.arrays("inversion")
    if d is None or arrays is None:
        return None
    original, per_layer = from_saved(d, arrays)
    first = next(iter(per_layer.values()))
    names = list(per_layer)
    blocks = [Metrics({"layers": ", ".join(names), "steps": str(first.steps),
                       f"error at {names[0]}": f"{first.info['feature_error'][0]:.3f}",
                       f"error at {names[-1]}": f"{per_layer[names[-1]].info['feature_error'][0]:.3f}"}),
              Figure("layers", to_png(layers_figure(original, per_layer)),
                     "The original, then the image reconstructed from its code at each layer; under each, the "
                     "relative feature error ||Φ(x*) − Φ0|| / ||Φ0|| of the reconstruction.")]
    rows = [[name, r.info.get("tapped", name), float(r.info["feature_error"][0]), float(r.info["lambda_tv"])]
            for name, r in per_layer.items()]
    blocks.append(Table(["layer", "read at", "feature error", "λ_TV"], rows,
                        caption="Relative feature error of each reconstruction and the total-variation weight used "
                                "(raised with depth, as in the paper)"))
    qd, qa = ctx.result("inversion-quadrants"), ctx.arrays("inversion-quadrants")
    if qd is not None and qa is not None:
        q_orig, quads = from_saved(qd, qa)
        layer, q = next(iter(quads.items()))
        errs = np.asarray(q.info["feature_error"], dtype=float)
        blocks.append(Figure("quadrants", to_png(quadrants_figure(q_orig, q)),
                             f"{len(errs)} reconstructions from the same {layer} code, each from its own random "
                             f"start (feature errors {errs.min():.3f}–{errs.max():.3f}): to the network at this "
                             "layer they all look the same."))
    info = first.info
    blocks.append(Text(
        f"x* = argmin ||Φ(x) − Φ0||²/||Φ0||² + λ_α R_α(x) + λ_TV R_TV(x) with α = {info['alpha']:g}, "
        f"β = {info['beta']:g}, λ_α = {info['lambda_alpha']:g}; the priors are normalized by the image's range B "
        f"and V = B/6.5 as in the paper. Gradient descent with momentum {info['momentum']:g}, normalized steps, "
        f"the learning rate decaying from {info['lr']:g} to {info['lr'] * info['final_lr']:g}, pixels kept in "
        "the valid range. Conv/fc layers are read after their ReLU."))
    return Section("inversion", "Inverting the representation", blocks,
                   intro="Given the code of an image at one layer, find an image with the same code that "
                         "\"looks natural\" (an image prior). Early layers keep almost everything, so the "
                         "reconstruction is close to the original; deeper layers are more invariant and the "
                         "reconstructions keep the object's parts and colours but lose their exact layout.",
                   cite="Mahendran & Vedaldi, Understanding Deep Image Representations by Inverting Them, CVPR 2015")
