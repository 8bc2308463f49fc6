"""Report section: CNN vs Human, from the labeling game's answers (``convlens serve`` -> ``/label``), shown when
the run has answers for the report's test images and the run's current weights."""
from __future__ import annotations

from pathlib import Path

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


def _pct(x) -> str:
    return "–" if x is None or x != x else f"{100 * x:.1f}%"


def _ci(c) -> str:
    return "" if c[0] is None or c[0] != c[0] else f"[{100 * c[0]:.1f}, {100 * c[1]:.1f}]"


@section("human-vs-cnn", order=35)
def human_vs_cnn(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...results import ResultStore
    from ...results.labels import LabelStore
    from ...results.provenance import data_key
    from ...training.human_vs_cnn import CATEGORIES, CELL_TITLES, CELLS, KARPATHY_2014

    if ctx.run.dir is None:
        return None
    store = LabelStore(ctx.run.dir, create=False)
    if not store.exists:
        return None
    source = str(ctx.data) if isinstance(ctx.data, (str, Path)) else None
    key = data_key(ctx.run.manifest.get("data"), {"data": source})
    result = store.comparison(data=key, weights=ResultStore(ctx.run.dir).weights_key(),
                              class_names=ctx.run.class_names)
    if not result.n:
        return None
    d = result.to_dict()
    t, t1 = d["table"], d["table_top1"]
    blocks = [Metrics({"images labelled": f"{d['n']:,}", "annotators": str(len(d["annotators"])),
                       "human top-5 error": _pct(d["human"]["top5_error"]), "CNN top-5 error": _pct(d["cnn"]["top5_error"]),
                       "human top-1 error": _pct(d["human"]["top1_error"]), "CNN top-1 error": _pct(d["cnn"]["top1_error"]),
                       "McNemar p (top-5)": f"{d['mcnemar_p']:.3g}",
                       "error consistency kappa": "undefined" if d["kappa"] != d["kappa"] else f"{d['kappa']:.2f}"}),
              Figure("table", to_png(result.plot()),
                     "Left: who was right at top-5, as on the lecture's slide. Middle: both errors with 95% Wilson "
                     "intervals. Right: seconds per image.")]
    blocks.append(Table(["", "CNN right (top-5)", "CNN wrong (top-5)", "CNN right (top-1)", "CNN wrong (top-1)"],
                        [["human right", t["both_correct"], t["human_only_correct"], t1["both_correct"],
                          t1["human_only_correct"]],
                         ["human wrong", t["cnn_only_correct"], t["both_wrong"], t1["cnn_only_correct"], t1["both_wrong"]]],
                        caption=f"The 2x2 tables (McNemar's exact p: top-5 {d['mcnemar_p']:.3g}, top-1 "
                                f"{d['mcnemar_p_top1']:.3g}). Karpathy's, 1,500 ILSVRC images: both right "
                                f"{KARPATHY_2014['both_correct']}, only the human {KARPATHY_2014['human_only_correct']}, "
                                f"only the CNN {KARPATHY_2014['cnn_only_correct']}, both wrong {KARPATHY_2014['both_wrong']}."))
    blocks.append(Table(["", "top-1 error", "95% interval", "top-5 error", "95% interval"],
                        [[who, _pct(d[key_]["top1_error"]), _ci(d[key_]["top1_ci"]), _pct(d[key_]["top5_error"]),
                          _ci(d[key_]["top5_ci"])] for who, key_ in (("human", "human"), ("CNN", "cnn"))],
                        caption="Errors on the same images"))
    cats = d["categories"]
    if any(cats[c][k] for c in CELLS[1:] for k in CATEGORIES):
        blocks.append(Table(["kind of error", *(CELL_TITLES[c] for c in CELLS[1:])],
                            [[title, *(cats[c][k] for c in CELLS[1:])] for k, title in CATEGORIES.items()]
                            + [["untagged", *(cats[c]["untagged"] for c in CELLS[1:])]],
                            caption="Karpathy's kinds of error, as the annotators tagged them (top-5 cells)"))
    if len(d["per_annotator"]) > 1:
        blocks.append(Table(["annotator", "images", "human top-5", "CNN top-5", "McNemar p", "kappa"],
                            [[s["annotator"], s["n"], _pct(s["human"]["top5_error"]), _pct(s["cnn"]["top5_error"]),
                              f"{s['mcnemar_p']:.3g}", "–" if s["kappa"] != s["kappa"] else f"{s['kappa']:.2f}"]
                             for s in d["per_annotator"]], caption="Per annotator"))
    per_class = sorted(d["per_class"], key=lambda r: -r["n"])[:30]
    blocks.append(Table(["class", "images", "human top-1", "CNN top-1", "human top-5", "CNN top-5"],
                        [[r["class"], r["n"], _pct(r["human_top1"]), _pct(r["cnn_top1"]), _pct(r["human_top5"]),
                          _pct(r["cnn_top5"])] for r in per_class],
                        caption="Per class" + (f" (the 30 with most answers of {len(d['per_class'])})"
                                               if len(d["per_class"]) > 30 else "")))
    if len(ctx.run.class_names or ()) <= 10:
        blocks.insert(1, Text(f"With {len(ctx.run.class_names)} classes five guesses are nearly always right: the "
                              "top-1 table is the one to read."))
    if len(d["annotators"]) > 1:
        blocks.append(Text("Pooled over annotators: an image answered by several people counts once per answer (for "
                           "the CNN too), so the pooled McNemar test assumes more independence than the rows have."))
    return Section("human-vs-cnn", "CNN vs Human", blocks,
                   intro="The lecture's labeling game (convlens serve RUN, then /label): people labelled the test "
                         "images with up to five classes each, and the model is scored on exactly the same images. "
                         "The error consistency kappa (Geirhos et al. 2020) says whether the two err on the same "
                         "images beyond what their accuracies imply.",
                   cite="Karpathy 2014, What I learned from competing against a ConvNet on ImageNet; Russakovsky et "
                        "al. 2015, ImageNet Large Scale Visual Recognition Challenge, section 6.4")
