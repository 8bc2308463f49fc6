"""`convlens codes`, `convlens neighbors` and `convlens tsne`: the CNN code space of a run.

Thin over convlens.codes / neighbors / tsne / tsne_grid / export_projector. Codes are cached in
``RUN/codes/<layer>-<pool>[-<data>]/`` (``convlens.features`` layout: memmaps + manifest; resumed
after an interruption, reused by the next command while the run's weights and data are those it was
made from; ``codes --force`` extracts again). Results for the report's "codes" section:
``RUN/results/codes-agreement.json``, ``codes-neighbors.json/.npz`` and ``codes-tsne.json/.npz``
(with other options, beside them as ``<name>@<key>.*``). Under ``torchrun``, ``codes`` extracts a shard
per process (each writes its shard of the cache) and rank 0 saves the agreement (launcher.py).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer

from ..errors import InputError
from ..results import ResultStore, saving
from .app import app
from .launcher import Launch, launched
from .options import ON_ERROR, SPLIT, data_key, given_options, load_data
from .output import echo_saved, show_progress

AGREEMENT, NEIGHBORS, TSNE = "codes-agreement", "codes-neighbors", "codes-tsne"


# ---- shared steps (also used by demo_codes) -----------------------------------------------------------------

def cached_codes(run, *, layer: str | None = None, pool: str | None = None, data=None,
                 split: str = "test", on_error: str = "raise", out: Path | None = None, progress: bool = True,
                 launch: Launch = Launch()):
    """convlens.codes of the run's images (``data``, ``split``, ``on_error`` as the commands take them; ``data``
    may be the images already loaded when ``out`` is given), cached in ``out`` or else in :func:`cache_dir`;
    ``launch``: this process's shard."""
    from ..codespace.codes import codes

    folder = Path(out) if out is not None else cache_dir(run, layer, pool, data_key(data, split, on_error))
    return codes(run, load_data(run, data, split, on_error), layer, pool=pool, out=folder, progress=progress,
                 **launch.shard)


def cache_dir(run, layer, pool, data, *, force: bool = False) -> Path | None:
    """The results store's folder for these codes, ``RUN/codes/<layer>-<pool>[-<data>]``, emptied when it holds
    codes of other weights or data, or with ``force`` (None for a run without a directory)."""
    store = ResultStore.of(run)
    if store is None:
        return None
    slug = lambda s: re.sub(r"[^A-Za-z0-9_.]+", "_", str(s)).strip("_")[:60]  # noqa: E731
    name = f"{slug(layer) if layer else 'classifier-input'}-{pool or 'auto'}" + (f"-{slug(data)}" if data else "")
    return store.cache(f"codes/{name}", data=data, force=force)


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


def save_neighbors(run, code, *, options: dict | None = None, rows=None, image=None, k: int = 8,
                   metric: str = "cosine", n_queries: int = 6, thumb: int = 64):
    """Neighbours of the queries in code space and in raw pixels, saved as the default result (or beside it
    with ``options``, the command's). Returns (code Neighbors, pixel Neighbors, query labels or None, the
    JSON's path or None)."""
    with saving(run, NEIGHBORS, options) as saver:
        nb, pn, qlabels, meta, arrays = _neighbors(run, code, rows, image, k, metric, n_queries, thumb)
        saver.save((meta, arrays))
    return nb, pn, qlabels, saver.path


def _neighbors(run, code, rows, image, k: int, metric: str, n_queries: int, thumb: int):
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
    return nb, pn, qlabels, meta, arrays


def save_tsne(run, code, *, options: dict | None = None, n: int = 5000, perplexity: float | None = None, seed: int = 0,
              grid: str = "auto", thumb: int = 32, n_jobs: int = 1, projector: Path | None = None):
    """t-SNE of (a seeded subset of n of) the codes, its grid, optional projector export, saved as the default
    result (or beside it with ``options``, the command's). Returns (TSNEResult, TSNEGrid or None,
    ProjectorExport or None, the JSON's path or None)."""
    from ..codespace.tsne_map import tsne_map

    if not isinstance(n, int) or n < 4:
        raise InputError(f"--n must be an int >= 4; got {n}")
    shape = _grid_shape(grid, min(len(code), n))
    with saving(run, TSNE, options) as saver:
        made = tsne_map(code, n=n, perplexity=perplexity, seed=seed, grid=shape, thumb=thumb, n_jobs=n_jobs,
                        projector=projector)
        saver.save((made.meta, made.arrays))
    return made.result, made.cells, made.exported, saver.path


def _grid_shape(text: str, n: int) -> tuple[int, int] | None:
    if text in ("none", "off", ""):
        return None
    if text == "auto":
        from ..codespace.tsne_map import auto_grid

        return auto_grid(n)
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
    with saving(run, AGREEMENT) as saver:  # the codes' extraction counts here
        code = cached_codes(run, progress=False)
        saver.save(agreement_by_layer(run, code.data, k=5))
    save_neighbors(run, code, k=8, n_queries=6)
    save_tsne(run, code, n=min(len(code), 1024))


# ---- commands ------------------------------------------------------------------------------------------------

_RUN = typer.Argument(..., help="Run directory (written by `convlens train`).")
_LAYER = typer.Option(None, "--layer", help="Layer (default: the classifier's input, the lecture's CNN code; "
                                            "'NAME:input' reads what a layer receives).")
_POOL = typer.Option(None, "--pool", help="avg, max or flat (default: flat for the classifier's input, else avg).")
_DATA = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split).")


@app.command("codes")
def codes_cmd(ctx: typer.Context, run: Path = _RUN, layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL,
              data: Optional[str] = _DATA, split: str = SPLIT, on_error: str = ON_ERROR,
              out: Optional[Path] = typer.Option(None, "--out", help="Cache folder (default: RUN/codes/...)."),
              k: int = typer.Option(5, "--k", help="Neighbours for the label agreement per layer."),
              metric: str = typer.Option("cosine", "--metric", help="cosine or l2."),
              agreement: bool = typer.Option(True, "--agreement/--no-agreement",
                                             help="Also measure neighbour label agreement for pixels and each layer."),
              force: bool = typer.Option(False, "--force", help="Extract the codes again, even where cached."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
              quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Extract (and cache) the CNN codes of a run's images; neighbour label agreement per layer.

    Shards the images under torchrun (rank 0 saves and prints)."""
    from ..training.runs import load_run

    loaded = load_run(run)
    with launched(loaded.device) as launch:
        folder = out or launch.broadcast(  # rank 0 empties a cache of other weights or data; then all use it
            cache_dir(loaded, layer, pool, data_key(data, split, on_error), force=force) if launch.leader else None)
        code = cached_codes(loaded, layer=layer, pool=pool, data=data, split=split, on_error=on_error, out=folder,
                            progress=show_progress(quiet), launch=launch)
        result, path = save_agreement(loaded, code, options=given_options(ctx, AGREEMENT), k=k, metric=metric,
                                      progress=show_progress(quiet), launch=launch) if agreement else (None, None)
        _echo_codes(code, folder, result, path, as_json)


def save_agreement(run, code, *, options: dict | None = None, k: int = 5, metric: str = "cosine",
                   progress: bool = False, launch: Launch = Launch()):
    """Neighbour label agreement per layer over ``code``'s images, saved as the default result (or beside it
    with ``options``); ``launch``: this process's shard (rank 0 saves). Returns (it, the JSON's path or None)."""
    from ..codespace.code_agreement import agreement_by_layer

    with launch.saving(run, AGREEMENT, options) as saver:
        result = agreement_by_layer(run, code.data, k=k, metric=metric, progress=progress, **launch.shard)
        saver.save(result)
    return result, saver.path


def _echo_codes(code, folder, result, path, as_json: bool) -> None:
    saved = [f"{folder} (the codes)"] if folder else []
    if path is not None:
        saved.append(path)
    if as_json:
        typer.echo(json.dumps({"codes": {**code.to_dict(), "folder": str(folder) if folder else None},
                               "agreement": result.to_dict() if result else None}, indent=2))
    else:
        typer.echo(repr(code) + ("\n\n" + repr(result) if result is not None else ""))
    if any(saved):
        echo_saved(*filter(None, saved), as_json=as_json)


@app.command("neighbors")
def neighbors_cmd(ctx: typer.Context, run: Path = _RUN,
                  image: Optional[Path] = typer.Argument(None, help="A query image file (default: rows of the data)."),
                  index: Optional[List[int]] = typer.Option(None, "--index", help="Query row of the data (repeatable)."),
                  k: int = typer.Option(8, "--k", help="Neighbours per query."),
                  metric: str = typer.Option("cosine", "--metric", help="cosine or l2 (code space; pixels use l2)."),
                  queries: int = typer.Option(6, "--queries", help="Without IMAGE/--index: one query per class, "
                                                                   "this many."),
                  layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL, data: Optional[str] = _DATA,
                  split: str = SPLIT, on_error: str = ON_ERROR,
                  png: Optional[Path] = typer.Option(None, "--png", help="Also write the figure here."),
                  as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
                  quiet: bool = typer.Option(False, "--quiet", help="No progress bar.")) -> None:
    """Nearest neighbours in CNN code space (and in raw pixels, for contrast) of query images."""
    from ..training.runs import load_run

    if image is not None and index:
        raise InputError("give IMAGE or --index, not both; got both")
    loaded = load_run(run)
    code = cached_codes(loaded, layer=layer, pool=pool, data=data, split=split, on_error=on_error,
                        progress=show_progress(quiet))
    nb, pn, qlabels, path = save_neighbors(loaded, code, options=given_options(ctx, NEIGHBORS), rows=index,
                                           image=image, k=k, metric=metric, n_queries=queries)
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
    saved = [f"{path} (+ .npz)"] if path is not None else []
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
def tsne_cmd(ctx: typer.Context, run: Path = _RUN, layer: Optional[str] = _LAYER, pool: Optional[str] = _POOL,
             data: Optional[str] = _DATA, split: str = SPLIT, on_error: str = ON_ERROR,
             n: int = typer.Option(5000, "--n", help="Codes to embed (a seeded random subset when there are more)."),
             perplexity: Optional[float] = typer.Option(None, "--perplexity", help="t-SNE perplexity, below n / 3 "
                                                        "(default 30, or just below n / 3 for fewer than 91 images)."),
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
    code = cached_codes(loaded, layer=layer, pool=pool, data=data, split=split, on_error=on_error,
                        progress=show_progress(quiet))
    result, cells, exported, path = save_tsne(loaded, code, options=given_options(ctx, TSNE), n=n,
                                              perplexity=perplexity, seed=seed, grid=grid, thumb=thumb,
                                              n_jobs=n_jobs, projector=projector)
    if as_json:
        out = result.to_dict()
        out["grid"] = None if cells is None else {"rows": cells.rows, "cols": cells.cols, "cost": cells.cost}
        out["projector"] = None if exported is None else str(exported.folder)
        typer.echo(json.dumps(out, indent=2))
    else:
        typer.echo("\n".join(repr(r) for r in (result, cells, exported) if r is not None))
    saved = [f"{path} (+ .npz)"] if path is not None else []
    if exported is not None:
        saved.append(exported.folder)
    if saved:
        echo_saved(*saved, as_json=as_json)
