"""``/codes``: the t-SNE map of the CNN codes of the explorer's data, with thumbnails, zoom and pan,
coloured by class, filtered by class and by right/wrong prediction; a point opens its image's page.

The map is the ``codes-tsne`` result of the results store, the one ``convlens tsne RUN`` saves (for
``serve --data DIR``: ``convlens tsne RUN --data DIR``). When it is missing, a background job makes it
with the CLI's defaults -- the codes of the classifier's input (``convlens codes``' cache in
``RUN/codes``, reused or filled), a seeded subset of at most 5,000 of them, PCA to 50 dims then
openTSNE (perplexity 30, seed 0), the snapped grid (auto) and 32 px thumbnails -- and saves it under the
CLI's name and options, so CLI and explorer share it. The steps are ``convlens.cli.codes_cmds.save_tsne``'s
library calls, re-done here (the explorer may not import the CLI): :func:`tsne_parts`.

The browser draws the map on a canvas (``static/codes.js``): a dot per image coloured by class, and the
thumbnails (one sprite JPEG, ``jpg/codes/thumbs``) once zoomed in; the snapped grid as a second layout.
For the keyboard, every point is also a link in the list under the map (filtered with it).
"""
from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import numpy as np
from starlette.responses import Response

from ..errors import NotFound, WebError
from . import page, raw
from .images import _class_colors, _stats, class_name, data_names, model_labels, predictions, state

TSNE = "codes-tsne"
# `convlens tsne`'s defaults (the options it saves the default result under are then {})
TSNE_DEFAULTS = dict(n=5000, perplexity=None, seed=0, grid="auto", thumb=32, n_jobs=1)


# ---- the codes (convlens codes' cache) -------------------------------------------------------------------

def _slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(s)).strip("_")[:60]


def code_folder(ex) -> tuple[str, str | None]:
    """(the cache folder relative to the run, the data the CLI names): where ``convlens codes RUN [--data
    DIR]`` keeps the codes of the classifier's input (``cli.codes_cmds.cache_dir``'s naming)."""
    data = ex.data_source
    return "codes/classifier-input-auto" + (f"-{_slug(data)}" if data else ""), data


def _fresh(ex, folder: str, data: str | None) -> bool:
    """Whether the cache folder holds codes of the run's weights and this data (``ResultStore.cache``'s
    test, read only: nothing is emptied here)."""
    from ...io import read_json
    from ...results.provenance import data_key

    path = Path(ex.dir) / folder
    record = path.parent / ".records" / f"{path.name}.json"
    if not record.is_file() or not (path / "codes.json").is_file():
        return False
    have = read_json(record)
    want = {"weights": ex.store.weights_key(), "data": data_key(ex.run.manifest.get("data"), {"data": data})}
    return all(have.get(k) == v for k, v in want.items())


def _load_codes(ex):
    """The cached codes of the data (memory-mapped), or None when the cache lacks them."""
    from ...codespace.codes import Codes
    from ...errors import ConvLensError

    folder, data = code_folder(ex)
    path = Path(ex.dir) / folder
    st = state(ex)
    stats = _stats(path / "codes.json") + _stats(path / "features.json")
    if st.codes is not None and st.codes[0] == stats:
        return st.codes[1]
    if not _fresh(ex, folder, data):
        return None
    try:
        code = Codes.load(path, data=ex.data)
    except ConvLensError:
        return None
    if len(code) != len(ex.data.labels):
        return None
    st.codes = (stats, code)
    return code


def compute_codes(ex, progress=None):
    """The codes of the data as ``convlens codes`` makes them (its cache folder, emptied first when it holds
    codes of other weights or data); returns them loaded from the cache."""
    from ...codespace.codes import codes

    found = _load_codes(ex)
    if found is not None:
        return found
    folder, data = code_folder(ex)
    if progress is not None:
        progress(0.05, f"CNN codes of {len(ex.data.labels)} images")
    out = ex.store.cache(folder, data=data)
    with ex.lock:
        codes(ex.run, ex.data, None, pool=None, out=out, progress=False)
    return _load_codes(ex)


def codes_or_job(ex):
    """(the codes of the data, None) from the cache, or (None, the job computing them)."""
    found = _load_codes(ex)
    if found is not None:
        return found, None
    folder, _ = code_folder(ex)
    job = ex.jobs.submit(f"codes {folder}", "CNN codes of the data", lambda progress: compute_codes(ex, progress))
    if job.state == "done" and job.result is not None:
        return job.result, None
    return None, job


def code_of(ex, code, x) -> np.ndarray:
    """(1, D): the code of one image (C, H, W), read where ``code`` was (one forward under the lock)."""
    from ...codespace.codes import codes

    with ex.lock:
        return np.asarray(codes(ex.run, x[None], code.tapped, pool=code.pool, progress=False).vectors)


# ---- the t-SNE map ---------------------------------------------------------------------------------------------

def tsne_options(ex) -> dict:
    """The options ``convlens tsne RUN [--data DIR]`` saves its default map under."""
    return {"data": ex.data_source} if ex.data_source is not None else {}


def tsne_parts(code, *, n: int = 5000, perplexity=None, seed: int = 0, grid: str = "auto", thumb: int = 32,
               n_jobs: int = 1, progress=None) -> tuple[dict, dict]:
    """(meta, arrays) of the t-SNE map of ``code``, as ``convlens tsne`` saves them (``save_tsne``'s steps):
    a seeded subset of ``n``, ``tsne``, the snapped grid (``grid="auto"``: a square grid of up to 4,096),
    thumbnails."""
    from ...codespace.codes import thumbnails
    from ...codespace.tsne import tsne
    from ...codespace.tsne_grid import tsne_grid

    rows = np.arange(len(code))
    if len(code) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(code), n, replace=False))
    sub = code.subset(rows)
    if progress is not None:
        progress(0.3, f"t-SNE of {len(sub)} codes")
    result = tsne(sub, perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    cells = None
    if grid == "auto":
        side = int(np.ceil(np.sqrt(min(len(sub), 4096))))
        shape = (-(-min(len(sub), 4096) // side), side)
        if progress is not None:
            progress(0.8, "snapping to the grid")
        cells = tsne_grid(result.embedding[:min(len(sub), shape[0] * shape[1])], *shape)
    images = sub.images()
    arrays = {"embedding": result.embedding, "indices": sub.indices, "thumbs": thumbnails(images, thumb)}
    if sub.labels is not None:
        arrays["labels"] = sub.labels
    if cells is not None:
        arrays["grid_cells"] = cells.cells
    meta = result.to_dict()
    meta["grid"] = None if cells is None else {"rows": cells.rows, "cols": cells.cols, "points": len(cells),
                                               "cost": cells.cost}
    meta["projector"] = None
    return meta, arrays


def _tsne_entry(ex):
    """The store's entry of the map of the explorer's data: with exactly its options, else (the run's own data)
    the one the report shows when that one reads the same data."""
    options = tsne_options(ex)
    entry = ex.store.entry(TSNE, options)
    if entry is not None and entry.state != "stale":
        return entry
    if not options:
        shown = ex.store.shown(TSNE)
        if shown is not None and "data" not in (shown.options or {}):
            return shown
    return None


def tsne_or_job(ex):
    """((meta, arrays, version), None) from the cache, or (None, the job making the map)."""
    from ...io import read_json, read_npz

    entry = _tsne_entry(ex)
    st = state(ex)
    if entry is not None:
        stats = _stats(entry.path)
        cached = st.misc.get("tsne")
        if cached is None or cached[0] != (str(entry.path), stats):
            meta, arrays = read_json(entry.path), read_npz(entry.path.with_suffix(".npz"))
            version = hashlib.sha1(repr((str(entry.path), stats)).encode()).hexdigest()[:10]
            cached = st.misc["tsne"] = ((str(entry.path), stats), (meta, arrays, version))
        return cached[1], None

    options = tsne_options(ex)

    def work(progress):  # as ex.ensure's jobs, but the model lock is held for the codes only, not the t-SNE
        code = compute_codes(ex, progress)
        parts = tsne_parts(code, progress=progress, **TSNE_DEFAULTS)
        ex.store.save(TSNE, parts, options=options or None)
        return parts
    key = f"{TSNE} {sorted(options.items())}"
    job = ex.jobs.submit(key, "t-SNE map of the codes", work)
    if job.state == "done":  # saved since: read it from the store
        ex.jobs.forget(key)
        return tsne_or_job(ex) if _tsne_entry(ex) is not None else (None, job)
    return None, job


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
    colors = _class_colors(present)
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
    st = state(ex)
    cached = st.misc.get("sprite")
    if cached is None or cached[0] != version:
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
        cached = st.misc["sprite"] = (version, buf.getvalue())
    return Response(cached[1], media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"})

