"""``/``: the model -- the lecture's per-layer table with its memory/params chart, the training curves,
the evaluation (top-1/top-5, easiest and hardest classes with examples, the confusion matrix whose cells
open their images at ``/confusion/{true}/{pred}``), the health verdicts and the probe table when they are
cached; a link per explorable layer.

What the page shows comes from the run's results store (the files the CLI writes); what is missing is
started as a background job: the evaluation as soon as the page is opened (one forward over the data),
the health check on request (``POST /api/start/health``, a button on the page). Results read from the
store are kept in memory while their files stay the same (``Explorer.saved``), so a page served from the
cache never re-reads a large JSON (an ImageNet evaluation holds a 1000x1000 confusion matrix). A confusion
cell's images come from the top-1 predictions of the data (:mod:`.predictions`: a job the images list and
the code space share).
"""
from __future__ import annotations

import numpy as np

from ..errors import NotFound, not_found
from ..png import drawing, figure_png, response
from ..responses import started
from . import page, raw
from .predictions import model_labels, predictions

EXAMPLES = 5         # example images per easiest/hardest class
CLASSES_SHOWN = 5    # easiest and hardest classes shown
CONFUSION_CAP = 30   # classes at most in the confusion table (those with the most images)
CELL_IMAGES = 400    # thumbnails at most on a confusion cell's page


# ---- the model page ---------------------------------------------------------------------------------------

@page("/", "model.html")
def model_page(ex, request) -> dict:
    summary = ex.summary
    rows = summary["layers"]
    data, data_error = ex.data_or_error()
    out = {"run": ex.name, "model": summary["model"], "input_size": summary["input_size"],
           "layers": rows, "totals": {k: summary[k] for k in ("total_params", "total_activations", "total_macs",
                                                                "forward_bytes", "backward_bytes")},
           "classes": len(ex.run.class_names or []), "status": ex.run.status,
           "explorable": list(ex.layers),
           "links": {"layers": {name: f"layers/{name}" for name in ex.layers}},
           "charts": {"memory": "png/model/memory"},
           "data": None if data is None else {"images": len(data), "source": str(getattr(data, "source", "") or "")},
           "data_error": data_error}
    history = ex.run.history
    out["history"] = history or None
    out["charts"]["training"] = "png/model/training" if history else None
    out["evaluation"], out["evaluation_job"] = evaluation_section(ex, data)
    out["health"], out["health_job"] = health_section(ex)
    out["probe"] = probe_section(ex)
    out["charts"]["probe"] = "png/model/probe" if out["probe"] else None
    return out


# ---- evaluation --------------------------------------------------------------------------------------------

def _evaluation_dict(value) -> dict:
    return value if isinstance(value, dict) else value.to_dict()


def evaluation(ex, data, *, start: bool = True):
    """(the evaluation as ``Evaluation.to_dict()``, its version, None) from the cache, or (None, None, job)
    after starting ``convlens.evaluate`` on the explorer's data as a job (saved as ``evaluation``, the
    default result the demo and the report write; with ``--data``, beside it)."""
    options = ex.data_options
    found, version = ex.saved("evaluation", options)
    if found is not None:
        return _evaluation_dict(found), version, None
    if not start or data is None:
        return None, None, None

    def compute(progress):
        from ...training.evaluate import evaluate

        progress(0.05, f"scoring {len(data)} images")
        return evaluate(ex.run, data)
    result, job = ex.ensure("evaluation", options, "Evaluating the model on its data", compute)
    if result is not None:
        return _evaluation_dict(result), "new", None
    return None, None, job


def evaluation_section(ex, data):
    ev, version, job = evaluation(ex, data)
    if ev is None:
        return None, None if job is None else job.to_dict()
    key = (version, None if data is None else len(data))
    return ex.memo.lru("evaluation section", 1).get_or_make(key, lambda: _summarize_evaluation(ev, data)), None


def _summarize_evaluation(ev: dict, data) -> dict:
    names = list(ev["class_names"])
    linked = data is not None and int(ev["n"]) == len(data)  # examples are rows of the explorer's data

    def ranked(rows):
        return [{"class": r["class"], "index": r["index"], "accuracy": r["accuracy"], "n": r["n"],
                 "examples": [{"image": f"t{i}", "index": int(i)} for i in r["examples"][:EXAMPLES]] if linked
                 else []} for r in rows[:CLASSES_SHOWN]]
    k = int(ev.get("k", 5))
    out = {"n": ev["n"], "k": k, "num_classes": ev["num_classes"], "source": ev.get("source", ""),
           "split": ev.get("split", ""), "top1_error": ev["top1_error"], "top1": 1 - ev["top1_error"],
           f"top{k}_error": ev.get(f"top{k}_error"), f"top{k}": None if ev.get(f"top{k}_error") is None
           else 1 - ev[f"top{k}_error"], "topk_name": f"top-{k}",
           "easiest": ranked(ev.get("easiest", [])), "hardest": ranked(ev.get("hardest", [])),
           "most_confused": ev.get("most_confused", [])[:10], "linked": linked,
           "confusion": confusion_table(np.asarray(ev["confusion"], dtype=np.int64), names)}
    return out


def confusion_table(conf: np.ndarray, names: list[str], cap: int = CONFUSION_CAP) -> dict:
    """The confusion matrix restricted to the classes present (a row or column with a non-zero count), at
    most ``cap`` of them (those with the most images, true or predicted), in class order."""
    totals = conf.sum(0) + conf.sum(1)
    present = np.flatnonzero(totals > 0)
    shown = present
    note = ""
    if len(present) > cap:
        keep = present[np.argsort(-totals[present], kind="stable")[:cap]]
        shown = np.sort(keep)
        note = (f"the {cap} classes with the most images (true or predicted) of the {len(present)} present; "
                f"the other {len(conf) - len(shown)} of {len(conf)} classes are left out")
    elif len(present) < len(conf):
        note = f"the {len(present)} classes with images or predictions, of {len(conf)}"
    sub = conf[np.ix_(shown, shown)]
    return {"classes": shown.tolist(), "names": [names[i] for i in shown], "matrix": sub.tolist(),
            "row_totals": conf[shown].sum(1).tolist(), "present": int(len(present)), "total_classes": len(conf),
            "note": note}


# ---- health and probe --------------------------------------------------------------------------------------

def health_section(ex):
    """(the health verdicts of the cached ``health`` result, None) or (None, the job computing it, if started)."""
    found, _ = ex.saved("health", ex.data_options)
    if found is None:
        job = ex.job("health", ex.data_options)
        return None, None if job is None else job.to_dict()
    rows = [{"name": h.name, "path": h.path, "units": h.units, "dead_fraction": h.dead_fraction,
             "sparsity": h.sparsity_samples, "constant_fraction": h.constant_fraction,
             "mean_abs_corr": h.mean_abs_corr, "verdict": h.verdict, "issues": list(h.issues)}
            for h in found.layers]
    return {"verdict": found.verdict, "healthy": found.healthy, "samples": found.samples, "layers": rows}, None


def start_health(ex):
    data = ex.data

    def compute(progress):
        from ...insight.health import health

        progress(0.05, f"measuring {min(1000, len(data))} images")
        return health(ex.run, data, progress=False)
    return ex.ensure("health", ex.data_options, "Checking the training's health", compute)


@raw("/api/start/{what}", methods=("POST",))
def start(ex, request):
    """Start a model-level analysis the page offers as a button (``health``); a form post is sent back to
    the model page, an API client gets the job."""
    what = request.path_params["what"]
    starters = {"health": start_health}
    if what not in starters:
        raise not_found("analysis", what, starters)
    _, job = starters[what](ex)
    return started(request, job, "")


def probe_section(ex) -> dict | None:
    found = ex.result("probe")
    if found is None:
        return None
    return {"headers": found.headers(), "rows": found.table(), "layers": list(found.layers),
            "chance": found.chance, "n_test": found.n_test}


# ---- figures (PNG, drawn once per explorer by convlens.plots) ---------------------------------------------

FIGURES_KEPT = 8


def _figure_png(ex, key: str, draw):
    cache = ex.memo.lru("figures", FIGURES_KEPT)
    found = cache.get(key)
    if found is None:
        with drawing():  # drawn once: a second request for it waits here, then finds it
            found = cache.get_or_make(key, lambda: figure_png(draw))
    return response(found, max_age=3600)


@raw("/png/model/memory")
def memory_png(ex, request):
    from ...plots.summary import memory_and_params

    return _figure_png(ex, "memory", lambda: memory_and_params(ex.summary, title=f"{ex.summary['model']}: "
                                                               "activations and parameters per layer"))


@raw("/png/model/training")
def training_png(ex, request):
    from ...plots.training import training_curves

    if not ex.run.history:
        raise NotFound(f"the run {ex.name} has no training history (it was wrapped, not trained)")
    return _figure_png(ex, "training", lambda: training_curves(ex.run.history))


@raw("/png/model/probe")
def probe_png(ex, request):
    found, version = ex.saved("probe")
    if found is None:
        raise NotFound("no probe result in this run (convlens probe RUN computes it)")
    return _figure_png(ex, f"probe {version}", found.plot)


# ---- a confusion cell: its images ---------------------------------------------------------------------------

def _class_index(value: str, names: list[str], what: str) -> int:
    try:
        i = int(value)
    except ValueError:
        if value in names:
            return names.index(value)
        raise not_found(what, value, names) from None
    if not 0 <= i < len(names):
        raise not_found(what, value, [f"0-{len(names) - 1}"])
    return i


@page("/confusion/{true}/{pred}", "model_confusion.html")
def confusion_page(ex, request) -> dict:
    data = ex.data
    ev, _, _ = evaluation(ex, data, start=False)
    names = list(ev["class_names"]) if ev is not None else list(ex.run.class_names or [])
    t = _class_index(request.path_params["true"], names, "class")
    p = _class_index(request.path_params["pred"], names, "class")
    out = {"true": {"index": t, "name": names[t]}, "predicted": {"index": p, "name": names[p]},
           "count": None if ev is None else int(ev["confusion"][t][p]), "images": None, "shown": 0,
           "job": None, "note": ""}
    preds, job = predictions(ex)
    if preds is None:
        out["job"] = job.to_dict()
        return out
    hits = np.flatnonzero((model_labels(ex) == t) & (preds[0] == p)).tolist()
    out["count"] = len(hits)
    out["images"] = [{"image": f"t{i}", "index": i} for i in hits[:CELL_IMAGES]]
    out["shown"] = len(out["images"])
    if len(hits) > CELL_IMAGES:
        out["note"] = f"the first {CELL_IMAGES} of {len(hits)} images"
    return out
