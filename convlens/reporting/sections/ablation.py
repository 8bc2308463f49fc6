"""Report section: layer ablation (from ``convlens ablate``'s ``results/ablation.json``)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table
from ..registry import section


@section("ablation", order=55)
def ablation(ctx) -> Section | None:
    from ...insight.ablation import AblationResult
    from ...plots.common import to_png

    d = ctx.result("ablation")
    if d is None:
        return None
    res = AblationResult.from_dict(d)
    metrics = {"full network": f"{100 * res.full.accuracy:.2f}%", "parameters": f"{res.full.params:,}",
               "retraining": res.how, "test images": f"{res.n_test:,}"}
    rows = [[r.label, r.params_removed, r.params, f"{100 * r.accuracy:.2f}%",
             f"{100 * r.drop:.1f}" if r.removed else "-", round(r.seconds), ", ".join(r.reinitialized) or "-"]
            for r in res.rows]
    blocks = [
        Metrics(metrics),
        Table(["layers removed", "params removed", "params left", "test accuracy", "drop (points)", "training (s)",
               "re-initialized"],
              rows, caption="Each conv/fc layer is removed with its BN/ReLU/LRN/dropout; the next layer is "
                            "re-sized and every network retrained the same way."),
    ]
    if len(res.rows) > 1:
        blocks.append(Figure("drops", to_png(res.plot()), "Accuracy lost by each removal (percentage points)."))
    return Section("ablation", "Layer ablation", blocks,
                   intro="Which layers matter? Remove them, retrain, and compare test accuracy with the full network "
                         "(the lecture's \"Architecture of Krizhevsky et al.\" slides: depth is key).",
                   cite="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, §5.1")
