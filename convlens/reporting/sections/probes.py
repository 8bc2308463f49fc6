"""Report section: linear probes per layer (from ``convlens probe``'s ``results/probe.json``)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("probes", order=50)
def probes(ctx) -> Section | None:
    from ...insight.probes import ProbeResult
    from ...plots.common import to_png

    d = ctx.result("probe")
    if d is None:
        return None
    res = ProbeResult.from_dict(d)
    fit = sum(sum(v.values()) for v in res.timing.get("fit_s", {}).values())
    metrics = {"test images": f"{res.n_test:,}", "random splits": str(res.repeats),
               "chance": f"{100 * res.chance:.1f}%",
               "time": f"{res.timing.get('extract_s', 0):.1f} s features + {fit:.1f} s classifiers"}
    tapped = [f"{a} → {b}" for a, b in zip(res.layers, res.tapped) if a != b]
    blocks = [
        Metrics(metrics),
        Table(res.headers(), res.table(), caption="Test accuracy (%), mean ± std over random training splits"),
        Figure("accuracy-vs-depth", to_png(res.plot()),
               "Probe accuracy per layer with ± std error bars; higher layers should be at least as "
               "discriminative."),
        Text((f"Features: {res.pool}-pooled over space" if res.pool != "flat" else "Features: every value")
             + (f"; conv/fc layers read after their ReLU ({', '.join(tapped)})." if tapped else ".")),
    ]
    return Section("probes", "Linear probes per layer", blocks,
                   intro="A linear SVM or a softmax classifier is trained on the features tapped at each layer, "
                         "with n training images per class, and tested on the test set (the lecture's \"Tapping off "
                         "Features @each Layer\" table).",
                   cite="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, §5.2")
