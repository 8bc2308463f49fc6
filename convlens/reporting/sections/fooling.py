"""Report section: fooling images (from ``convlens fooling``'s ``results/fooling-<method>.json/.npz``), drawn as
Nguyen et al.'s figure of unrecognizable images, one per class, with the model's confidence."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("fooling", order=145)
def fooling(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...plots.fooling import fooling_figure, percent
    from ...synthesis.class_model import from_saved
    from ...synthesis.fooling import METHODS

    results = []
    for method in METHODS:
        d, a = ctx.result(f"fooling-{method}"), ctx.arrays(f"fooling-{method}")
        if d is not None and a is not None:
            results.append(from_saved(d, a))
    if not results:
        return None
    goal = results[0].info["confidence_goal"]
    metrics, rows = {}, []
    for r in results:
        info = r.info
        conf = np.asarray(info["confidence"])
        effort = f"{info['steps']} steps" if info["method"] == "gradient" else f"{info['generations']} generations"
        metrics[info["method"]] = f"{sum(info['reached'])}/{len(r)} ≥ {100 * goal:.1f}% in {effort}"
        when = info["steps_to_reach"] if info["method"] == "gradient" else info["generation_reached"]
        for i in range(len(r)):
            rows.append([info["method"], info["labels"][i], percent(conf[i]),
                         "" if when[i] is None else when[i], "yes" if info["reached"][i] else "no"])
    blocks = [Metrics(metrics),
              Figure("fooling", to_png(fooling_figure(results)),
                     "One image per class and method; under each, the class the model sees and its softmax "
                     "probability (red: below the goal).")]
    blocks.append(Table(["method", "class", "confidence", "reached at (step / generation)", "reached"], rows,
                        caption=f"P(class) of each fooling image; the goal is {100 * goal:.1f}% (the paper's figure)"))
    texts = []
    for r in results:
        info = r.info
        if info["method"] == "gradient":
            texts.append(f"Gradient: ascent of log P(class) from uniform noise (Adam, lr {info['lr']:g}, pixels "
                         "kept in the box by a sigmoid), no image prior, stopped once every image passed the goal: "
                         f"{info['steps']} steps.")
        else:
            texts.append(f"Evolution: {info['encoding'].upper()} genomes searched with the model's outputs only "
                         f"(no gradients): a random population of {info['init_population']} scored for every class "
                         f"at once, then a natural evolution strategy per class ({info['population']} mutants per "
                         f"generation, σ = {info['sigma']:g}), the best image for each class kept across all "
                         f"searches: {info['generations']} generations, {info['evaluations']:,} images scored.")
    blocks.append(Text(" ".join(texts)))
    return Section("fooling", "Fooling images", blocks,
                   intro="Images that mean nothing to people can be classified with near certainty: follow the "
                         "gradient of one class's probability from random noise, or evolve images using nothing "
                         "but the network's outputs. A discriminative model only learns where the classes' "
                         "boundaries are, and far from the training images it can be confidently wrong.",
                   cite="Nguyen, Yosinski & Clune, Deep Neural Networks are Easily Fooled: High Confidence "
                        "Predictions for Unrecognizable Images, CVPR 2015")
