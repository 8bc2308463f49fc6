"""Report section: top-1/top-5 error, per-class accuracy, easiest/hardest classes, confusions."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table
from ..registry import section


@section("evaluation", order=30)
def evaluation(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.evaluation import class_examples, confusion_matrix, per_class_accuracy

    ev = ctx.evaluation
    d = ev.to_dict()
    images = ctx.test_data.images
    metrics = {"test images": f"{d['n']:,}", "top-1 error": f"{100 * d['top1_error']:.2f}%"}
    if "top5_error" in d:
        metrics["top-5 error"] = f"{100 * d['top5_error']:.2f}%"
    metrics["classes"] = str(d["num_classes"])
    blocks = [Metrics(metrics)]
    n_show = min(5, max(1, d["num_classes"] // 2))
    for title, rows in (("Easiest classes", ev.easiest(n_show)), ("Hardest classes", ev.hardest(n_show))):
        fig = class_examples(rows, images, predictions=ev.predictions, class_names=ev.class_names,
                             title=f"{title} (accuracy %)")
        if fig is not None:
            blocks.append(Figure(title.lower().replace(" ", "-"), to_png(fig),
                                 f"{title}, as on the lecture's ILSVRC slide: one test image per class "
                                 f"({'correctly classified' if title.startswith('Easiest') else 'misclassified, with the prediction'})."))
    blocks += [
        Figure("per-class", to_png(per_class_accuracy(d["per_class"])), "Top-1 accuracy per class (red: below 90%)."),
        Figure("confusion", to_png(confusion_matrix(d["confusion"], d["class_names"])),
               "Confusion matrix: rows are true classes, columns predictions (counts printed)."),
    ]
    if d["most_confused"]:
        blocks.append(Table(["true class", "predicted as", "images", "share of the class"],
                            [[r["true"], r["predicted"], r["count"], f"{100 * r['fraction']:.1f}%"]
                             for r in d["most_confused"]], caption="Most-confused pairs"))
    return Section("evaluation", "Evaluation", blocks,
                   intro="Top-k error as ILSVRC scores it: an image counts as correct at top-5 when the true "
                         "class is among the five highest scores.")
