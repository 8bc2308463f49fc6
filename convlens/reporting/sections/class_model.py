"""Report section: class model visualization (from ``convlens class-model``'s ``results/class-model.json/.npz``
and, for hidden units, ``results/unit-model.*``), drawn as Simonyan et al.'s grid of one image per class."""
from __future__ import annotations

import numpy as np

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("class_model", order=120)
def class_model(ctx) -> Section | None:
    from ...plots.class_model import class_model_figure
    from ...plots.common import to_png
    from ...synthesis.class_model import from_saved

    loaded = {name: (ctx.result(name), ctx.arrays(name)) for name in ("class-model", "unit-model")}
    loaded = {name: from_saved(d, a) for name, (d, a) in loaded.items() if d is not None and a is not None}
    if not loaded:
        return None
    blocks = []
    result = loaded.get("class-model")
    if result is not None:
        info = result.info
        t = np.asarray(info["targets"])
        top1 = np.asarray(info["top1"]) == t
        p_after, p_before = np.asarray(info["prob_after"]), np.asarray(info["prob_before"])
        blocks.append(Metrics({"classes": str(info["n_targets"]), "seeds": str(info["n_seeds"]),
                               "steps": str(result.steps), "target top-1": f"{100 * top1.mean():.0f}%",
                               "median P(class)": f"{np.median(p_after):.3f}"}))
        blocks.append(Figure("class_models", to_png(class_model_figure(result)),
                             "One column per class, one row per random start; each image stretched to its own "
                             "range to show its structure. Under each: the class and its softmax probability "
                             "(red: the image's top-1 class is another one)."))
        rows = []
        for k in dict.fromkeys(t.tolist()):
            sel = t == k
            label = info["labels"][int(np.flatnonzero(sel)[0])]
            rows.append([label, float(np.mean(np.asarray(info["score_before"])[sel])),
                         float(np.mean(np.asarray(info["score_after"])[sel])), float(p_before[sel].mean()),
                         float(p_after[sel].mean()), f"{int(top1[sel].sum())}/{int(sel.sum())}"])
        blocks.append(Table(["class", "score at the mean image", "score after", "P at the mean image", "P after",
                             "top-1"], rows, caption="Class score S_c (before the softmax) and P(c) at the mean "
                                                     "image and after the optimization, averaged over the seeds"))
        weight = f" + {info['logprob']:g} log P(c)" if info.get("logprob") else ""
        blocks.append(Text(
            f"Maximized: S_c(I){weight} − {info['l2']:g} ‖I − mean‖² by {info['optimizer']} "
            f"(lr {info['lr']:g}) "
            f"from the mean image plus noise (std {info['noise']:g}), with Yosinski et al.'s regularizers: a random "
            f"shift of up to {info['jitter']} px each step and a Gaussian blur (σ = {info['blur']:g} px) every "
            f"{info['blur_every']} steps. The log P(c) term also lowers the other classes' scores; without it "
            "(logprob=0, the paper's objective) a competitor that shares the class's features can end up with the "
            "higher score."))
    units = loaded.get("unit-model")
    if units is not None:
        info = units.info
        blocks.append(Figure("unit_models", to_png(class_model_figure(
            units, title=f"Activation maximization: hidden units of {info['layer']}")),
            f"The image maximizing the mean activation of each of {info['n_targets']} channels of {info['layer']} "
            "(same regularizers); under each, the channel and its activation (at the mean image: "
            + ", ".join(f"{v:.2g}" for v in info["activation_before"][:info["n_targets"]]) + ")."))
    return Section("class_model", "Class model visualization", blocks,
                   intro="Which image does the network find most typical of a class? Start from the mean image "
                         "and follow the gradient of the class score (before the softmax) with respect to the "
                         "pixels, keeping the image small and smooth. The result shows what the network looks for: "
                         "parts, textures and shapes of the class, repeated wherever they raise the score.",
                   cite="Simonyan, Vedaldi & Zisserman, Deep Inside Convolutional Networks, ICLR workshop 2014; "
                        "Yosinski et al., Understanding Neural Networks Through Deep Visualization, 2015")
