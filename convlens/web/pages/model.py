"""``/``: the model -- the lecture's per-layer table with its memory/params chart, the training curves,
the evaluation (top-1/top-5, easiest and hardest classes with examples, the confusion matrix whose cells
open their images at ``/confusion/{true}/{pred}``), the health verdicts and the probe table when they are
cached; a link per explorable layer.

What the page shows comes from the run's results store (the files the CLI writes); what is missing is
started as a background job: the evaluation as soon as the page is opened (one forward over the data),
the health check on request (``POST /api/start/health``, a button on the page). Results read from the
store are kept in memory while their files stay the same (:func:`saved`), so a page served from the
cache never re-reads a large JSON (an ImageNet evaluation holds a 1000x1000 confusion matrix).
"""
from __future__ import annotations

import hashlib
import threading
import weakref

import numpy as np
from starlette.responses import JSONResponse, RedirectResponse, Response

from ..errors import NotFound, not_found
from . import page, raw

EXAMPLES = 5         # example images per easiest/hardest class
CLASSES_SHOWN = 5    # easiest and hardest classes shown
CONFUSION_CAP = 30   # classes at most in the confusion table (those with the most images)
CELL_IMAGES = 400    # thumbnails at most on a confusion cell's page

# ---- what the explorer keeps in memory, per Explorer ------------------------------------------------------

_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MEMO_LOCK = threading.Lock()


def memo(ex) -> dict:
    """A dict kept with ``ex`` for the model and layer pages' in-memory caches (results read from the
    store, figures, per-layer maxima, projections); gone with the Explorer."""
    with _MEMO_LOCK:
        found = _MEMO.get(ex)
        if found is None:
            found = _MEMO[ex] = {}
        return found


def _file_stats(path) -> tuple:
    out = []
    for p in (path, path.with_suffix(".npz")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def saved(ex, name: str, options: dict | None = None, *, exact: bool = False):
    """(the saved result ``name`` as its object, a short version id of its files) or (None, None): with
    ``options`` None the one the report shows (``ResultStore.shown``; ``exact``: the default one only),
    else exactly that one; never a stale one. Read once while its files stay the same (``ex.result`` reads
    them again on every call)."""
    from ...results.registry import analysis, imported

    if options is None and not exact:
        entry = ex.store.shown(name)
    else:
        entry = ex.store.entry(name, options)
        if entry is not None and entry.state == "stale":
            entry = None
    if entry is None:
        return None, None
    stats = _file_stats(entry.path)
    key = ("saved", name, str(entry.path), stats)
    cache = memo(ex).setdefault("saved", {})
    if key not in cache:
        value = imported(analysis(name).load)(entry.path)
        for old in [k for k in list(cache) if k[:3] == key[:3]]:  # an older version of the same files
            cache.pop(old, None)
        cache[key] = (value, hashlib.sha1(repr(stats).encode()).hexdigest()[:10])
    return cache[key]


def data_options(ex) -> dict | None:
    """The options under which the CLI saves a result over the explorer's data: ``{"data": DIR}`` for
    ``serve --data DIR`` (``convlens top-patches RUN --data DIR``), None for the run's own test split."""
    return {"data": ex.data_source} if ex.data_source is not None else None


def data_or_none(ex):
    """(the explorer's data, None) or (None, why it cannot be loaded)."""
    try:
        return ex.data, None
    except Exception as err:  # noqa: BLE001 -- the model page is shown without data, saying why
        return None, f"{type(err).__name__}: {err}"


def remember_job(ex, key: str, job) -> None:
    if job is not None:
        memo(ex).setdefault("jobs", {})[key] = job


def job_shown(ex, key: str) -> dict | None:
    """The job started under ``key`` while it runs (or failed: shown with its error), else None."""
    job = memo(ex).get("jobs", {}).get(key)
    if job is None or job.state == "done":
        return None
    return job.to_dict()


def relative_back(request, target: str) -> str:
    """A relative URL from this request's path to ``target`` (relative to the app's root)."""
    from ..app import rel

    prefix = rel(request)
    return (prefix if prefix != "./" else "") + target or "./"


def wants_html(request) -> bool:
    return "text/html" in request.headers.get("accept", "")


# ---- the model page ---------------------------------------------------------------------------------------

@page("/", "model.html")
def model_page(ex, request) -> dict:
    summary = ex.summary
    rows = summary["layers"]
    data, data_error = data_or_none(ex)
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
    options = data_options(ex)
    found, version = saved(ex, "evaluation", options)
    if found is not None:
        return _evaluation_dict(found), version, None
    if not start or data is None:
        return None, None, None

    def compute(progress):
        from ...training.evaluate import evaluate

        progress(0.05, f"scoring {len(data)} images")
        result = evaluate(ex.run, data)
        memo(ex)["evaluated"] = result  # its per-image predictions open the confusion cells
        return result
    result, job = ex.ensure("evaluation", options, "Evaluating the model on its data", compute)
    if result is not None:
        return _evaluation_dict(result), "new", None
    remember_job(ex, "evaluation", job)
    return None, None, job


def evaluation_section(ex, data):
    ev, version, job = evaluation(ex, data)
    if ev is None:
        return None, None if job is None else job.to_dict()
    cache = memo(ex).setdefault("evaluation_section", {})
    key = (version, None if data is None else len(data))
    if key not in cache:
        cache.clear()
        cache[key] = _summarize_evaluation(ev, data)
    return cache[key], None


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
    found, _ = saved(ex, "health", data_options(ex))
    if found is None:
        return None, job_shown(ex, "health")
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
    result, job = ex.ensure("health", data_options(ex), "Checking the training's health", compute)
    remember_job(ex, "health", job)
    return result, job


@raw("/api/start/{what}", methods=("POST",))
def start(ex, request):
    """Start a model-level analysis the page offers as a button (``health``); a form post is sent back to
    the model page, an API client gets the job."""
    what = request.path_params["what"]
    starters = {"health": start_health}
    if what not in starters:
        raise not_found("analysis", what, starters)
    _, job = starters[what](ex)
    if wants_html(request):
        return RedirectResponse(relative_back(request, ""), status_code=303)
    return JSONResponse({"job": None if job is None else job.to_dict()}, status_code=202 if job else 200)


def probe_section(ex) -> dict | None:
    found, _ = saved(ex, "probe")
    if found is None:
        return None
    return {"headers": found.headers(), "rows": found.table(), "layers": list(found.layers),
            "chance": found.chance, "n_test": found.n_test}


# ---- figures (PNG, drawn once per explorer by convlens.plots) ---------------------------------------------

_PLOT_LOCK = threading.Lock()  # pyplot is not thread-safe: requests are served from a thread pool


def _figure_png(ex, key: str, draw) -> Response:
    from ...plots.common import to_png

    cache = memo(ex).setdefault("figures", {})
    if key not in cache:
        with _PLOT_LOCK:
            if key not in cache:
                cache[key] = to_png(draw())
    return Response(cache[key], media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


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
    found, version = saved(ex, "probe")
    if found is None:
        raise NotFound("no probe result in this run (convlens probe RUN computes it)")
    return _figure_png(ex, f"probe {version}", found.plot)


# ---- a confusion cell: its images ---------------------------------------------------------------------------

def predictions(ex, data):
    """The explorer's data scored by the model (an ``Evaluation``: matched labels and top-k predictions), from
    memory, or (None, job) after starting it (a forward over the data; kept in memory, not saved)."""
    found = memo(ex).get("evaluated")
    if found is not None:
        return found, None

    def work(progress):
        from ...training.evaluate import evaluate

        with ex.lock:
            result = evaluate(ex.run, data)
        memo(ex)["evaluated"] = result
        return result
    job = ex.jobs.submit(f"predictions {ex.name}", "Scoring the images", work)
    if job.state == "done":
        return job.result, None
    return None, job


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
    result, job = predictions(ex, data)
    if result is None:
        out["job"] = job.to_dict()
        return out
    hits = ((result.labels == t) & (result.predictions == p)).nonzero().view(-1).tolist()
    out["count"] = len(hits)
    out["images"] = [{"image": f"t{i}", "index": i} for i in hits[:CELL_IMAGES]]
    out["shown"] = len(out["images"])
    if len(hits) > CELL_IMAGES:
        out["note"] = f"the first {CELL_IMAGES} of {len(hits)} images"
    return out
