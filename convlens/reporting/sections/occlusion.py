"""Report section: occlusion maps (from ``convlens occlusion``'s ``results/occlusion.json`` + ``.npz``),
drawn as Zeiler & Fergus's Fig. 7 triptychs."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("occlusion", order=110)
def occlusion(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.occlusion import occlusion_figure
    from ...units.occlusion import OcclusionMap

    found = ctx.result("occlusion")
    if not found or not found.get("maps"):
        return None
    arrays = ctx.arrays("occlusion") or {}
    maps = [OcclusionMap.from_dict(d, arrays.get(f"image_{i}")) for i, d in enumerate(found["maps"])]
    first = maps[0]
    how = {"incremental": "exact incremental inference (Krypton)", "full": "full forwards",
           "approximate": "approximate incremental inference"}
    blocks = [Metrics({"images": str(len(maps)), "square": f"{first.window}x{first.window} px",
                       "stride": f"{first.stride} px", "positions": f"{first.p_target.size} per image",
                       "method": ", ".join(sorted({how.get(m.method, m.method) for m in maps}))}),
              Figure("occlusion", to_png(occlusion_figure(maps)),
                     "One row per image. Left: the image under P(target class) for each position of the square "
                     "(each cell at the square's centre; dashed: where P drops most). Middle: the most probable "
                     "class per position. Right: the total activation of one feature map of the last conv layer "
                     "(its strongest unit on the unoccluded image) per position.")]
    rows = []
    for m in maps:
        i, j = np.unravel_index(np.argmin(m.p_target), m.p_target.shape)
        others = sorted({m.name(k) for k in np.unique(m.top_class)} - {m.name(m.target)})
        rows.append([f"#{m.index}" if m.index is not None else "-", m.name(m.label) if m.label is not None else "-",
                     m.name(m.target), m.p_clean, float(m.p_target.min()),
                     f"row {m.rows[i]}, col {m.cols[j]}", f"{100 * float((m.top_class != m.target).mean()):.0f}%",
                     ", ".join(others) or "-",
                     f"{m.layer} #{m.unit}" if m.layer is not None else "-"])
    blocks.append(Table(["image", "true class", "target", "P unoccluded", "min P", "square at (min P)",
                         "positions not predicting target", "other classes predicted", "feature map"], rows,
                        caption="P(target) with and without the square, and what the model predicts instead"))
    notes = [m.note for m in maps if m.note]
    text = ("The square has value " + ", ".join(f"{v:g}" for v in sorted(set(first.baseline)))
            + " in [0, 1] pixel units (before the run's normalization).")
    approx = [m for m in maps if m.approx_error is not None]
    if approx:
        worst = max(approx, key=lambda m: m.approx_error)
        text += (f" Approximate mode: |ΔP(target)| ≤ {worst.approx_error:.3g} against the exact map, "
                 + ("guaranteed (every truncated position verified exactly)" if worst.bound == "guaranteed" else
                    f"sampled ({int(worst.verified.sum())} positions verified exactly, extrapolated to the rest)")
                 + ".")
    if notes:
        text += " " + notes[0]
    blocks.append(Text(text))
    return Section("occlusion", "Occlusion: which parts of the image the prediction depends on", blocks,
                   intro="Zeiler & Fergus slide a grey square over the image and watch the classifier: if the model "
                         "really locates the object (rather than relying on context), P(true class) drops sharply "
                         "when the square covers it, the most probable class changes there, and the strongest "
                         "feature map of the top conv layer loses activity at the same place (the lecture's "
                         "occlusion experiments).",
                   cite="Zeiler & Fergus, Visualizing and Understanding Convolutional Networks, ECCV 2014, Fig. 7; "
                        "Nakandala et al., Incremental and Approximate Inference for Faster Occlusion-based Deep "
                        "CNN Explanations, SIGMOD 2019")
