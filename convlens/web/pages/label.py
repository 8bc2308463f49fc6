"""``/label``: CNN vs Human, the lecture's labeling game after Karpathy's ILSVRC interface (2014).

Pages (each with its JSON twin under ``/api``):

* ``/label``: start a session (annotator, sample size, practice images), the sessions so far;
* ``/label/sessions/{id}``: the game: the image, a filter over every class with example images, up to 5
  labels, a timer; keyboard-first (static/label.js);
* ``/label/sessions/{id}/review``: after a session, tag each image one of you got wrong with an error category;
* ``/label/results[?annotator=NAME]``: human vs CNN on the same images (``convlens.training.human_vs_cnn``).

The API for scripts: ``POST api/label/sessions``, ``GET api/label/sessions/{id}/next``, ``POST
api/label/sessions/{id}/answers``, ``POST api/label/sessions/{id}/tags``, ``GET api/label/sessions/{id}/examples``;
exports ``label/answers.csv`` and ``label/answers.json``. Images are PNGs by id only (``label/png/images/t12``,
examples ``label/png/{session}/{class}/{k}``). The answers live in ``RUN/labels.sqlite``
(``convlens.results.labels``); only sessions of the explorer's data and the run's current weights are scored.
"""
from __future__ import annotations

import json

import numpy as np
from starlette.responses import RedirectResponse, Response

from ...results.labels import export_rows, to_csv
from ...training.human_vs_cnn import CATEGORIES, CELL_TITLES, CELLS, KARPATHY_2014
from ..errors import NotFound, WebError
from ..png import encode
from . import page, raw
from .label_game import DEFAULT_N, EXAMPLES, MAX_LABELS, body, game

CELL_SHOWN = 120  # images listed per cell on the results page (every one is in the JSON twin and the exports)


def _json(obj, status: int = 200) -> Response:
    from ..responses import to_json

    return Response(to_json(obj), status_code=status, media_type="application/json")


def _plain(obj):
    """JSON-ready values (NaN -> None), as the JSON twin shows them, for the template too."""
    from ..responses import to_json

    return json.loads(to_json(obj))


# ---- start ---------------------------------------------------------------------------------------------

@page("/label", "label.html")
def label_page(ex, request) -> dict:
    g = game(ex)
    sessions = [s.to_dict() for s in g.store.sessions(data=g.data_key)]
    return {"run": ex.name, "images": len(ex.data), "classes": len(g.classes), "default_n": min(DEFAULT_N, len(ex.data)),
            "sessions": sessions, "annotators": sorted({s["annotator"] for s in sessions}),
            "max_labels": MAX_LABELS, "examples": EXAMPLES}


@raw("/api/label/sessions", methods=("POST",))
def create_session_api(ex, request) -> Response:
    data = body(request)
    if not isinstance(data, dict):
        raise WebError(f'the body must be a JSON object {{"annotator", "n"}}; got {type(data).__name__}')
    s = game(ex).start(data.get("annotator"), data.get("n", DEFAULT_N), data.get("practice", 0), data.get("seed", 0))
    return _json({"session": s.id, **s.to_dict()}, status=201)


@raw("/label/sessions", methods=("POST",))
def create_session_form(ex, request) -> Response:
    form = body(request, form=True)
    s = game(ex).start(form.get("annotator"), form.get("n") or DEFAULT_N, form.get("practice") or 0,
                       form.get("seed") or 0)
    return RedirectResponse(f"sessions/{s.id}", status_code=303)  # relative: /label/sessions/<id>


# ---- the game ----------------------------------------------------------------------------------------

@page("/label/sessions/{id}", "label_session.html")
def session_page(ex, request) -> dict:
    g = game(ex)
    sid = request.path_params["id"]
    s = g.session(sid)
    return {"session": s.to_dict(), "item": g.next(sid), "classes": g.classes, "max_labels": MAX_LABELS,
            "examples": EXAMPLES}


@raw("/api/label/sessions/{id}/next")
def next_api(ex, request) -> Response:
    return _json(game(ex).next(request.path_params["id"]))


@raw("/api/label/sessions/{id}/answers", methods=("POST",))
def answer_api(ex, request) -> Response:
    return _json(game(ex).answer(request.path_params["id"], body(request)))


@raw("/api/label/sessions/{id}/examples")
def examples_api(ex, request) -> Response:
    e = game(ex).examples(request.path_params["id"])
    return _json({"source": e["source"], "per_class": EXAMPLES, "counts": e["counts"]})


# ---- tagging the errors after a session -------------------------------------------------------------

@page("/label/sessions/{id}/review", "label_review.html")
def review_page(ex, request) -> dict:
    g = game(ex)
    sid = request.path_params["id"]
    s = g.session(sid)
    rows = []
    for r in g.store.rows(session=sid):
        h, c = r["truth"] in r["labels"], r["truth"] in r["model_top5"][:5]
        if not (h and c):
            cell = "human_only_correct" if h else "cnn_only_correct" if c else "both_wrong"
            rows.append({"image": r["image"], "truth": r["truth"], "labels": r["labels"], "model_top5": r["model_top5"],
                         "cell": cell, "cell_title": CELL_TITLES[cell], "category": r["category"]})
    return {"session": s.to_dict(), "answers": rows, "categories": CATEGORIES,
            "tagged": sum(r["category"] is not None for r in rows)}


@raw("/api/label/sessions/{id}/tags", methods=("POST",))
def tags_api(ex, request) -> Response:
    data = body(request)
    tags = data.get("tags") if isinstance(data, dict) and "tags" in data else \
        {data.get("image_id"): data.get("category")} if isinstance(data, dict) else None
    if not isinstance(tags, dict):
        raise WebError('the body must be {"image_id", "category"} or {"tags": {image_id: category}}')
    g, sid = game(ex), request.path_params["id"]
    for image, category in tags.items():
        g.tag(sid, str(image), category)
    return _json({"session": sid, "tagged": len(tags)})


@raw("/label/sessions/{id}/tags", methods=("POST",))
def tags_form(ex, request) -> Response:
    form = body(request, form=True)
    g, sid = game(ex), request.path_params["id"]
    for key, category in form.multi_items():
        if key.startswith("tag-"):
            g.tag(sid, key[4:], category or None)
    return RedirectResponse("review?saved=1", status_code=303)


# ---- results and exports ------------------------------------------------------------------------------

def _comparison(ex, request):
    g = game(ex)
    annotator = request.query_params.get("annotator") or None
    weights = g.weights_key()
    everyone = g.store.rows(data=g.data_key)
    known = sorted({r["annotator"] for r in everyone})
    if annotator is not None and annotator not in known:
        from ..errors import not_found

        raise not_found("annotator", annotator, known)
    result = g.store.comparison(data=g.data_key, weights=weights, annotator=annotator, class_names=g.classes)
    left_out = sum(r["weights"] != weights for r in everyone if annotator in (None, r["annotator"]))
    return g, result, known, left_out


@page("/label/results", "label_results.html")
def results_page(ex, request) -> dict:
    g, result, known, left_out = _comparison(ex, request)
    d = result.to_dict()
    d.update(run=ex.name, num_classes=len(g.classes), annotators_all=known, left_out=left_out, cell_titles=CELL_TITLES, cell_order=list(CELLS),
             cell_shown=CELL_SHOWN, karpathy=KARPATHY_2014,
             note=("Pooled over annotators: an image answered by several people counts once per answer (for the "
                   "CNN too), so McNemar's test assumes more independence than the rows have."
                   if result.annotator is None and len(d["annotators"]) > 1 else ""))
    counts = d["seconds"]["counts"]
    d["seconds"]["bars"] = [round(100 * c / max(counts), 1) for c in counts] if counts and max(counts) else []
    return _plain(d)


@raw("/label/answers.csv")
def answers_csv(ex, request) -> Response:
    g = game(ex)
    rows = g.store.rows(data=g.data_key, annotator=request.query_params.get("annotator") or None,
                        practice=request.query_params.get("practice") == "1")
    return Response(to_csv(rows), media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{ex.name}-labels.csv"'})


@raw("/label/answers.json")
def answers_json(ex, request) -> Response:
    g = game(ex)
    rows = g.store.rows(data=g.data_key, annotator=request.query_params.get("annotator") or None,
                        practice=request.query_params.get("practice") == "1")
    return _json({"run": ex.name, "classes": len(g.classes), "answers": export_rows(rows)})


# ---- images, by id only --------------------------------------------------------------------------------

def _thumb(image, side: int) -> bytes:
    """PNG of a (C, H, W) image about ``side`` px: small images upscaled (nearest), big ones shrunk."""
    from PIL import Image

    h, w = image.shape[-2:]
    if max(h, w) <= side:
        return encode(image, size=side)
    from ..png import to_uint8

    im = Image.fromarray(to_uint8(image))
    im.thumbnail((side, side), Image.BILINEAR)
    return encode(np.asarray(im))


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@raw("/label/png/images/{image}")
def image_png(ex, request) -> Response:
    g = game(ex)
    i = g.index(request.path_params["image"])
    return _png(_thumb(ex.data[i][0], 256))


@raw("/label/png/{id}/{cls}/{k}")
def example_png(ex, request) -> Response:
    g = game(ex)
    e = g.examples(request.path_params["id"])
    cls, k = request.path_params["cls"], request.path_params["k"]
    if not (cls.isdigit() and k.isdigit()) or int(cls) >= len(g.classes):
        raise NotFound(f"no example {cls!r}/{k!r}: class indices are 0 … {len(g.classes) - 1}")
    rows = e["rows"].get(int(cls), [])
    if int(k) >= len(rows):
        raise NotFound(f"class {g.classes[int(cls)]!r} has {len(rows)} example images; got {k!r}")
    return _png(_thumb(e["dataset"][rows[int(k)]][0], 64))

