"""Report section: training health (from ``convlens health``'s ``results/health.json``)."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("health", order=40)
def health(ctx) -> Section | None:
    from ...insight.health import HealthReport
    from ...plots.common import to_png
    from ...plots.health import health_overview, layer_figure

    d = ctx.result("health")
    if d is None:
        return None
    report = HealthReport.from_dict(d)
    t = report.thresholds
    rows = [[h.name, h.units, f"{100 * h.dead_fraction:.0f}%", f"{100 * h.sparsity_samples:.0f}%",
             f"{100 * h.constant_fraction:.0f}%", h.mean_variance,
             "-" if h.mean_abs_corr is None else f"{h.mean_abs_corr:.2f}", h.verdict] for h in report.layers]
    blocks = [
        Metrics({"verdict": "healthy" if report.healthy else "needs a look", "samples": f"{report.samples:,}",
                 "layers": str(len(report.layers)),
                 "flagged": str(sum(1 for h in report.layers if h.issues))}),
        Table(["layer", "units", "dead", "sparsity", "ignore input", "variance", "mean |r|", "verdict"], rows,
              caption="Per layer: dead = never active; sparsity = inactive share (units x samples); ignore input = "
                      "live units whose variance is under "
                      f"{100 * t['rel_variance']:.0f}% of their mean square; mean |r| over unit pairs"),
        Figure("overview", to_png(health_overview(d)),
               "Shares of dead, input-ignoring and always-on units and mean |r| per layer (dashed: verdict "
               "thresholds), then each layer's sparsity across samples (per unit) and across features (per sample)."),
    ]
    flagged = [h for h in report.layers if h.issues]
    shown = flagged[0] if flagged else max(report.layers, key=lambda h: h.mean_abs_corr or 0.0)
    blocks.append(Figure(f"layer-{shown.name}", to_png(layer_figure(d["layers"][report.layers.index(shown)])),
                         f"{shown.name}: activation matrix (samples x units; good training looks sparse, with no "
                         "constant columns) and unit-correlation matrix (good training: near 0 off the diagonal)."))
    pairs = [[h.name, f"{a} & {b}", f"{r:.3f}"] for h in report.layers for a, b, r in h.top_pairs[:3]]
    if pairs:
        blocks.append(Table(["layer", "units", "r"], pairs, caption="Most-correlated unit pairs per layer"))
    blocks.append(Text(f"Verdict thresholds: many dead units at ≥ {100 * t['dead_fraction']:.0f}% dead; low "
                       f"variance at ≥ {100 * t['constant_fraction']:.0f}% input-ignoring units; strongly "
                       f"correlated at mean |r| ≥ {t['mean_abs_corr']:.2f}; not sparse below "
                       f"{100 * t['min_sparsity']:.0f}% inactive. Conv units are channels: activity is the share of "
                       "positions > 0, variance and correlation run over samples x positions."))
    return Section("health", "Training health", blocks,
                   intro="Good training: hidden units are sparse across samples and across features, and feature maps "
                         "are uncorrelated with high variance. Bad training: many hidden units ignore the input "
                         "and/or exhibit strong correlations.",
                   cite="M. Ranzato, \"other things good to know\" (the lecture's closing slides)")
