"""Report section: Adebayo et al.'s sanity checks of every map (from ``convlens sanity``'s ``results/sanity.json``
+ ``.npz``): the similarity curves of the cascading randomization, the maps, and a verdict per method."""
from __future__ import annotations

from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("sanity", order=112)
def sanity(ctx) -> Section | None:
    from ...plots.common import to_png
    from ...units.sanity import SanityResult

    d, arrays = ctx.result("sanity"), ctx.arrays("sanity")
    if d is None or arrays is None:
        return None
    res = SanityResult.from_parts(d, arrays)
    verdicts = res.verdicts()
    data = res.data_spearman_abs is not None
    passed = [m for m, v in verdicts.items() if v["passes"]]
    o = res.options
    blocks = [Metrics({"images": str(res.spearman_abs.shape[2]), "cascade steps": str(len(res.steps)),
                       "random-labels model": res.random_labels_model or "not given",
                       "pass": ", ".join(passed) or "none",
                       "fail": ", ".join(m for m in res.methods if m not in passed) or "none"}),
              Figure("sanity-curves", to_png(res.plot()),
                     "Similarity of each method's map after randomizing the layers from the top (x: the trained "
                     "model, then one layer more at each step) to its map from the trained model (y: mean over the "
                     "images; 1 = unchanged)" + ("; stars: the model trained on shuffled labels" if data else "")
                     + f". Dashed: the verdict's thresholds ({res.thresholds[0]:g}, {res.thresholds[1]:g}), which "
                       "apply to the mean over the steps."),
              Figure("sanity-maps", to_png(res.plot_maps()),
                     "Each method's map of the first image (absolute values, scaled to the 99th percentile), from the "
                     "trained model and after each randomization step" + (", and from the model trained on shuffled "
                                                                          "labels" if data else "") + ".")]
    head = ["method", "rank |.| (mean over steps)", "SSIM (mean)", "rank |.| all random", "SSIM all random"]
    head += ["rank |.| random labels", "SSIM random labels"] if data else []
    rows = []
    for m, v in verdicts.items():
        rows.append([m, v["rank_abs"], v["ssim"], v["final_rank_abs"], v["final_ssim"]]
                    + ([v["data_rank_abs"], v["data_ssim"]] if data else [])
                    + [v["model"] + (f"; labels: {v['data']}" if data else ""), "yes" if v["passes"] else "no"])
    blocks.append(Table(head + ["verdict", "passes"], rows,
                        caption="Spearman rank correlation of the absolute maps and SSIM, against the trained model's "
                                "maps; a method passes when both stay below the thresholds on average over the cascade"
                                + (" and for the random-labels model" if data else "")))
    blocks.append(Text(f"How: the network's layers are re-initialized one more at a time from the top ({', '.join(res.steps)}) "
                       f"on a copy of the model; SmoothGrad uses {o.get('samples')} noisy copies, Integrated Gradients "
                       f"{o.get('steps')} steps from a black image, occlusion a {o.get('window')}-pixel square moved by "
                       f"{o.get('stride')}. A map that stays the same while the weights become random cannot show what "
                       "the model learned; averaging over the steps counts a map that changes only when the first "
                       "layers are randomized (it follows the image's edges) as independent of what the later ones "
                       "learned."))
    return Section("sanity", "Sanity checks: which maps depend on the model", blocks,
                   intro="Adebayo et al. randomized a trained network's weights layer by layer, and trained it on "
                         "shuffled labels, and found that some saliency maps barely change: they show the image, not the "
                         "model. The same tests on this model, for every map in this report.",
                   cite="Adebayo et al., Sanity Checks for Saliency Maps, NeurIPS 2018")
