"""Report section: the CNN code space (from ``convlens codes`` / ``neighbors`` / ``tsne``'s
``results/codes-agreement.json``, ``codes-neighbors.json/.npz`` and ``codes-tsne.json/.npz``):
nearest neighbours in code space vs raw pixels, neighbour label agreement per layer, the t-SNE
scatter, Karpathy's thumbnail map and the t-SNE grid mosaic."""
from __future__ import annotations


from ..blocks import Figure, Metrics, Section, Table, Text
from ..registry import section


@section("codes", order=150)
def codes(ctx) -> Section | None:
    from ...plots.common import to_png

    agreement, nbrs, tsne = ctx.result("codes-agreement"), ctx.result("codes-neighbors"), ctx.result("codes-tsne")
    if agreement is None and nbrs is None and tsne is None:
        return None
    blocks, metrics = [], {}
    first = nbrs or tsne or {}
    if nbrs is not None:
        metrics["CNN code"] = f"{nbrs['layer']} ({nbrs['dims']:,}-D)"
        metrics["images"] = f"{nbrs['n']:,}"
    if agreement is not None:
        rows = {r["layer"]: r for r in agreement["rows"]}
        code = rows.get(agreement.get("code_layer", ""))
        if code is not None:
            metrics[f"same-class neighbours, code (k={agreement['k']})"] = f"{100 * code['agreement']:.1f}%"
        if "pixels" in rows:
            metrics[f"same-class neighbours, pixels (k={agreement['k']})"] = f"{100 * rows['pixels']['agreement']:.1f}%"
        metrics["chance"] = f"{100 * agreement['chance']:.1f}%"
    if metrics:
        blocks.append(Metrics(metrics))
    arrays = ctx.arrays("codes-neighbors") if nbrs is not None else None
    if arrays is not None:
        blocks.append(_neighbors_figure(nbrs, arrays, to_png))
    if agreement is not None:
        blocks += _agreement_blocks(agreement, to_png)
    t_arrays = ctx.arrays("codes-tsne") if tsne is not None else None
    if t_arrays is not None:
        blocks += _tsne_blocks(tsne, t_arrays, to_png)
    model = first.get("model") or (agreement or {}).get("model", "")
    return Section("codes", "The CNN code space: nearest neighbours and t-SNE", blocks,
                   intro="A CNN turns each image into a vector (the lecture's \"CNN code\": the 4096 numbers before "
                         "AlexNet's classifier; here the input of this model's classifier) that is then linearly "
                         "classified. Images whose codes are close look alike to the network: nearest neighbours in "
                         "code space share the object, where neighbours in raw pixels share colours and "
                         "backgrounds. t-SNE lays the codes out in 2-D so that close codes land close"
                         + (f" ({model})." if model else "."),
                   cite="Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural "
                        "Networks, NIPS 2012, Fig. 4; van der Maaten & Hinton, Visualizing Data using t-SNE, JMLR "
                        "2008; Karpathy, t-SNE visualization of CNN codes (cnnembed)")


def _neighbors_figure(meta: dict, arrays: dict, to_png) -> Figure:
    from ...plots.codes import neighbors_figure

    ql = arrays.get("query_labels")
    panels = []
    for key, title, metric in (("code", f"CNN code ({meta['layer']})", meta["metric"]),
                               ("pixels", "raw pixels", meta.get("pixel_metric", "l2"))):
        labels = arrays.get(f"{key}_labels" if key == "code" else "pixel_labels")
        same = None if ql is None or labels is None else labels == ql[:, None]
        panels.append({"title": f"{title}, {metric}", "thumbs": arrays[key], "same": same})
    agree = ""
    if meta.get("code_agreement") is not None:
        agree = (f" Same class as the query: {100 * meta['code_agreement']:.0f}% of the code-space neighbours, "
                 f"{100 * meta['pixel_agreement']:.0f}% of the pixel-space ones.")
    fig = neighbors_figure(arrays["query"], panels, query_labels=ql, class_names=meta.get("class_names"))
    return Figure("neighbors", to_png(fig),
                  f"Queries (left column) and their {meta['k']} nearest neighbours among {meta['n']:,} images, by "
                  f"{meta['metric']} distance of the {meta['dims']:,}-D codes (middle) and by Euclidean distance of "
                  f"the raw pixels (right); frames: green = the query's class, red = another." + agree)


def _agreement_blocks(d: dict, to_png) -> list:
    from ...plots.codes import agreement_figure

    rows = d["rows"]
    table = Table(["representation", "read at", "dims", f"same-class neighbours (k={d['k']})"],
                  [[r["layer"] + (" (CNN code)" if r["layer"] == d.get("code_layer") else ""), r["tapped"], r["dims"],
                    f"{100 * r['agreement']:.1f}%"] for r in rows],
                  caption=f"Each of {d['n']:,} images as a query against all the others ({d['metric']} distance; conv "
                          f"layers {d['pool']}-pooled per channel); chance {100 * d['chance']:.1f}%")
    return [Figure("agreement", to_png(agreement_figure(rows, k=d["k"], chance=d["chance"])),
                   "How often the nearest neighbours share the query's class, from raw pixels through each layer to "
                   "the CNN code and the class scores."), table]


def _tsne_blocks(meta: dict, arrays: dict, to_png) -> list:
    from ...plots.codes import mosaic_figure, thumbnail_map_figure, tsne_scatter
    from ...codespace.tsne_grid import TSNEGrid, normalized

    emb, labels, thumbs = arrays["embedding"], arrays.get("labels"), arrays.get("thumbs")
    pca = (f"PCA {meta['input_dims']} -> {meta['pca_dims']} dims ({100 * meta['explained_variance']:.1f}% of the "
           f"variance), " if meta["pca_dims"] < meta["input_dims"] else "")
    how = (f"{len(emb):,} {meta.get('layer', '')} codes; {pca}openTSNE, perplexity {meta['perplexity']:g}, "
           f"{meta['n_iter']} iterations, seed {meta['seed']}; KL divergence {meta['kl_divergence']:.3f}.")
    blocks = [Figure("tsne", to_png(tsne_scatter(emb, labels, meta.get("class_names"),
                                                 title=f"t-SNE of the {meta.get('layer', '')} codes")),
                     "t-SNE map coloured by true class: " + how)]
    if thumbs is not None:
        blocks.append(Figure("tsne-map", to_png(thumbnail_map_figure(emb, thumbs, size=1400)),
                             "The same map with each image drawn at its embedded position (Karpathy's cnnembed)."))
        grid = meta.get("grid")
        if grid and "grid_cells" in arrays:
            cells = arrays["grid_cells"]
            g = TSNEGrid(int(grid["rows"]), int(grid["cols"]), cells, normalized(emb[:len(cells)]),
                         float(grid["cost"]))
            blocks.append(Figure("tsne-grid", to_png(mosaic_figure(g.mosaic(thumbs[:len(cells)]))),
                                 f"The map snapped onto a full {g.rows}x{g.cols} grid: each image gets its own cell, "
                                 "the total squared displacement minimal (the assignment problem, solved exactly); "
                                 "the lecture's \"1k by 1k\" image."))
    if meta.get("projector"):
        blocks.append(Text(f"Explore these codes interactively: tensorboard --logdir {meta['projector']} "
                           "(Projector tab)."))
    return blocks
