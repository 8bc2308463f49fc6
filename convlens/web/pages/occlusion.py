"""An image's occlusion map for a target class (Zeiler & Fergus), on its page: a background job started by
the page's button (``POST images/{id}/occlusion``; ``POST api/images/{id}/occlusion`` for an API client),
saved in the results store under the name and options ``convlens occlusion RUN --index I --target T``
saves (for an upload: ``convlens occlusion RUN RUN/uploads/<id>.png --target T``), with the CLI's defaults
(window 16, stride 4, grey 0.5, the default layer, exact incremental inference), so the CLI and the
explorer share it. Its three panels as PNGs (``png/images/{id}/occlusion/{panel}?target=T``).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
from starlette.responses import RedirectResponse, Response

from .. import uploads as up
from ..errors import NotFound, not_found
from ..params import image_id
from ..png import class_colors, heat, png
from ..responses import JSON
from . import raw
from .predictions import class_name, scores, target

# `convlens occlusion`'s defaults: the explorer's maps are the CLI's
OCCLUSION = dict(window=16, stride=4, baseline=0.5, method="incremental", batch_size=32, tau=0.35)
PANELS = ("p_target", "top_class", "activation")


def occlusion_options(ex, image_id: str, target: int | None) -> dict:
    """The options ``convlens occlusion`` saves this image's map under (see the module docstring)."""
    row = up.row_of(image_id)
    if row is not None and ex.data_source is None:
        options = {"index": [row]}
    elif row is not None:  # serve --data: no CLI option names a row of other data; the image names it
        options = {"image": f"{ex.data_source} (test split) row {row}"}
    else:
        options = {"image": str(up.upload_path(ex, image_id).resolve())}
    if target is not None:
        options["target"] = str(target)
    return options


def _found(ex, image_id: str, target: int, predicted: int):
    """The saved occlusion map of this image and target, or None: with the explicit target, or without
    one when the target is the prediction (``convlens occlusion RUN --index I``), or among the maps of
    the default result (``convlens occlusion RUN``)."""
    tries = [occlusion_options(ex, image_id, target)]
    if target == predicted:
        tries.append(occlusion_options(ex, image_id, None))
    row = up.row_of(image_id)
    for options in tries:
        found = ex.result("occlusion", options)
        if found:
            return found[0], options
    if row is not None and ex.data_source is None:
        found = ex.result("occlusion", {}) or []
        for m in found:
            if m.index == row and m.target == target and m.window == OCCLUSION["window"] \
                    and m.stride == OCCLUSION["stride"]:
                return m, {}
    return None, None


def start_occlusion(ex, image_id: str, target: int):
    """(the saved map, None) or (None, the job computing it under the CLI's name and options)."""
    from ...units.occlusion import default_layer, occlusion

    options = occlusion_options(ex, image_id, target)
    row = up.row_of(image_id)

    def compute(progress):
        o = OCCLUSION
        x = up.image(ex, image_id)
        h, w = x.shape[1:]
        positions = ((h - o["window"]) // o["stride"] + 1) * ((w - o["window"]) // o["stride"] + 1)
        progress(0.02, f"{positions} occluder positions")
        m = occlusion(ex.run, x, target, o["window"], o["stride"], o["baseline"], default_layer(ex.run.pixel_model()),
                      None, method=o["method"], batch_size=o["batch_size"], tau=o["tau"])
        if row is not None:
            m = replace(m, label=int(ex.data.labels[row]), index=row)
        return [m]
    found, job = ex.ensure("occlusion", options, f"Occlusion map of {image_id} for "
                                                 f"{class_name(ex, target)}", compute)
    return (found[0] if found else None), job


def _top_classes(m) -> list[tuple[int, int]]:
    ks, counts = np.unique(np.asarray(m.top_class), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(ks[i]), int(counts[i])) for i in order]


def occlusion_section(ex, image_id: str, target: int, predicted: int) -> dict:
    """The image page's occlusion map for ``target``: saved (``state`` done), being computed (job), or not
    started (none: the page offers the button)."""
    q = f"?target={target}"
    m, options = _found(ex, image_id, target, predicted)
    if m is None:
        options = occlusion_options(ex, image_id, target)
        job = ex.job("occlusion", options)
        return {"state": "job" if job is not None else "none", "options": options,
                "job": None if job is None else job.to_dict(), "start": f"images/{image_id}/occlusion{q}",
                "result": ex.store.path("occlusion", options).name}
    colors = class_colors([k for k, _ in _top_classes(m)])
    lo = np.unravel_index(int(np.argmin(m.p_target)), m.p_target.shape)
    return {"state": "done", "options": options, "result": ex.store.path("occlusion", options).name,
            "window": m.window, "stride": m.stride, "baseline": list(m.baseline), "method": m.method,
            "layer": m.layer, "unit": m.unit, "p_clean": m.p_clean, "target": m.target,
            "lowest": {"p": float(m.p_target.min()), "row": int(m.rows[lo[0]]), "col": int(m.cols[lo[1]])},
            "highest": float(m.p_target.max()),
            "p_target": m.p_target, "top_class": m.top_class, "rows": m.rows, "cols": m.cols,
            "classes": [{"index": k, "name": class_name(ex, k), "positions": c, "color": colors[k]}
                        for k, c in _top_classes(m)],
            "panels": {p: f"png/images/{image_id}/occlusion/{p}{q}" for p in PANELS
                       if p != "activation" or m.activation is not None}}


def _requested(ex, request) -> tuple[str, np.ndarray, int]:
    """(the image id, its class probabilities, the target class) a request names."""
    shown = image_id(ex, request)
    probs = scores(ex, shown)
    return shown, probs, target(ex, request, probs)


@raw("/images/{id}/occlusion", name="occlusion_start", methods=("POST",))
def occlusion_start(ex, request) -> Response:
    """Start the occlusion job (the page's button): 303 back to the image page."""
    shown, _, k = _requested(ex, request)
    start_occlusion(ex, shown, k)
    return RedirectResponse(f"../{shown}?target={k}#occlusion", status_code=303)


@raw("/api/images/{id}/occlusion", name="occlusion_start_api", methods=("POST",))
def occlusion_start_api(ex, request) -> Response:
    """Start the occlusion job: 202 with the job, or 200 with ``{"state": "done"}`` when it is saved."""
    shown, _, k = _requested(ex, request)
    m, job = start_occlusion(ex, shown, k)
    if m is not None:
        return JSON({"state": "done", "options": occlusion_options(ex, shown, k)})
    return JSON({"state": job.state, "job": job.to_dict(), "options": occlusion_options(ex, shown, k)},
                status_code=202)


@raw("/png/images/{id}/occlusion/{panel}", name="occlusion_png")
def occlusion_png(ex, request) -> Response:
    """Zeiler & Fergus's three panels: P(target) per occluder position and the feature map's total activation
    (each in its own range: inferno and viridis), the most probable class (a colour per class, as the page's
    legend)."""
    shown = image_id(ex, request)
    panel = request.path_params["panel"]
    if panel not in PANELS:
        raise not_found("panel", panel, PANELS)
    probs = scores(ex, shown)
    k = target(ex, request, probs)
    m, _ = _found(ex, shown, k, int(np.argmax(probs)))
    if m is None:
        raise NotFound(f"no occlusion map of {shown} for class {k} yet: start it on the image's page")
    if panel == "p_target":
        picture = heat(np.asarray(m.p_target, float), "inferno")
    elif panel == "top_class":
        colors = class_colors([c for c, _ in _top_classes(m)])
        lut = {c: tuple(int(v[i:i + 2], 16) / 255 for i in (1, 3, 5)) for c, v in colors.items()}
        picture = np.array([[lut[int(c)] for c in row] for row in np.asarray(m.top_class)], float)
    else:
        if m.activation is None:
            raise NotFound(f"the occlusion map of {shown} has no activation panel")
        picture = heat(np.asarray(m.activation, float), "viridis")
    h = up.input_shape(ex)[1]
    return png(picture, size=max(h, 192))
