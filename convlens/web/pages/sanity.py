"""``/sanity``: which maps can you trust -- the verdicts of a saved ``convlens sanity`` result (Adebayo et al.,
"Sanity Checks for Saliency Maps", NeurIPS 2018; ``convlens.units.sanity``): per method, how similar its maps
stay while the model's layers are re-initialized from the top (and to a random-labels model's, where one was
compared), and whether it passes. The result shown is the one the report shows (``?result=STEM`` picks
another); its figures (the paper's curves and maps) as PNGs, drawn by the result's ``plot`` / ``plot_maps``.
Nothing is computed here: ``convlens sanity RUN`` computes it. :func:`sanity_link` is what the image page shows
beside its maps.
"""
from __future__ import annotations

from starlette.responses import Response

from ..errors import not_found
from ..memo import file_stats, version
from ..png import figure_png, response
from . import page, raw

FIGURES = {"curves": "plot", "maps": "plot_maps"}
FIGURES_KEPT = 8


def _entries(ex) -> list:
    """The saved sanity results that are not stale, the default one first, then by age."""
    return [e for e in ex.store.listing() if e.name == "sanity" and e.state != "stale"]


def _chosen(ex, stem: str | None):
    """(the store entry, its SanityResult, its version): ``stem``'s, else the one the report shows; None when
    the run has none."""
    if stem in (None, ""):
        entry = ex.store.shown("sanity")
    else:
        entries = _entries(ex)
        entry = next((e for e in entries if e.stem == stem), None)
        if entry is None:
            raise not_found("sanity result", stem, [e.stem for e in entries])
    if entry is None:
        return None
    result, v = ex.load(entry)
    return entry, result, v


def _verdicts(result) -> dict[str, dict]:
    return {m: {"passes": bool(v["passes"]), "model": v["model"], "data": v.get("data"),
                "rank_abs": v["rank_abs"], "ssim": v["ssim"]} for m, v in result.verdicts().items()}


def sanity_link(ex) -> dict | None:
    """What the image page shows of the run's sanity checks: the link to ``/sanity`` and each method's verdict;
    None when the run has no (current) ``sanity`` result."""
    try:
        found = _chosen(ex, None)
    except Exception:  # noqa: BLE001 -- an unreadable result: the page goes without the verdicts
        return None
    if found is None:
        return None
    entry, result, _ = found
    return {"url": "sanity", "result": entry.stem, "verdicts": _verdicts(result)}


@page("/sanity", "sanity.html", name="sanity_page")
def sanity_page(ex, request) -> dict:
    stem = request.query_params.get("result")
    found = _chosen(ex, stem)
    listed = [{"stem": e.stem, "options": e.options, "state": e.state, "created": e.created,
               "url": f"sanity?result={e.stem}"} for e in _entries(ex)]
    out = {"results": listed, "shown": None, "command": f"convlens sanity {ex.dir}",
           "readme": "Which maps can you trust: Grad-CAM, SmoothGrad, Integrated Gradients and sanity checks"}
    if found is None:
        return out
    entry, r, v = found
    n_images = int(r.spearman_abs.shape[2])
    rows = []
    for m, d in r.verdicts().items():
        rows.append({"method": m, **d})
    out.update(shown=entry.stem, state=entry.state, options=entry.options, model=r.model, steps=list(r.steps),
               images=n_images, targets=[int(t) for t in r.targets], computed_with=r.options,
               thresholds={"rank_abs": r.thresholds[0], "ssim": r.thresholds[1]},
               random_labels_model=r.random_labels_model, verdicts=rows,
               figures={f: f"png/sanity/{f}?result={entry.stem}&v={v}" for f in FIGURES})
    return out


@raw("/png/sanity/{figure}", name="sanity_png")
def sanity_png(ex, request) -> Response:
    """Adebayo et al.'s Fig. 4 (``curves``: similarity after each cascade step, per method) or Fig. 2 (``maps``:
    each method's map of the first image, trained then after each step)."""
    figure = request.path_params["figure"]
    if figure not in FIGURES:
        raise not_found("figure", figure, FIGURES)
    found = _chosen(ex, request.query_params.get("result"))
    if found is None:
        raise not_found("sanity result", request.query_params.get("result") or "(default)", [])
    entry, result, _ = found
    cache = ex.memo.lru("sanity figures", FIGURES_KEPT)
    key = (str(entry.path), version(file_stats(entry.path)), figure)
    data = cache.get_or_make(key, lambda: figure_png(getattr(result, FIGURES[figure])))
    return response(data)
