"""Report section: fooling a binary linear classifier (the lecture's walk-through, computed on the fly)
and the nudge needed vs input dimension (from ``results/eps-vs-dimension.json`` when it was saved)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("linear-fooling", order=70)
def linear_fooling(ctx) -> Section | None:
    from ...insight.linear_fooling import EpsVsDimension, fmt_number, dot_product_text, fool_linear
    from ...plots.common import to_png

    r = fool_linear()  # the lecture's numbers: cheap, always shown
    num = fmt_number
    before, after = num(r.score_before), num(r.score_after)
    blocks = [
        Table([""] + [str(i + 1) for i in range(len(r.x))],
              [["x (input example)"] + [num(v) for v in r.x], ["w (weights)"] + [num(v) for v in r.w],
               [f"adversarial x = x + {num(r.eps)}·sign(w)"] + [num(v) for v in r.x_adv]],
              caption="Logistic regression P(y=1 | x) = σ(w·x + b), b = 0"),
        Text(f"class 1 score before: {dot_product_text(r.w * r.x, r.b)} = {before} ⇒ probability of class 1 is "
             f"1/(1+e^(−({before}))) = {r.prob_before:.4f}"),
        Text(f"class 1 score after: {dot_product_text(r.w * r.x_adv, r.b)} = {after} ⇒ probability of class 1 is "
             f"now 1/(1+e^(−({after}))) = {r.prob_after:.2f}, i.e. we improved the class 1 probability from "
             f"{100 * r.prob_before:.0f}% to {100 * r.prob_after:.0f}%"),
        Metrics({"score": f"{before} → {after}", "P(class 1)": f"{r.prob_before:.4f} → {r.prob_after:.4f}",
                 "smallest flipping eps": f"{r.min_eps:.3g} = |score| / ||w||₁"}),
    ]
    d = ctx.result("eps-vs-dimension")
    if d is not None:
        res = EpsVsDimension.from_dict(d)
        blocks += [
            Figure("eps-vs-dimension", to_png(res.plot()),
                   f"Smallest per-pixel nudge |w·x + b| / ||w||₁ that flips a logistic regression "
                   f"({res.classes[0]} vs {res.classes[1]}, {res.data}) at each input resolution; median and "
                   "25–75% of the test images."),
            Table(list(res.HEADERS), [[c if not isinstance(c, float) or i != 6 else f"{100 * c:.1f}%"
                                       for i, c in enumerate(row)] for row in res.rows()],
                  caption=f"log-log slope of the median: {res.slope:.2f}"),
        ]
    else:
        blocks.append(Text("The nudge needed vs input dimension is not computed for this report; run "
                           "`convlens fool-linear --dims --out RUN/results/eps-vs-dimension.json` to add it."))
    return Section("linear-fooling", "Fooling a linear classifier", blocks,
                   intro="Nudging every input by eps in the direction of its weight's sign moves the score by "
                         "eps·||w||₁, so with many input dimensions a tiny nudge per dimension suffices "
                         "(\"this was only with 10 input dimensions; a 224x224 input image has 150,528\").",
                   cite="Goodfellow, Shlens & Szegedy, Explaining and Harnessing Adversarial Examples, ICLR 2015")
