"""Report section: the first layer's filters as the AlexNet figure draws them, and the lecture's quiz
("good / too noisy / too correlated / lacks structure") answered for every conv layer. Computed from
the run's weights (no data, well under a second for the demo net); ``convlens filters`` prints and
saves the same."""
from __future__ import annotations

from ..blocks import Figure, Section, Table, Text
from ..registry import section


@section("filters", order=80)
def filters_section(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...units.filters import THRESHOLDS, conv_layers, filters

    if not conv_layers(ctx.model):
        return None
    result = filters(ctx.run)
    first = result.diagnosis
    t = result.thresholds
    blocks = [Figure("first-layer", to_png(result.plot()),
                     f"{first.name}: each filter min-max normalized on its own (RGB tiles as in Krizhevsky et al.'s "
                     f"Fig. 3{'' if result.sees_image else '; rows: filters, columns: input channels'}); a red frame "
                     "marks a filter with a near-copy in the layer.")]
    rows = []
    for d in result.layers:
        pct = lambda v: "n/a" if v is None else f"{100 * v:.0f}%"  # noqa: E731
        rows.append([d.name, "x".join(map(str, d.shape)), pct(d.high_frequency), pct(d.high_frequency_random),
                     "n/a" if d.smoothness is None else round(d.smoothness, 2) + 0.0,  # + 0.0: no "-0.0"
                     "n/a" if d.smoothness_random is None else round(d.smoothness_random, 2) + 0.0,
                     "n/a" if d.structure_z is None else round(d.structure_z, 1), round(d.similarity, 2),
                     pct(d.redundancy), d.verdict])
    blocks.append(Table(["layer", "filters", "high-freq", "random", "smoothness", "random", "z", "max |cos|",
                         "near-copies", "verdict"], rows,
                        caption=f"Thresholds: too noisy at a median high-frequency share >= "
                                f"{t['high_frequency']:.0%}; lacks structure at z < {t['structure_z']:g} or a "
                                f"smoothness gain over random < {t['structure_gain']:g}; too correlated at >= "
                                f"{t['redundancy']:.0%} near-copies (cos >= {t['duplicate_cos']:g})."))
    blocks.append(Text("High-freq: the share of a filter's energy above 0.25 cycles/pixel (2-D DFT, the filter's "
                       "mean removed), median over filters; random i.i.d. filters put about 80% there. Smoothness: "
                       "the lag-1 spatial autocorrelation of the weights (Moran's I), median over filters, against "
                       "random filters of the same shape; z is that difference in standard errors. max |cos|: each "
                       "filter's largest |cosine| to another filter, averaged; near-copies: the share of filters that "
                       "duplicate another (cos >= 0.9; a negated filter is not a copy when a ReLU follows). Kernels "
                       "below 4x4 get no frequency measure, 1x1 kernels no smoothness either (n/a)."))
    notes = [f"{d.name}: {r}" for d in result.layers for r in d.reasons if d.issues]
    if notes:
        blocks.append(Text("Why: " + " — ".join(notes)))
    if t != THRESHOLDS:
        blocks.append(Text("Non-default thresholds were used."))
    return Section("filters", "Filters: good, noisy, correlated or structureless?", blocks,
                   intro="The lecture's quiz on first-layer filters: good training gives filters that exhibit "
                         "structure and are uncorrelated; bad training gives filters that are too noisy, too "
                         "correlated, or lack structure. Here is this model's first layer, and the same three "
                         "questions asked of every conv layer's weights (higher layers combine feature maps, not "
                         "pixels, and are less smooth even when trained well: read their verdicts as hints).",
                   cite="Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep CNNs, NIPS 2012, Fig. 3; "
                        "M. Ranzato's \"Diagnosing: a quiz\"")
