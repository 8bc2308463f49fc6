"""An image's backprop views for a target class, on its page: saliency with its GrabCut mask, deconvnet and
guided backprop, exactly ``convlens.units.segment.explain`` (what ``convlens saliency`` saves), computed
under the model lock on first request and kept in memory per (image, target) (a few forwards and
backwards; the GrabCut dominates); a result the CLI saved for this image and target is read instead.
As PNGs (``png/images/{id}/{view}?target=T``, drawn as the report draws them) and as arrays (JSON at
``api/images/{id}/maps?target=T``). A TorchScript model gets the saliency and its mask only.
"""
from __future__ import annotations

import numpy as np
import torch
from starlette.responses import Response

from .. import uploads as up
from ..errors import WebError, not_found
from ..params import image_id
from ..png import png
from ..responses import JSON
from . import raw
from .predictions import class_names, scores, target

VIEWS = ("saliency", "mask", "deconvnet", "guided")
MAPS_KEPT = 24  # (image, target) pairs whose views stay in memory


def views(ex, image_id: str, target: int):
    """The BackpropResult of the image for ``target`` (one image): a result the CLI saved for it, else
    ``explain`` under the model lock, kept in memory."""
    def make():
        found = _cli_views(ex, image_id, target)
        if found is None:
            row = up.row_of(image_id)
            x = up.image(ex, image_id)[None]
            found = _explain(ex, x, target, () if row is None else (row,), f"{ex.name} image {image_id}")
        return found
    return ex.memo.lru("maps", MAPS_KEPT).get_or_make_locked((image_id, target), make, ex.lock)


def scripted_note(ex) -> str | None:
    """Why deconvnet and guided backprop cannot be drawn for this model (TorchScript: no ReLU can be
    rerouted inside it), else None."""
    def make():
        from ...taps import scripted_path

        path = scripted_path(ex.run.pixel_model())
        return None if path is None else (
            f"deconvnet and guided backprop need the model's ReLUs, which TorchScript code hides "
            f"({'the model' if path == '' else path!r} is TorchScript)")
    return ex.memo.once("scripted note", make)


def _explain(ex, x, target: int, indices, label: str):
    """``explain``; for a TorchScript model the saliency and its mask only (deconvnet, guided: None)."""
    from ...units.segment import BackpropResult, explain, grabcut_from_saliency

    if scripted_note(ex) is None:
        return explain(ex.run, x, target, indices=indices, data=label)
    from ...taps import eval_mode
    from ...units.backprop import saliency

    net = ex.run.pixel_model()
    with torch.no_grad(), eval_mode(net):
        predicted = net(x).argmax(1)
    sal = saliency(ex.run, x, target)
    params = {"fg_quantile": 0.95, "bg_quantile": 0.30, "iterations": 5}
    masks = np.stack([grabcut_from_saliency(img, s_, **params) for img, s_ in zip(x, sal)])
    return BackpropResult(images=x.numpy(), targets=np.array([target]), predicted=predicted.cpu().numpy(),
                          saliency=sal.cpu().numpy(), deconvnet=None, guided=None, masks=masks,
                          class_names=tuple(class_names(ex)), indices=tuple(indices), segment_params=params,
                          data=label)


def _cli_views(ex, image_id: str, target: int):
    """The image's row of a ``convlens saliency`` result that has it with this target (the run's test split
    only), else None."""
    row = up.row_of(image_id)
    if row is None or ex.data_source is not None:
        return None
    for options in ({"index": [row], "target": str(target)}, {"index": [row]}, {}):
        try:
            result = ex.result("saliency", options)
        except Exception:  # noqa: BLE001 -- an unreadable cached result is recomputed
            result = None
        if result is None or result.segment_params.get("iterations", 5) != 5:
            continue
        for i, (r, t) in enumerate(zip(result.indices, result.targets.tolist())):
            if int(r) == row and int(t) == target:
                return result[i]
    return None


@raw("/png/images/{id}/{view}", name="image_view_png")
def image_view_png(ex, request) -> Response:
    """Saliency (grey, white: most salient), the image with its GrabCut mask (outside dimmed), deconvnet and
    guided backprop (grey at zero, per-image contrast), as the report draws them."""
    from ...plots.backprop import masked_image, projection_image, saliency_image

    shown = image_id(ex, request)
    view = request.path_params["view"]
    if view not in VIEWS:
        raise not_found("view", view, VIEWS)
    r = views(ex, shown, target(ex, request, scores(ex, shown)))
    if view == "saliency":
        picture = saliency_image(r.saliency[0])
    elif view == "mask":
        picture = masked_image(r.images[0], r.masks[0])
    else:
        if getattr(r, view) is None:
            raise WebError(scripted_note(ex) or f"no {view} view of this model")
        picture = projection_image(getattr(r, view)[0])
    h = r.images.shape[2]
    return png(picture, size=max(h, 192))


@raw("/api/images/{id}/maps", name="image_maps")
def image_maps(ex, request) -> Response:
    """The backprop views' arrays as JSON: saliency (H, W), mask (H, W), deconvnet and guided (C, H, W)."""
    shown = image_id(ex, request)
    k = target(ex, request, scores(ex, shown))
    r = views(ex, shown, k)
    return JSON({"id": shown, "target": k, "predicted": int(r.predicted[0]), "saliency": r.saliency[0],
                 "mask": r.masks[0].astype(bool), "deconvnet": None if r.deconvnet is None else r.deconvnet[0],
                 "guided": None if r.guided is None else r.guided[0],
                 "segment": r.segment_params, "from_cli": bool(r.indices) and r.data != f"{ex.name} image {shown}"})
