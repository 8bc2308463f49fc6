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
    per_class, confusion, names, note = _present(d)
    blocks += [
        Figure("per-class", to_png(per_class_accuracy(per_class)), f"Top-1 accuracy per class (red: below 90%){note}."),
        Figure("confusion", to_png(confusion_matrix(confusion, names)),
               f"Confusion matrix: rows are true classes, columns predictions (counts printed){note}."),
    ]
    if d["most_confused"]:
        blocks.append(Table(["true class", "predicted as", "images", "share of the class"],
                            [[r["true"], r["predicted"], r["count"], f"{100 * r['fraction']:.1f}%"]
                             for r in d["most_confused"]], caption="Most-confused pairs"))
    return Section("evaluation", "Evaluation", blocks,
                   intro="Top-k error as ILSVRC scores it: an image counts as correct at top-5 when the true "
                         "class is among the five highest scores.")


def _present(d: dict):
    """(per-class accuracy, confusion matrix, class names, caption note) restricted, for a model with many
    classes (an ImageNet net: 1,000), to the classes that have test images or were predicted: a figure of
    every class would be unreadable and its canvas would not fit in memory."""
    import numpy as np

    names, confusion = list(d["class_names"]), np.asarray(d["confusion"])
    if len(names) <= 30:
        return d["per_class"], d["confusion"], names, ""
    keep = [i for i in range(len(names)) if confusion[i].sum() or confusion[:, i].sum()]
    shown = [names[i] for i in keep]
    note = f" (the {len(keep)} of {len(names)} classes that have test images or were predicted)"
    per_class = {k: v for k, v in d["per_class"].items() if k in shown}
    return per_class, confusion[np.ix_(keep, keep)].tolist(), shown, note
