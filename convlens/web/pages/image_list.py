"""``/images``: the explorer's data, a page of thumbnails at a time (label, and the prediction once the
predictions of the data are computed: a background job, one forward over the data), filters by class and
right/wrong, the uploaded images, and the upload form; the uploads themselves (``POST api/images``, the
form's ``POST images/upload``: :mod:`convlens.web.uploads`); and every image's PNG by id
(``png/images/{id}``, ``?size=N`` for thumbnails).
"""
from __future__ import annotations

import math
import re
from urllib.parse import quote

import numpy as np
import torch
from starlette.responses import RedirectResponse, Response

from .. import uploads as up
from ..errors import WebError
from ..params import image_id, int_param, size_param
from ..png import encode, png, response
from ..responses import JSON
from . import page, raw
from .predictions import class_name, data_names, label_of, model_labels, predictions

PER_PAGE = 48        # thumbnails per page of /images
UPLOADS_SHOWN = 24   # uploads listed on /images


@page("/images", "images.html")
def images_page(ex, request) -> dict:
    n = len(ex.data.labels)
    names = data_names(ex)
    labels = np.asarray(torch.as_tensor(ex.data.labels).reshape(-1), dtype=np.int64)
    cls = request.query_params.get("class", "")
    show = request.query_params.get("show", "all")
    if show not in ("all", "right", "wrong"):
        raise WebError(f"show must be all, right or wrong; got {show[:40]!r}")
    rows = np.arange(n)
    if cls != "":
        if not re.fullmatch(r"[0-9]{1,9}", cls) or int(cls) >= max(len(names), int(labels.max()) + 1 if n else 0):
            raise WebError(f"class must be a class index of the data in [0, {max(len(names), 1) - 1}]; got "
                           f"{cls[:40]!r}")
        rows = rows[labels == int(cls)]
    preds, job = predictions(ex)
    if preds is not None and show != "all":
        right = preds[0] == model_labels(ex)
        rows = rows[right[rows]] if show == "right" else rows[~right[rows]]
    elif show != "all":
        rows = rows[:0]
    pages = max(1, math.ceil(len(rows) / PER_PAGE))
    p = int_param(request, "page", 1, 1, pages)
    shown = rows[(p - 1) * PER_PAGE:p * PER_PAGE]
    items = []
    for r in shown.tolist():
        item = {"id": f"t{r}", "row": r, "label": label_of(ex, r), "image": f"png/images/t{r}",
                "thumb": up.thumb_url(f"t{r}"), "prediction": None, "correct": None}
        if preds is not None:
            k = int(preds[0][r])
            item["prediction"] = {"index": k, "name": class_name(ex, k), "prob": float(preds[1][r])}
            item["correct"] = bool(k == model_labels(ex)[r])
        items.append(item)
    query = {"class": cls, "show": show}

    def link(page_no):
        q = "&".join(f"{k}={quote(str(v))}" for k, v in {**query, "page": page_no}.items() if v not in ("", "all"))
        return "images" + (f"?{q}" if q else "")
    ups = up.uploads(ex)
    counts = np.bincount(labels, minlength=len(names)) if n else np.zeros(len(names), int)
    return {"n": n, "data": str(getattr(ex.data, "source", "") or getattr(ex.data, "name", "") or "data"),
            "page": p, "pages": pages, "per_page": PER_PAGE, "matching": int(len(rows)),
            "prev": link(p - 1) if p > 1 else None, "next": link(p + 1) if p < pages else None,
            "filter": {"class": cls, "show": show},
            "classes": [{"index": i, "name": nm, "count": int(counts[i]) if i < len(counts) else 0}
                        for i, nm in enumerate(names)],
            "images": items, "predictions": None if job is None else job.to_dict(),
            "uploads": [{"id": u, "image": f"png/images/{u}", "thumb": up.thumb_url(u)} for u in ups[:UPLOADS_SHOWN]],
            "uploads_total": len(ups), "input": list(up.input_shape(ex)), "crop": up.crop_of(ex.run),
            "max_bytes": up.MAX_BYTES, "max_pixels": up.MAX_PIXELS}


# ---- uploads ---------------------------------------------------------------------------------------------------

async def _store_upload(ex, request) -> str:
    from starlette.concurrency import run_in_threadpool

    data = await up.read_upload(request)
    return await run_in_threadpool(up.store, ex, data)


@raw("/api/images", name="upload_api", methods=("POST",))
async def upload_api(ex, request) -> Response:
    new = await _store_upload(ex, request)
    return JSON({"id": new, "page": f"images/{new}", "image": f"png/images/{new}"}, status_code=201)


@raw("/images/upload", name="upload_form", methods=("POST",))
async def upload_form(ex, request) -> Response:
    new = await _store_upload(ex, request)
    return RedirectResponse(new, status_code=303)  # relative to /images/upload: /images/<id>


# ---- an image's PNG ------------------------------------------------------------------------------------------

@raw("/png/images/{id}", name="image_png")
def image_png(ex, request) -> Response:
    """The image (``?size=N``: shrunk to N px high, or enlarged by an integer factor to about N px)."""
    x = up.image(ex, image_id(ex, request))
    size = size_param(request)
    if size is not None and x.shape[1] > size:
        from ...codespace.codes import thumbnails

        return response(encode(thumbnails(x[None], size)[0]))
    return png(x, size=size)
