"""``/images/{id}`` (ids: :mod:`convlens.web.uploads`): what the network makes of one image --

* the top-5 predictions (softmax of the model's scores); each links to ``?target=<class>``, the class whose
  score the backprop views and the occlusion map follow (default: the top-1 class);
* one conv layer's activations as a channel grid (:mod:`.activations`);
* saliency with its GrabCut mask, deconvnet and guided backprop for the target (:mod:`.image_maps`);
* Grad-CAM, Grad-CAM++ and guided Grad-CAM for the target, SmoothGrad and Integrated Gradients on demand (a
  job), with the sanity checks' verdicts where the run has them (:mod:`.image_attribution`, :mod:`.sanity`);
* the occlusion map, a background job started by the page's button (:mod:`.occlusion`);
* its nearest neighbours in code space and in pixel space (:mod:`.neighbours`);
* previous/next image (arrow keys) and up to ``/images``.
"""
from __future__ import annotations

import numpy as np

from .. import uploads as up
from ..params import image_id
from . import page
from .activations import activations_section
from .image_attribution import attribution_section
from .image_maps import VIEWS, scripted_note
from .neighbours import neighbours
from .occlusion import occlusion_section
from .predictions import class_name, label_of, model_labels, scores, target

TOPK = 5


def _prev_next(ex, shown: str) -> tuple[str | None, str | None]:
    """The ids before and after ``shown``: data rows in order, uploads newest first."""
    row = up.row_of(shown)
    if row is not None:
        n = len(ex.data.labels)
        return (f"t{row - 1}" if row > 0 else None), (f"t{row + 1}" if row + 1 < n else None)
    ups = up.uploads(ex)
    i = ups.index(shown) if shown in ups else -1
    return (ups[i - 1] if i > 0 else None), (ups[i + 1] if 0 <= i < len(ups) - 1 else None)


@page("/images/{id}", "image.html", name="image_page")
def image_page(ex, request) -> dict:
    shown = image_id(ex, request)
    probs = scores(ex, shown)
    k = target(ex, request, probs)
    predicted = int(np.argmax(probs))
    top = np.argsort(-probs, kind="stable")[:min(TOPK, len(probs))]
    row = up.row_of(shown)
    q = f"?target={k}"
    c, h, w = up.input_shape(ex)
    prev_id, next_id = _prev_next(ex, shown)
    note = scripted_note(ex)
    out = {"id": shown, "kind": "data" if row is not None else "upload", "row": row,
           "label": label_of(ex, row) if row is not None else None, "image": f"png/images/{shown}",
           "shape": [c, h, w], "prev": prev_id, "next": next_id,
           "predictions": [{"index": int(i), "name": class_name(ex, int(i)), "prob": float(probs[i]),
                            "target": int(i) == k} for i in top],
           "predicted": {"index": predicted, "name": class_name(ex, predicted)},
           "target": {"index": k, "name": class_name(ex, k), "prob": float(probs[k]),
                      "default": request.query_params.get("target") in (None, "")},
           "views": {v: None if v in ("deconvnet", "guided") and note else f"png/images/{shown}/{v}{q}"
                     for v in VIEWS},
           "views_note": note,
           "arrays": f"api/images/{shown}/maps{q}"}
    if out["label"] is not None:
        out["label"]["model_index"] = int(model_labels(ex)[row])
    out["activations"], out["activations_error"] = activations_section(ex, request, shown)
    out["attribution"] = attribution_section(ex, shown, k, predicted)
    out["occlusion"] = occlusion_section(ex, shown, k, predicted)
    out["neighbors"] = neighbours(ex, shown)
    return out
