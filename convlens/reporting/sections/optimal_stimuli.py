"""Report section: the lecture's "other methods" (from ``convlens invariances``' ``results/optimal-stimuli.*``
and ``results/hessian-invariances.*``): one unit's optima from several random starts under a fixed norm,
sorted by cluster (Erhan et al. 2009), and the invariances of the best one as image sequences along
geodesics of the sphere, from the Hessian (Berkes & Wiskott 2006; Le et al. 2010)."""
from __future__ import annotations

import math

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("optimal-stimuli", order=125)
def optimal_stimuli(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.invariances import invariances_figure, optimal_stimuli_figure
    from ...synthesis.invariances import HessianInvariances
    from ...synthesis.optimal_stimuli import OptimalStimuli

    blocks = []
    d, a = ctx.result("optimal-stimuli"), ctx.arrays("optimal-stimuli")
    if d is not None and a is not None:
        s = OptimalStimuli.from_saved(d, a)
        info = s.info
        off = s.cosine[~np.eye(len(s), dtype=bool)]
        blocks.append(Metrics({"unit": info["label"], "random starts": str(len(s)), "norm": f"{info['norm']:.3g}",
                               "clusters": str(s.n_clusters), "activation": f"{s.activation.min():.3g} – "
                                                                            f"{s.activation.max():.3g}",
                               "median pairwise cosine": f"{np.median(off):.2f}"}))
        blocks.append(Figure("optimal_stimuli", to_png(optimal_stimuli_figure(s)),
                             f"The optima of {info['label']} from {len(s)} random starts on the sphere "
                             f"‖x − mean‖ = {info['norm']:.3g}, sorted by cluster (a frame colour per cluster; "
                             f"optima whose average cosine similarity is at least {info['same']:g} form one), each "
                             "stretched to its own range; right: their pairwise cosine similarities in the same "
                             "order."))
        blocks.append(Table(["seed", "cluster", "activation at the start", "activation", "‖P∇f‖ / ‖∇f‖"],
                            [[info["seeds"][j], int(s.clusters[j]), float(s.start_activation[j]),
                              float(s.activation[j]), float(s.tangential_gradient[j])] for j in s.order],
                            caption="Per start: its cluster, the activation before and after, and how far the "
                                    "optimum is from a stationary point of the sphere (0 at one)"))
        blocks.append(Text(_stimuli_text(s, off)))
    d, a = ctx.result("hessian-invariances"), ctx.arrays("hessian-invariances")
    if d is not None and a is not None:
        r = HessianInvariances.from_saved(d, a)
        info = r.info
        sm = info["smooth"]
        deg = math.degrees(info["max_angle"])
        fall = r.activation[:, len(r.angles) // 2] - (r.activation[:, 0] + r.activation[:, -1]) / 2
        k = info["k"]
        blocks.append(Metrics({"x* activation": f"{info['activation']:.3g}",
                               "analysed": f"softplus β = {sm['beta']:g}" if sm["used"] else "the model as it is",
                               "copy at x*": f"{sm['activation']:.3g}", "Hessian-vector products": str(info["hvps"]),
                               "Lanczos": f"{info['eigen_seconds']:.1f} s",
                               "eigenvalues > 0": str(int((r.eigenvalues[:k + info['n_least']] > 0).sum()))}))
        blocks.append(Figure("hessian_invariances", to_png(invariances_figure(r)),
                             f"Berkes & Wiskott's figure: x* (middle) moved along the geodesic of the sphere in each "
                             f"direction, by up to ±{deg:.0f}° (the angle at which the least invariant direction has "
                             "lost half the activation), all frames on one grey scale; under each, the model's "
                             "activation; last column, the direction itself. Rows: the invariances (the largest "
                             "eigenvalues λ of the Hessian on the tangent space), the least invariant directions, "
                             "one random direction."))
        pred = r.predicted()
        pfall = pred[:, len(r.angles) // 2] - (pred[:, 0] + pred[:, -1]) / 2
        blocks.append(Table(["direction", "λ", "slope ∇f·v", f"fall at ±{deg:.0f}° (measured)",
                             "fall (quadratic model)"],
                            [[r.kinds[i] + (f" {i + 1}" if r.kinds[i] == "invariance" else ""), float(r.eigenvalues[i]),
                              float(r.slope[i]), float(fall[i]), float(pfall[i])] for i in range(len(r))],
                            caption="Per direction: its eigenvalue (the random direction's: vᵀAv), the first-order "
                                    "slope at x*, and the mean fall of the activation at ± the largest angle, "
                                    "measured on the model and predicted by the copy's quadratic model"))
        blocks.append(Text(_invariances_text(r, fall)))
    if not blocks:
        return None
    return Section("optimal-stimuli", "Optimal stimuli and their invariances", blocks,
                   intro="Maximize one unit's activation over images of a fixed norm, from several random starts: "
                         "do the starts agree on one optimum? Then, at the best optimum, which changes of the image "
                         "leave the activation nearly unchanged? Those are the eigenvectors of the Hessian of the "
                         "activation on the sphere with the eigenvalues nearest zero, shown as image sequences.",
                   cite="Erhan, Bengio, Courville & Vincent, Visualizing Higher-Layer Features of a Deep Network, "
                        "Tech. Report 1341, Université de Montréal 2009; Berkes & Wiskott, On the Analysis and "
                        "Interpretation of Inhomogeneous Quadratic Forms as Receptive Fields, Neural Computation 2006; "
                        "Le et al., Tiled Convolutional Neural Networks, NIPS 2010")


def _stimuli_text(s, off) -> str:
    if s.n_clusters == 1:
        verdict = ("Every start reached the same optimum (one cluster): one image is a fair picture of this unit, "
                   "as Erhan et al. found for their units.")
    elif s.n_clusters == len(s):
        verdict = (f"Every start found an optimum of its own (pairwise cosine {off.min():.2f} to {off.max():.2f}) "
                   f"at nearly the same activation ({s.activation.min():.3g} to {s.activation.max():.3g}): the "
                   "result depends on the initialization, and no single image is *the* optimal stimulus.")
    else:
        verdict = (f"The optima fall into {s.n_clusters} clusters (sizes "
                   f"{', '.join(map(str, np.bincount(s.clusters)))}): the unit responds to several patterns.")
    return (f"Projected gradient ascent from random points of the sphere (normalized steps with momentum, no jitter, "
            f"blur or pixel box: the optimum of the unit itself, {s.info['steps']} steps). {verdict}")


def _invariances_text(r, fall) -> str:
    info, sm, k = r.info, r.info["smooth"], r.info["k"]
    if sm["used"]:
        smoothing = (f"The network is piecewise linear in its input (ReLUs, max pooling), so its input Hessian is "
                     f"zero almost everywhere. The Hessian here is that of a copy whose ReLUs are softplus with "
                     f"β = {sm['beta']:g} (ReLU6 / clamps: a smooth clamp; replaced: "
                     f"{', '.join(f'{n} ×{c}' for n, c in sm['replaced'].items())}; max pooling kept): at x* the "
                     f"copy's activation is {sm['activation']:.4g}, the model's {info['activation']:.4g}. With a "
                     "large β the copy's curvature sits in the units whose input is within about 1/β of their "
                     "kink, so the directions are local (often a few pixels) and hold over small angles only.")
    elif info["degenerate"]:
        smoothing = ("Analysed as it is, the model's input Hessian is zero at x* (a piecewise-linear network): every "
                     "tangent direction has the same eigenvalue −(d̂·∇f)/r and none is singled out; use --beta.")
    else:
        smoothing = "The model is analysed as it is (it has no ReLU-like op to smooth)."
    positive = int((r.eigenvalues[:k + info["n_least"]] > 0).sum())
    where = ("x* is a maximum of the analysed function on the sphere (every eigenvalue found is ≤ 0)." if not positive
             else f"{positive} of the eigenvalues found are positive, and ‖P∇f‖/‖∇f‖ = "
                  f"{info['tangential_gradient']:.2f} at x*: x* is not a maximum of the analysed copy, so its "
                  "'invariances' are directions of positive curvature, not of a flat top.")
    rand = float(fall[-1])
    inv = float(np.mean(fall[:k]))
    least = float(np.mean(fall[k:-1])) if info["n_least"] else float("nan")
    return (f"{smoothing} {where} Measured at ±{math.degrees(info['max_angle']):.0f}°, the activation falls by "
            f"{inv:.3g} on average along the invariances, {least:.3g} along the least invariant directions and "
            f"{rand:.3g} along a random one. {info['hvps']} Hessian-vector products (double backprop) and Lanczos "
            f"(scipy eigsh) on the {info['dimensions']:,}-dimensional input; the Hessian itself is never formed.")
