"""Report section: adversarial examples (from ``convlens adversarial``'s ``results/adversarial.json/.npz``
and ``results/fgsm-sweep.json``), drawn as the lecture's "correct + distort = ostrich" triptychs."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("adversarial", order=140)
def adversarial(ctx) -> Section | None:
    from ...plots.adversarial import sweep_figure
    from ...plots.common import to_png
    from ...synthesis.adversarial import AdversarialResult

    d, arrays, sweep = ctx.result("adversarial"), ctx.arrays("adversarial"), ctx.result("fgsm-sweep")
    if (d is None or arrays is None) and sweep is None:
        return None
    blocks = []
    if d is not None and arrays is not None:
        r = AdversarialResult.from_saved(d, arrays)
        goal = "untargeted" if r.target is None else "into " + ", ".join(sorted({r.name(t) for t in r.target}))
        blocks.append(Metrics({"method": r.method, "goal": goal, "success": f"{int(r.success.sum())}/{len(r)}",
                               "mean L2": f"{r.l2.mean():.3g}", "mean L∞": f"{r.linf.mean():.3g}"
                               + (f" ({255 * r.linf.mean():.1f}/255)" if r.box == (0.0, 1.0) else "")}))
        blocks.append(Figure("triptych", to_png(r.plot()),
                             "Each row: a correctly classified image, the distortion magnified ×10 around mid-grey, "
                             "and the distorted image with the class and probability the network now gives it."))
        pb, pa = r.pred_before, r.pred_after
        rows = [[r.name(pb[i]), f"{100 * r.probs_before[i, pb[i]]:.1f}%", r.name(pa[i]),
                 f"{100 * r.probs_after[i, pa[i]]:.1f}%", float(r.l2[i]), float(r.linf[i]), bool(r.success[i])]
                for i in range(len(r))]
        blocks.append(Table(["before", "P", "after", "P", "L2", "L∞", "success"], rows,
                            caption="Distortion in [0, 1] pixel units over all C·H·W values of the image"))
        blocks.append(Text(_how(r)))
    if sweep is not None:
        blocks.append(Figure("fgsm-sweep", to_png(sweep_figure([sweep])),
                             f"Accuracy on {sweep['n']} test images after an untargeted FGSM step x + eps·sign(∇ "
                             "loss) of L∞ size eps (Goodfellow et al. 2015)."))
    return Section("adversarial", "Adversarial examples", blocks,
                   intro="A small distortion, chosen by following the gradient of the class score with respect to "
                         "the image, makes a correctly classified image be classified as any class we like — the "
                         "lecture's \"correct + distort = ostrich\". The distortion is nearly invisible.",
                   cite="Szegedy et al., Intriguing properties of neural networks, ICLR 2014; Goodfellow et al., "
                        "Explaining and Harnessing Adversarial Examples, ICLR 2015")


def _how(r) -> str:
    if r.method == "lbfgs":
        return ("Box-constrained L-BFGS on c·||r||² − log P(target | x + r) with x + r kept in [0, 1]; a line "
                "search on c per image keeps the largest c (the smallest distortion) for which the target is top-1.")
    if r.method == "fgsm":
        return f"One fast-gradient-sign step of size eps = {r.params.get('eps', 0):.4g}, clipped to [0, 1]."
    return (f"{r.params.get('steps')} projected gradient-sign steps inside the L∞ ball eps = "
            f"{r.params.get('eps', 0):.4g} and the box [0, 1].")
