"""`convlens codes`, `convlens neighbors` and `convlens tsne`: the CNN code space of a run.

Thin over convlens.codes / neighbors / tsne / tsne_grid / export_projector. Codes are cached in
``RUN/codes/<layer>-<pool>[-<data>]/`` (``convlens.features`` layout: memmaps + manifest; resumed
after an interruption, reused by the next command). Results for the report's "codes" section:
``RUN/results/codes-agreement.json``, ``codes-neighbors.json/.npz`` and ``codes-tsne.json/.npz``.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..errors import InputError
from .app import app
from .output import echo_saved, show_progress

AGREEMENT, NEIGHBORS, TSNE = "codes-agreement", "codes-neighbors", "codes-tsne"


# ---- shared steps (also used by demo_codes) -----------------------------------------------------------------

def cached_codes(run, *, layer: str | None = None, pool: str | None = None, data: str | None = None,
                 out: Path | None = None, progress: bool = True):
    """convlens.codes of the run, cached in ``out`` (default ``RUN/codes/...``); a cache of other
    weights or data (the run retrained) is replaced."""
    from ..codespace.codes import codes

    folder = Path(out) if out is not None else _cache_dir(run, layer, pool, data)
    if folder is None:
        return codes(run, data, layer, pool=pool, progress=progress)
    try:
        return codes(run, data, layer, pool=pool, out=folder, progress=progress)
    except InputError as err:
        if out is not None or "out must be a new folder" not in str(err):
            raise
        shutil.rmtree(folder)
        return codes(run, data, layer, pool=pool, out=folder, progress=progress)


def _cache_dir(run, layer, pool, data) -> Path | None:
    if run.dir is None:
        return None
    slug = lambda s: re.sub(r"[^A-Za-z0-9_.]+", "_", str(s)).strip("_")[:60]  # noqa: E731
    name = f"{slug(layer) if layer else 'classifier-input'}-{pool or 'auto'}" + (f"-{slug(data)}" if data else "")
    return Path(run.dir) / "codes" / name


def default_queries(labels: np.ndarray, n: int) -> list[int]:
    """The first image of each of the first ``n`` classes met in data order (then more images)."""
    chosen, seen = [], set()
    for i, lab in enumerate(labels):
        if len(chosen) < n and int(lab) not in seen:
            chosen.append(i)
            seen.add(int(lab))
    for i in range(len(labels)):
        if len(chosen) >= n:
            break
        if i not in chosen:
            chosen.append(i)
    return chosen


def save_neighbors(run, code, *, rows=None, image=None, k: int = 8, metric: str = "cosine", n_queries: int = 6,
                   thumb: int = 64):
    """Neighbours of the queries in code space and in raw pixels; saved for the report.
    Returns (code Neighbors, pixel Neighbors, query labels or None)."""
    from ..io import atomic_write_json, atomic_write_npz
    from ..codespace.codes import codes, pixel_codes, thumbnails
    from ..codespace.neighbors import neighbors

    pixels = pixel_codes(code.data)
    if image is not None:
        from ..data.images import load_image

        c, h, w = code.images([0]).shape[1:]
        img = load_image(image, size=(h, w), channels=c)[None]  # (1, C, H, W)
        qvec = codes(run, img, code.tapped, pool=code.pool, progress=False).vectors
        nb = neighbors(code, qvec, k, metric)
        pn = neighbors(pixels, img.reshape(1, -1).numpy(), k, "l2")
        query_thumbs, qlabels, qrows = thumbnails(img, thumb), None, []
    else:
        qrows = list(rows) if rows else default_queries(code.labels if code.labels is not None
                                                        else np.zeros(len(code), int), n_queries)
        nb = neighbors(code, qrows, k, metric, exclude_self=True)
        pn = neighbors(pixels, qrows, k, "l2", exclude_self=True)
        query_thumbs = thumbnails(code.images(qrows), thumb)
        qlabels = None if code.labels is None else code.labels[qrows]
    take = lambda nbr: thumbnails(code.images(nbr.indices.reshape(-1)), thumb).reshape(  # noqa: E731
        len(nbr), nbr.k, *query_thumbs.shape[1:])
    labels = code.labels
    arrays = {"query": query_thumbs, "code": take(nb), "pixels": take(pn), "code_indices": nb.indices,
              "code_distances": nb.distances, "pixel_indices": pn.indices, "pixel_distances": pn.distances,
              "query_rows": np.asarray(qrows, dtype=np.int64)}
    if labels is not None:
        arrays["code_labels"], arrays["pixel_labels"] = labels[nb.indices], labels[pn.indices]
        if qlabels is not None:
            arrays["query_labels"] = np.asarray(qlabels, dtype=np.int64)
    meta = {"schema": "convlens.codes-neighbors/1", "layer": code.layer, "tapped": code.tapped, "pool": code.pool,
            "dims": code.dims, "metric": metric, "pixel_metric": "l2", "k": k, "n": len(code),
            "query": str(image) if image is not None else "rows", "class_names": code.class_names,
            "model": code.model, "data": code.data_label,
            "code_agreement": nb.agreement(labels, qlabels) if labels is not None and qlabels is not None else None,
            "pixel_agreement": pn.agreement(labels, qlabels) if labels is not None and qlabels is not None else None}
    if run.dir is not None:
        results = Path(run.dir) / "results"
        atomic_write_npz(results / f"{NEIGHBORS}.npz", **arrays)
        atomic_write_json(results / f"{NEIGHBORS}.json", meta)
    return nb, pn, qlabels


def save_tsne(run, code, *, n: int = 5000, perplexity: float = 30.0, seed: int = 0, grid: str = "auto",
              thumb: int = 32, n_jobs: int = 1, projector: Path | None = None):
    """t-SNE of (a seeded subset of n of) the codes, its grid, optional projector export; saved for the report.
    Returns (TSNEResult, TSNEGrid or None, ProjectorExport or None)."""
    from ..io import atomic_write_json, atomic_write_npz
    from ..codespace.codes import thumbnails
    from ..codespace.projector import export_projector
    from ..codespace.tsne import tsne
    from ..codespace.tsne_grid import tsne_grid

    if not isinstance(n, int) or n < 4:
        raise InputError(f"--n must be an int >= 4; got {n}")
    rows = np.arange(len(code))
    if len(code) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(code), n, replace=False))
    sub = code.subset(rows)
    result = tsne(sub, perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    shape = _grid_shape(grid, len(sub))
    cells = None
    if shape is not None:
        m = min(len(sub), shape[0] * shape[1])
        cells = tsne_grid(result.embedding[:m], *shape)
    images = sub.images()  # (n, C, H, W)
    exported = export_projector(sub, projector, images=images) if projector is not None else None
    if run.dir is not None:
        path = Path(run.dir) / "results" / f"{TSNE}.json"
        arrays = {"embedding": result.embedding, "indices": sub.indices, "thumbs": thumbnails(images, thumb)}
        if sub.labels is not None:
            arrays["labels"] = sub.labels
        if cells is not None:
            arrays["grid_cells"] = cells.cells
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        meta = result.to_dict()
        meta["grid"] = None if cells is None else {"rows": cells.rows, "cols": cells.cols, "points": len(cells),
                                                   "cost": cells.cost}
        meta["projector"] = None if exported is None else str(exported.folder)
        atomic_write_json(path, meta)
    return result, cells, exported


def _grid_shape(text: str, n: int) -> tuple[int, int] | None:
    if text in ("none", "off", ""):
        return None
    if text == "auto":
        side = int(np.ceil(np.sqrt(min(n, 4096))))
        return -(-min(n, 4096) // side), side
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", text)
    if not m or min(int(m.group(1)), int(m.group(2))) < 1:
        raise InputError(f"--grid must be ROWSxCOLS (e.g. 32x32), auto or none; got {text!r}")
    return int(m.group(1)), int(m.group(2))


def demo_codes(run) -> None:
    """The code space of the demo run (shapesnet, 1,000 test images): label agreement per layer at k=5,
    neighbours of 6 queries (k=8), t-SNE of all 1,000 codes and its 32x32 grid; saved for the report."""
    from ..training.runs import load_run
    from ..codespace.code_agreement import agreement_by_layer

    run = run if hasattr(run, "pixel_model") else load_run(run)
    code = cached_codes(run, progress=False)
    agreement = agreement_by_layer(run, code.data, k=5)
    if run.dir is not None:
        agreement.save(Path(run.dir) / "results" / f"{AGREEMENT}.json")
    save_neighbors(run, code, k=8, n_queries=6)
    save_tsne(run, code, n=min(len(code), 1024))


# ---- commands ------------------------------------------------------------------------------------------------

_RUN = typer.Argument(..., help="Run directory (written by `convlens train`).")
_LAYER = typer.Option(None, "--layer", help="Layer (default: the classifier's input, the lecture's CNN code; "
                                            "'NAME:input' reads what a layer receives).")
_POOL = typer.Option(None, "--pool", help="avg, max or flat (default: flat for the classifier's input, else avg).")
_DATA = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split).")


@app.command("codes")
def codes_cmd(run: Path = _RUN, layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL,
              data: Optional[str] = _DATA,
              out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (default: RUN/codes/...)."),
              k: int = typer.Option(5, "--k", help="Neighbours for the label agreement per layer."),
              metric: str = typer.Option("cosine", "--metric", help="cosine or l2."),
              agreement: bool = typer.Option(True, "--agreement/--no-agreement",
                                             help="Also measure neighbour label agreement for pixels and each layer."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
              quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Extract (and cache) the CNN codes of a run's images; neighbour label agreement per layer."""
    from ..training.runs import load_run
    from ..codespace.code_agreement import agreement_by_layer

    loaded = load_run(run)
    code = cached_codes(loaded, layer=layer, pool=pool, data=data, out=out, progress=show_progress(quiet))
    folder = out or _cache_dir(loaded, layer, pool, data)
    saved = [f"{folder} (the codes)"] if folder else []
    result = None
    if agreement:
        result = agreement_by_layer(loaded, code.data, k=k, metric=metric, progress=show_progress(quiet))
        if loaded.dir is not None:
            saved.append(result.save(Path(loaded.dir) / "results" / f"{AGREEMENT}.json"))
    if as_json:
        typer.echo(json.dumps({"codes": {**code.to_dict(), "folder": str(folder) if folder else None},
                               "agreement": result.to_dict() if result else None}, indent=2))
    else:
        typer.echo(repr(code) + ("\n\n" + repr(result) if result is not None else ""))
    if saved:
        echo_saved(*saved, as_json=as_json)


@app.command("neighbors")
def neighbors_cmd(run: Path = _RUN,
                  image: Optional[Path] = typer.Argument(None, help="A query image file (default: rows of the data)."),
                  index: Optional[List[int]] = typer.Option(None, "--index", help="Query row of the data (repeatable)."),
                  k: int = typer.Option(8, "--k", help="Neighbours per query."),
                  metric: str = typer.Option("cosine", "--metric", help="cosine or l2 (code space; pixels use l2)."),
                  queries: int = typer.Option(6, "--queries", help="Without IMAGE/--index: one query per class, "
                                                                   "this many."),
                  layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL, data: Optional[str] = _DATA,
                  png: Optional[Path] = typer.Option(None, "--png", help="Also write the figure here."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
                  quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Nearest neighbours in CNN code space (and in raw pixels, for contrast) of query images."""
    from ..training.runs import load_run

    if image is not None and index:
        raise InputError("give IMAGE or --index, not both; got both")
    loaded = load_run(run)
    code = cached_codes(loaded, layer=layer, pool=pool, data=data, progress=show_progress(quiet))
    nb, pn, qlabels = save_neighbors(loaded, code, rows=index, image=image, k=k, metric=metric, n_queries=queries)
    if png is not None:
        from ..io import atomic_write_bytes
        from ..plots.common import to_png

        query_images = None if image is None else _image_for(code, image)
        atomic_write_bytes(png, to_png(nb.plot(code, query_images=query_images, compare={"raw pixels": pn})))
    if as_json:
        typer.echo(json.dumps({"layer": code.layer, "metric": metric, "k": k, "query": nb.query.tolist(),
                               "code": {"indices": nb.indices.tolist(), "distances": nb.distances.tolist()},
                               "pixels": {"indices": pn.indices.tolist(), "distances": pn.distances.tolist()}},
                              indent=2))
    else:
        typer.echo(_neighbors_text(code, nb, pn, qlabels, image, k, metric))
    saved = [f"{Path(loaded.dir) / 'results' / NEIGHBORS}.json (+ .npz)"] if loaded.dir is not None else []
    if png is not None:
        saved.append(png)
    if saved:
        echo_saved(*saved, as_json=as_json)


def _neighbors_text(code, nb, pn, qlabels, image, k: int, metric: str) -> str:
    names = code.class_names
    name = lambda i: (names[int(code.labels[i])] if names and code.labels is not None  # noqa: E731
                      else str(int(code.labels[i])) if code.labels is not None else "")
    lines = [f"{k} nearest neighbours in {code.layer} code space ({code.dims}-D, {metric}) and in raw pixels (l2) "
             f"among {len(code)} images of {code.data_label}:"]
    for qi in range(len(nb)):
        lines.append(f"query {int(nb.query[qi])} ({name(int(nb.query[qi]))})" if len(nb.query) else f"query {image}")
        lines.append("  code:   " + ", ".join(f"{j} {name(j)}" for j in nb.indices[qi]))
        lines.append("  pixels: " + ", ".join(f"{j} {name(j)}" for j in pn.indices[qi]))
    if qlabels is not None and code.labels is not None:
        lines.append(f"same class as the query: code {100 * nb.agreement(code.labels):.0f}%, "
                     f"pixels {100 * pn.agreement(code.labels):.0f}%")
    return "\n".join(lines)


def _image_for(code, path):
    from ..data.images import load_image

    c, h, w = code.images([0]).shape[1:]
    return load_image(path, size=(h, w), channels=c)[None]


@app.command("tsne")
def tsne_cmd(run: Path = _RUN, layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL,
             data: Optional[str] = _DATA,
             n: int = typer.Option(5000, "--n", help="Codes to embed (a seeded random subset when there are more)."),
             perplexity: float = typer.Option(30.0, "--perplexity", help="t-SNE perplexity (below n / 3)."),
             seed: int = typer.Option(0, "--seed", help="Seed of the subset, PCA and t-SNE."),
             grid: str = typer.Option("auto", "--grid", help="ROWSxCOLS grid mosaic, auto (a square grid of up to "
                                                             "4,096 images) or none."),
             projector: Optional[Path] = typer.Option(None, "--projector", help="Also export these codes to this "
                                                                                "folder for TensorBoard's Projector."),
             thumb: int = typer.Option(32, "--thumb", help="Thumbnail size (px) saved for the report."),
             n_jobs: int = typer.Option(1, "--n-jobs", help="openTSNE threads."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
             quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """t-SNE map of CNN codes (PCA to 50 dims, then openTSNE), its grid mosaic, optional Projector export."""
    from ..training.runs import load_run

    loaded = load_run(run)
    code = cached_codes(loaded, layer=layer, pool=pool, data=data, progress=show_progress(quiet))
    result, cells, exported = save_tsne(loaded, code, n=n, perplexity=perplexity, seed=seed, grid=grid, thumb=thumb,
                                        n_jobs=n_jobs, projector=projector)
    if as_json:
        out = result.to_dict()
        out["grid"] = None if cells is None else {"rows": cells.rows, "cols": cells.cols, "cost": cells.cost}
        out["projector"] = None if exported is None else str(exported.folder)
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo("\n".join(repr(r) for r in (result, cells, exported) if r is not None))
    saved = [f"{Path(loaded.dir) / 'results' / TSNE}.json (+ .npz)"] if loaded.dir is not None else []
    if exported is not None:
        saved.append(exported.folder)
    if saved:
        echo_saved(*saved, as_json=as_json)
