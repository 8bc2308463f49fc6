"""``/codes``: the t-SNE map of the CNN codes of the explorer's data, with thumbnails, zoom and pan,
coloured by class, filtered by class and by right/wrong prediction; a point opens its image's page.

The map is the ``codes-tsne`` result of the results store, the one ``convlens tsne RUN`` saves (for
``serve --data DIR``: ``convlens tsne RUN --data DIR``). When it is missing, a background job makes it
with the CLI's defaults -- the codes of the classifier's input (``convlens codes``' cache in
``RUN/codes``, reused or filled), a seeded subset of at most 5,000 of them, PCA to 50 dims then
openTSNE (perplexity 30, seed 0), the snapped grid (auto) and 32 px thumbnails: ``convlens.codespace.tsne_map``,
the call ``convlens tsne`` makes -- and saves it under the CLI's name and options, so CLI and explorer
share it.

The browser draws the map on a canvas (``static/codes.js``): a dot per image coloured by class, and the
thumbnails (one sprite JPEG, ``jpg/codes/thumbs``) once zoomed in; the snapped grid as a second layout.
For the keyboard, every point is also a link in the list under the map (filtered with it).
"""
from __future__ import annotations

import math

import numpy as np
from starlette.responses import Response

from ..errors import NotFound, WebError
from ..png import class_colors, response
from . import page, raw
from .code_cache import compute_codes
from .predictions import class_name, data_names, model_labels, predictions

TSNE = "codes-tsne"
# `convlens tsne`'s defaults (the options it saves the default result under are then {})
TSNE_DEFAULTS = dict(n=5000, perplexity=None, seed=0, grid="auto", thumb=32, n_jobs=1)


# ---- the t-SNE map ---------------------------------------------------------------------------------------------

def tsne_options(ex) -> dict:
    """The options ``convlens tsne RUN [--data DIR]`` saves its default map under."""
    return ex.data_options or {}


def _tsne_entry(ex):
    """The store's entry of the map of the explorer's data: with exactly its options, else (the run's own data)
    the one the report shows when that one reads the same data."""
    options = tsne_options(ex)
    entry = ex.entry(TSNE, options)
    if entry is not None:
        return entry
    if not options:
        shown = ex.store.shown(TSNE)
        if shown is not None and "data" not in (shown.options or {}):
            return shown
    return None


def tsne_or_job(ex):
    """((meta, arrays, version), None) from the cache, or (None, the job making the map)."""
    entry = _tsne_entry(ex)
    if entry is None:
        def compute(progress):  # the model lock is held for the codes only, not the t-SNE
            from ...codespace.tsne_map import tsne_map

            code = compute_codes(ex, progress)
            progress(0.3, f"t-SNE of {min(len(code), TSNE_DEFAULTS['n'])} codes")
            made = tsne_map(code, **TSNE_DEFAULTS)
            return made.meta, made.arrays
        _, job = ex.ensure(TSNE, tsne_options(ex), "t-SNE map of the codes", compute, locked=False)
        entry = _tsne_entry(ex)  # when the job is done, it saved the map
        if entry is None:
            return None, job
    (meta, arrays), version = ex.load(entry)
    return (meta, arrays, version), None


def _normalized(xy: np.ndarray) -> np.ndarray:
    """(N, 2) -> [0, 1]^2, the aspect ratio kept (centred)."""
    xy = np.asarray(xy, float)
    lo, hi = xy.min(0), xy.max(0)
    span = float(max(hi - lo)) or 1.0
    return (xy - lo) / span + (1 - (hi - lo) / span) / 2


@page("/codes", "codes.html")
def codes_page(ex, request) -> dict:
    found, job = tsne_or_job(ex)
    out = {"state": "job" if found is None else "done", "job": None if job is None else job.to_dict(),
           "options": tsne_options(ex)}
    if found is None:
        return out
    meta, arrays, version = found
    indices = np.asarray(arrays["indices"], dtype=np.int64)
    n_data = len(ex.data.labels)
    keep = indices < n_data
    emb = _normalized(arrays["embedding"])
    labels = np.asarray(arrays["labels"], dtype=np.int64) if "labels" in arrays else None
    preds, pjob = predictions(ex)
    ml = model_labels(ex)
    grid = meta.get("grid")
    cells = arrays.get("grid_cells")
    names = data_names(ex) or list(meta.get("class_names") or [])
    present = sorted(set(labels.tolist())) if labels is not None else []
    counts = {k: int((labels == k).sum()) for k in present} if labels is not None else {}
    colors = class_colors(present)
    points = []
    for i, row in enumerate(indices.tolist()):
        if not keep[i]:
            continue
        p = {"i": i, "id": f"t{row}", "x": round(float(emb[i, 0]), 5), "y": round(float(emb[i, 1]), 5),
             "label": None if labels is None else int(labels[i])}
        if grid and cells is not None and i < len(cells):
            r, c = divmod(int(cells[i]), grid["cols"])
            p["gx"], p["gy"] = (c + 0.5) / grid["cols"], (r + 0.5) / max(grid["rows"], grid["cols"])
        if preds is not None:
            k = int(preds[0][row])
            p["pred"] = k
            p["correct"] = bool(k == ml[row]) if ml[row] >= 0 else None
        points.append(p)
    thumbs = arrays["thumbs"]
    cols = sprite_cols(len(thumbs))
    out.update({
        "n": len(points), "layer": meta.get("layer"), "model": meta.get("model"), "data": meta.get("data"),
        "perplexity": meta.get("perplexity"), "kl_divergence": meta.get("kl_divergence"),
        "grid": grid, "points": points, "version": version,
        "classes": [{"index": k, "name": names[k] if k < len(names) else str(k), "color": colors[k],
                     "count": counts[k]} for k in present],
        "predicted_names": {str(k): class_name(ex, k) for k in sorted({p["pred"] for p in points if "pred" in p})},
        "predictions": None if pjob is None else pjob.to_dict(),
        "sprite": {"url": f"jpg/codes/thumbs?v={version}", "cols": cols, "w": int(thumbs.shape[2]),
                   "h": int(thumbs.shape[1])}})
    return out


def sprite_cols(n: int) -> int:
    return max(1, math.ceil(math.sqrt(n)))


@raw("/jpg/codes/thumbs", name="codes_thumbs")
def codes_thumbs(ex, request) -> Response:
    """Every thumbnail of the map in one JPEG (small and quick to encode: a PNG of 5,000 thumbnails is
    megabytes), ``sprite_cols`` per row, in the map's point order."""
    import io

    from PIL import Image

    found, _ = tsne_or_job(ex)
    if found is None:
        raise NotFound("the t-SNE map is not computed yet: open the code space page to start it")
    meta, arrays, version = found
    given = request.query_params.get("v")
    if given is not None and given != version:
        raise WebError(f"v must be the map's current version {version!r}; got {given[:40]!r}")

    def sprite() -> bytes:
        thumbs = arrays["thumbs"]  # (n, h, w, 3) uint8
        n, h, w = thumbs.shape[:3]
        cols = sprite_cols(n)
        rows = math.ceil(n / cols)
        canvas = np.full((rows * h, cols * w, 3), 255, np.uint8)
        for i in range(n):
            r, c = divmod(i, cols)
            canvas[r * h:(r + 1) * h, c * w:(c + 1) * w] = thumbs[i]
        buf = io.BytesIO()
        Image.fromarray(canvas).save(buf, format="JPEG", quality=88)
        return buf.getvalue()
    return response(ex.memo.lru("sprite", 1).get_or_make(version, sprite), media_type="image/jpeg")

