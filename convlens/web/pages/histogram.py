"""A unit's activation histogram over the data, for its page (no routes here): the unit's strongest
activation on each image, from one forward of the layer's every unit over the data (a job, kept in memory
for the last :data:`MAXIMA_KEPT` layers).
"""
from __future__ import annotations

import numpy as np
import torch

from .patches import mined_units

HIST_BINS = 30
HIST_VALUES = 2000     # the JSON lists every image's value up to this many images
MAXIMA_KEPT = 8        # layers whose per-image maxima (N x units floats) stay in memory


def layer_maxima(ex, layer: str):
    """(N, U) float32: each image's strongest activation of each unit of ``layer`` (the tensor top-patches
    ranks: a grammar net's conv read after its BN and ReLU), or (None, job) while a job computes it."""
    data = ex.data

    def compute(progress):
        from ...taps import capture, eval_mode, model_device
        from ...training.runs import model_and_run
        from ...units._topk import choose_layers

        with ex.lock:
            model, _ = model_and_run(ex.run)
            _, (tap,) = choose_layers(model, [layer])
            device, dtype = model_device(model)
            reduce = lambda t: (t.flatten(2).amax(2) if t.ndim > 2 else t).float().cpu()  # noqa: E731
            parts, n = [], len(data)
            with eval_mode(model), torch.no_grad(), capture(model, [tap], stop_at_last=True, transform=reduce) as acts:
                for b0 in range(0, n, 128):
                    acts.forward(data.images[b0:b0 + 128].to(device=device, dtype=dtype))
                    parts.append(acts[tap])
                    progress(min(b0 + 128, n) / n, f"{min(b0 + 128, n):,} of {n:,} images")
        return torch.cat(parts).numpy()
    return ex.kept(ex.memo.lru("maxima", MAXIMA_KEPT), layer, f"maxima {ex.name} {layer}",
                   f"Activations of {layer} over {len(data):,} images", compute)


def histogram(ex, layer: str, unit: int, top):
    """(the histogram of the unit's maxima over the data, None) or (None, the job computing them)."""
    maxima, job = layer_maxima(ex, layer)
    if maxima is None:
        return None, job.to_dict()
    values = maxima[:, unit].astype(np.float64)
    counts, edges = np.histogram(values, bins=HIST_BINS)
    peak = int(counts.max()) if len(counts) else 0
    bars = [{"x": i, "lo": float(edges[i]), "hi": float(edges[i + 1]), "count": int(c),
             "height": 0 if not peak else round(100 * c / peak, 2)} for i, c in enumerate(counts)]
    out = {"n": int(len(values)), "edges": edges.tolist(), "counts": counts.tolist(), "bars": bars,
           "min": float(values.min()), "max": float(values.max()), "mean": float(values.mean()),
           "positive": int(np.sum(values > 0)), "values": values.tolist() if len(values) <= HIST_VALUES else None}
    if top is not None and unit in mined_units(top, layer):
        vals = top.values[layer][top.row(layer, unit)]
        out["top_min"] = float(np.nanmin(vals)) if np.isfinite(vals).any() else None
    return out, None
