"""An image's newer attribution maps for its page's target class (the README's "Which maps can you trust"):

* **inline**: Grad-CAM, Grad-CAM++ and guided Grad-CAM (``convlens.grad_cam``, ``grad_cam(plus=True)``,
  ``convlens.guided_grad_cam`` at the default layer: the last conv layer's rectified maps), a few forwards and
  partial backwards, computed under the model lock on the page's first request and kept in memory per
  (image, target);
* **on demand**: SmoothGrad (50 noisy copies, noise 15% of the range) and Integrated Gradients (50 steps from
  a black image), about 100 forwards and backwards: a background job started by the page's button (``POST
  images/{id}/attribution``; ``POST api/images/{id}/attribution`` for an API client) that computes
  ``convlens.units.attribution_views.attribute`` and saves it under the name and options ``convlens saliency
  RUN --index I --target T --method smoothgrad`` saves (an upload: ``convlens saliency RUN
  RUN/uploads/<id>.png --target T``; the options :func:`.occlusion.occlusion_options` names), with its
  defaults, so the CLI and the explorer share it. A saved result of the CLI for the image and target (or the
  default one holding them) is read instead.

Each map as a PNG (``png/images/{id}/attribution/{method}?target=T``), drawn by the rows of
``convlens.plots.attribution`` (the figure ``convlens saliency --method M`` writes), and as arrays (``GET
api/images/{id}/attribution?target=T``). Where the run holds a ``convlens sanity`` result, each map shows its
verdict and links to ``/sanity`` (:mod:`.sanity`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from starlette.responses import RedirectResponse, Response

from ...units.attribution_views import VIEWS
from .. import uploads as up
from ...errors import ConvLensError
from ..errors import NotFound, WebError, not_found
from ..params import image_id
from ..png import png
from ..responses import JSON
from . import raw
from .occlusion import occlusion_options
from .predictions import class_name, scores, target
from .sanity import sanity_link

INLINE = ("gradcam", "gradcam++", "guided-gradcam")
ON_DEMAND = ("smoothgrad", "ig")
# `convlens saliency --method smoothgrad|ig`'s defaults (--samples, --noise, --steps): the explorer's maps are the CLI's
DEFAULTS = {"samples": 50, "noise": 0.15, "steps": 50}
CAMS_KEPT = 24  # (image, target) pairs whose Grad-CAM maps stay in memory

NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "guided-gradcam": "guided Grad-CAM",
         "smoothgrad": "SmoothGrad", "ig": "Integrated Gradients"}
CAPTIONS = {
    "gradcam": "Selvaraju et al. 2017: {layer}'s feature maps weighed by their mean gradient of the class score, "
               "rectified and upsampled from {h}×{w} (jet over the image, red: most evidence). Coarse: where, "
               "not what.",
    "gradcam++": "Chattopadhay et al. 2018: each map weighed by its positive gradients only, position by position, "
                 "so that several instances of the class each count.",
    "guided-gradcam": "Guided backprop times the Grad-CAM map (Selvaraju et al. Sec. 3.1): fine detail, only where "
                      "the class is (grey at 0).",
    "smoothgrad": "Smilkov et al. 2017: the saliency map averaged over {samples} copies of the image with Gaussian "
                  "noise ({noise_pct}% of its range): less speckle (white: most salient).",
    "ig": "Sundararajan et al. 2017: the gradient averaged along the path from a black image to this one, times "
          "the image ({steps} Gauss-Legendre steps; |attribution| summed over colours). The attributions add up to "
          "score(image) - score(black) up to the completeness error.",
}


@dataclass(eq=False)
class CamMaps:
    """One image's inline maps, under the names of ``AttributionResult``'s fields so that the rows of
    ``convlens.plots.attribution`` draw them: ``images`` (1, C, H, W), ``gradcam`` / ``gradcam_pp`` (1, H, W)
    upsampled, ``guided_gradcam`` (1, C, H, W); ``cam`` (1, h, w) at ``layer``'s resolution."""

    images: np.ndarray
    gradcam: np.ndarray
    gradcam_pp: np.ndarray
    guided_gradcam: np.ndarray
    cam: np.ndarray
    layer: str


def cam_maps(ex, image_id: str, target: int) -> CamMaps:
    """Grad-CAM, Grad-CAM++ and guided Grad-CAM of the image for ``target`` at the default layer, computed
    under the model lock on first request and kept in memory (ConvLensError when the model has no layer for
    Grad-CAM, e.g. TorchScript)."""
    from ...units.gradcam import grad_cam, guided_grad_cam

    def make() -> CamMaps:
        x = up.image(ex, image_id)[None]                                        # (1, C, H, W)
        cam = grad_cam(ex.run, x, target)
        plus = grad_cam(ex.run, x, target, plus=True)
        guided = guided_grad_cam(ex.run, x, target)                             # (1, C, H, W)
        as_np = lambda t: t.detach().cpu().float().numpy()  # noqa: E731
        return CamMaps(images=as_np(x), gradcam=as_np(cam.upsampled), gradcam_pp=as_np(plus.upsampled),
                       guided_gradcam=as_np(guided), cam=as_np(cam.cam), layer=cam.layer)
    return ex.memo.lru("cams", CAMS_KEPT).get_or_make_locked((image_id, target), make, ex.lock)


def cam_error(ex) -> str | None:
    """Why this model has no Grad-CAM (TorchScript hides the layers Grad-CAM hooks), else None."""
    def make():
        from ...taps import scripted_path

        path = scripted_path(ex.run.pixel_model())
        return None if path is None else (
            f"Grad-CAM, guided Grad-CAM, SmoothGrad and Integrated Gradients are computed together here, and Grad-CAM "
            f"needs a conv layer's hooks, which TorchScript code hides ({'the model' if path == '' else repr(path)} "
            f"is TorchScript)")
    return ex.memo.once("gradcam note", make)


# ---- SmoothGrad and Integrated Gradients: saved, shared with the CLI -----------------------------------------

def _found(ex, image_id: str, target: int, predicted: int):
    """(the saved attribution maps of this image and target as a one-image AttributionResult, the options they
    were saved under) or (None, None): with the explicit target, or without one when the target is the
    prediction (``convlens saliency RUN --index I --method ig``), or among the default result's images."""
    tries = [occlusion_options(ex, image_id, target)]
    if target == predicted:
        tries.append(occlusion_options(ex, image_id, None))
    row = up.row_of(image_id)
    if row is not None and ex.data_source is None:
        tries.append({})
    for options in tries:
        try:
            result = ex.result("attribution", options)
        except Exception:  # noqa: BLE001 -- an unreadable cached result is computed again
            result = None
        if result is None:
            continue
        for i, t in enumerate(result.targets.tolist()):
            mine = options != {} or (i < len(result.indices) and int(result.indices[i]) == row)
            if mine and int(t) == target:
                return result[i], options
    return None, None


def start_maps(ex, image_id: str, target: int, predicted: int):
    """(the saved maps, None) or (None, the job computing them under the CLI's name and options)."""
    from ...units.attribution_views import attribute

    saved, _ = _found(ex, image_id, target, predicted)
    if saved is not None:
        return saved, None
    options = occlusion_options(ex, image_id, target)
    row = up.row_of(image_id)

    def compute(progress):
        progress(0.02, f"SmoothGrad ({DEFAULTS['samples']} noisy copies) and Integrated Gradients "
                       f"({DEFAULTS['steps']} steps)")
        x = up.image(ex, image_id)[None]
        labels = None if row is None else ex.data.labels[row:row + 1]
        data = str(up.upload_path(ex, image_id)) if row is None else \
            f"{getattr(ex.data, 'name', 'data')} (test split)"
        return attribute(ex.run, x, target, samples=DEFAULTS["samples"], noise=DEFAULTS["noise"],
                         steps=DEFAULTS["steps"], labels=labels, indices=() if row is None else (row,), data=data)
    title = f"SmoothGrad and Integrated Gradients of {image_id} for {class_name(ex, target)}"
    found, job = ex.ensure("attribution", options, title, compute)
    return (None if found is None else found[0]), job


def _ig_numbers(r) -> dict:
    return {"completeness_error": float(r.ig_error[0]), "delta": float(r.ig_delta[0]),
            "score": float(r.ig_scores[0]), "baseline_score": float(r.ig_baseline_scores[0]),
            "sum": float(r.ig[0].sum())}


def attribution_section(ex, image_id: str, target: int, predicted: int) -> dict:
    """The image page's attribution maps for ``target``: the inline ones, and SmoothGrad and IG saved (``state``
    done), being computed (job) or not started (none: the page offers the button); the sanity verdicts."""
    q = f"?target={target}"
    sanity = sanity_link(ex)
    out = {"target": target, "error": cam_error(ex), "layer": None, "cam_shape": None, "peak": None,
           "arrays": f"api/images/{image_id}/attribution{q}", "sanity": sanity, "maps": [], "ig": None}
    if out["error"] is None:
        try:
            cams = cam_maps(ex, image_id, target)
        except ConvLensError as err:  # a model without a layer Grad-CAM can weigh: the page says why
            out["error"] = str(err)
    if out["error"] is not None:
        return out
    h, w = cams.cam.shape[1:]
    peak = np.unravel_index(int(np.argmax(cams.gradcam[0])), cams.gradcam.shape[1:])
    out.update(layer=cams.layer, cam_shape=[int(h), int(w)], peak=[int(peak[0]), int(peak[1])])
    saved, options = _found(ex, image_id, target, predicted)
    if saved is None:
        options = occlusion_options(ex, image_id, target)
        job = ex.job("attribution", options)
        state = "job" if job is not None else "none"
    else:
        job, state = None, "done"
        out["ig"] = _ig_numbers(saved)
    out["on_demand"] = {"state": state, "job": None if job is None else job.to_dict(), "options": options,
                        "start": f"images/{image_id}/attribution{q}", **DEFAULTS,
                        "result": ex.store.path("attribution", options).name}
    fill = {"layer": cams.layer, "h": h, "w": w, "samples": DEFAULTS["samples"],
            "noise_pct": round(100 * DEFAULTS["noise"]), "steps": DEFAULTS["steps"]}
    verdicts = (sanity or {}).get("verdicts", {})
    for m in VIEWS:
        ready = m in INLINE or state == "done"
        out["maps"].append({"method": m, "name": NAMES[m], "caption": CAPTIONS[m].format(**fill),
                            "png": f"png/images/{image_id}/attribution/{m}{q}" if ready else None,
                            "on_demand": m in ON_DEMAND, "sanity": verdicts.get(m)})
    return out


# ---- routes ---------------------------------------------------------------------------------------------------

def _requested(ex, request) -> tuple[str, int, int]:
    """(the image id, the target class, the predicted class) a request names."""
    shown = image_id(ex, request)
    probs = scores(ex, shown)
    return shown, target(ex, request, probs), int(np.argmax(probs))


def _method(request) -> str:
    m = request.path_params["method"]
    if m not in VIEWS:
        raise not_found("method", m, VIEWS)
    return m


@raw("/png/images/{id}/attribution/{method}", name="attribution_png")
def attribution_png(ex, request) -> Response:
    """One map as ``convlens saliency --method M``'s figure draws its row: Grad-CAM and Grad-CAM++ in jet over
    the image (scaled to their maximum), guided Grad-CAM grey at 0, SmoothGrad and |IG| grey, white at their
    99th percentile."""
    from ...plots.attribution import ROWS

    method = _method(request)
    shown, k, predicted = _requested(ex, request)
    if cam_error(ex) is not None:
        raise WebError(cam_error(ex))
    if method in INLINE:
        r = cam_maps(ex, shown, k)
    else:
        r, _ = _found(ex, shown, k, predicted)
        if r is None:
            raise NotFound(f"no {NAMES[method]} of {shown} for class {k} yet: start it on the image's page "
                           f"(or POST api/images/{shown}/attribution?target={k})")
    picture = ROWS[method][1](r, 0)
    return png(picture, size=max(r.images.shape[2], 192))


@raw("/api/images/{id}/attribution", name="attribution_arrays")
def attribution_arrays(ex, request) -> Response:
    """The maps' arrays as JSON: ``cam`` (h, w) at the layer's resolution, ``gradcam`` and ``gradcam++`` (H, W)
    upsampled, ``guided-gradcam`` (C, H, W); ``smoothgrad`` (H, W) and ``ig`` (C, H, W) with IG's scores and
    completeness error once computed (else None)."""
    shown, k, predicted = _requested(ex, request)
    if cam_error(ex) is not None:
        raise WebError(cam_error(ex))
    c = cam_maps(ex, shown, k)
    saved, options = _found(ex, shown, k, predicted)
    return JSON({"id": shown, "target": k, "layer": c.layer, "cam": c.cam[0], "gradcam": c.gradcam[0],
                 "gradcam++": c.gradcam_pp[0], "guided-gradcam": c.guided_gradcam[0],
                 "smoothgrad": None if saved is None else saved.smoothgrad[0],
                 "ig": None if saved is None else saved.ig[0],
                 "ig_numbers": None if saved is None else _ig_numbers(saved),
                 "params": None if saved is None else saved.params, "options": options})


@raw("/images/{id}/attribution", name="attribution_start", methods=("POST",))
def attribution_start(ex, request) -> Response:
    """Start the SmoothGrad and Integrated Gradients job (the page's button): 303 back to the image page."""
    shown, k, predicted = _requested(ex, request)
    if cam_error(ex) is None:
        start_maps(ex, shown, k, predicted)
    return RedirectResponse(f"../{shown}?target={k}#attribution", status_code=303)


@raw("/api/images/{id}/attribution", name="attribution_start_api", methods=("POST",))
def attribution_start_api(ex, request) -> Response:
    """Start the SmoothGrad and Integrated Gradients job: 202 with the job, or 200 with ``{"state": "done"}``
    when the maps are saved."""
    shown, k, predicted = _requested(ex, request)
    if cam_error(ex) is not None:
        raise WebError(cam_error(ex))
    saved, job = start_maps(ex, shown, k, predicted)
    if job is None:
        return JSON({"state": "done", "options": _found(ex, shown, k, predicted)[1]})
    return JSON({"state": job.state, "job": job.to_dict(), "options": occlusion_options(ex, shown, k)},
                status_code=202)
