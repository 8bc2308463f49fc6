"""``/images`` and ``/images/{id}``: the explorer's images, one page each, and uploads.

``/images``: the explorer's data, a page of thumbnails at a time (label, and the prediction once the
predictions of the data are computed: a background job, one forward over the data), filters by class and
right/wrong, the uploaded images, and the upload form.

``/images/{id}`` (ids: :mod:`convlens.web.uploads`): what the network makes of one image --

* the top-5 predictions (softmax of the model's scores); each links to ``?target=<class>``, the class whose
  score the backprop views and the occlusion map follow (default: the top-1 class);
* one conv layer's activations as a channel grid, as in Yosinski et al.'s Deep Visualization Toolbox: a
  small grey tile per channel, scaled by the whole layer's range on this image (black: the layer's
  minimum, white: its maximum), a layer picker, at most :data:`CHANNELS` tiles per page; each tile links
  to its unit's page. The grid is one PNG (``png/images/{id}/activations/{layer}?channels=P``);
* saliency with its GrabCut mask, deconvnet and guided backprop for the target, exactly
  ``convlens.units.segment.explain`` (what ``convlens saliency`` saves): computed under the model lock
  on first request and kept in memory per (image, target) (a few forwards and backwards; the GrabCut
  dominates); a result the CLI saved for this image and target is read instead. The arrays: JSON at
  ``api/images/{id}/maps?target=T``;
* the occlusion map, a background job started by the page's button (``POST images/{id}/occlusion``),
  saved in the results store under the name and options ``convlens occlusion RUN --index I --target T``
  saves (for an upload: ``convlens occlusion RUN RUN/uploads/<id>.png --target T``), with the CLI's
  defaults (window 16, stride 4, grey 0.5, the default layer, exact incremental inference), so the CLI
  and the explorer share it;
* its nearest neighbours in code space (cosine, over the CNN codes of the data: the codes cache
  ``convlens codes`` keeps in ``RUN/codes``, computed by a job when missing) and in pixel space
  (Euclidean, over the data's pixels);
* previous/next image (arrow keys) and up to ``/images``.
"""
from __future__ import annotations

import math
import re
import threading
import weakref
from collections import OrderedDict
from dataclasses import replace
from urllib.parse import quote

import numpy as np
import torch
from starlette.responses import RedirectResponse, Response

from .. import uploads as up
from ...errors import ConvLensError
from ..errors import NotFound, WebError, not_found
from ..png import encode, png
from . import page, raw

PER_PAGE = 48        # thumbnails per page of /images
UPLOADS_SHOWN = 24   # uploads listed on /images
TOPK = 5
NEIGHBORS = 8
CHANNELS = 256       # channel tiles per page of the activation grid
STRONGEST = 8        # strongest channels listed
THUMB = 96           # thumbnail size (px) on the list pages
GAP = 2              # px between tiles
MIN_TILE = 40        # tiles smaller than this are enlarged (integer factor, nearest neighbour)
MAX_GRID_PIXELS = 2_500_000  # a larger grid has its tiles shrunk (averaged by an integer factor)
BATCH_PIXELS = 1_000_000  # input values per forward of the predictions job (the lock is held per forward)
# `convlens occlusion`'s defaults: the explorer's maps are the CLI's
OCCLUSION = dict(window=16, stride=4, baseline=0.5, method="incremental", batch_size=32, tau=0.35)
VIEWS = ("saliency", "mask", "deconvnet", "guided")
PANELS = ("p_target", "top_class", "activation")


# ---- what the explorer keeps in memory for these pages ------------------------------------------------------

class LRU:
    """The ``size`` entries used last (thread-safe: pages run on the server's thread pool)."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return default

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class State:
    def __init__(self):
        self.lock = threading.Lock()
        self.scores = LRU(256)       # image id -> softmax (K,)
        self.views = LRU(24)         # (image id, target) -> BackpropResult of one image
        self.acts = LRU(16)          # (image id, layer) -> (C, H, W) float32
        self.near = LRU(128)         # (image id, space) -> neighbours
        self.grids = LRU(32)         # (image id, layer, channel page) -> PNG bytes of the channel grid
        self.loaded = {}             # (name, path) -> (file stats, the loaded result)
        self.predictions = None      # (top-1 (N,), its probability (N,)) of the data
        self.codes = None            # (folder stats, Codes)
        self.misc = {}


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def state(ex) -> State:
    with _STATES_LOCK:
        found = _STATES.get(ex)
        if found is None:
            found = _STATES[ex] = State()
        return found


def _stats(path) -> tuple:
    out = []
    for p in (path, path.with_suffix(".npz")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


def saved(ex, name: str, options: dict | None):
    """The result ``name`` saved with exactly ``options`` (``{}``: the default one), unless stale; read once
    while its files stay the same. None when there is none."""
    from ...results.registry import analysis, imported

    entry = ex.store.entry(name, options or {})
    if entry is None or entry.state == "stale":
        return None
    st, key = state(ex), (name, str(entry.path))
    stats = _stats(entry.path)
    found = st.loaded.get(key)
    if found is None or found[0] != stats:
        found = st.loaded[key] = (stats, imported(analysis(name).load)(entry.path))
    return found[1]


# ---- classes, labels, predictions ---------------------------------------------------------------------------

def class_names(ex) -> list[str]:
    return list(ex.run.class_names or [])


def class_name(ex, k) -> str:
    names = class_names(ex)
    return names[k] if k is not None and 0 <= k < len(names) else str(k)


def data_names(ex) -> list[str]:
    return list(getattr(ex.data, "class_names", None) or [])


def label_of(ex, row: int) -> dict:
    lab = int(ex.data.labels[row])
    names = data_names(ex)
    return {"index": lab, "name": names[lab] if 0 <= lab < len(names) else str(lab)}


def model_labels(ex) -> np.ndarray:
    """(N,) the model's class index of each data label (by name when the data names its classes differently
    from the model, -1 where the model has no such class)."""
    st = state(ex)
    found = st.misc.get("model_labels")
    if found is None:
        labels = np.asarray(torch.as_tensor(ex.data.labels).reshape(-1).cpu(), dtype=np.int64)
        names, ours = data_names(ex), class_names(ex)
        if names and ours and names != ours:
            lookup = np.array([ours.index(c) if c in ours else -1 for c in names], dtype=np.int64)
            found = lookup[labels]
        else:
            found = labels
        st.misc["model_labels"] = found
    return found


def _net(ex):
    return ex.run.pixel_model()


def scores(ex, image_id: str) -> np.ndarray:
    """Softmax of the model's scores for the image (K,) float64; one forward under the model lock."""
    from ...taps import eval_mode, model_device

    st = state(ex)
    found = st.scores.get(image_id)
    if found is None:
        x = up.image(ex, image_id)[None]
        with ex.lock:
            net = _net(ex)
            device, dtype = model_device(net)
            with torch.no_grad(), eval_mode(net):
                out = net(x.to(device, dtype))
        found = st.scores.put(image_id, torch.softmax(out[0].double(), 0).cpu().numpy())
    return found


def predictions(ex):
    """((N,) top-1 class, (N,) its probability) of the data, or (None, the job computing them)."""
    st = state(ex)
    if st.predictions is not None:
        return st.predictions, None
    key = f"predictions of {ex.name}'s data"

    def work(progress):
        from ...taps import eval_mode, model_device

        images = ex.data.images
        n = len(images)
        batch = max(1, min(256, BATCH_PIXELS // max(1, images[0].numel())))
        top, prob = np.zeros(n, np.int64), np.zeros(n, np.float64)
        for lo in range(0, n, batch):
            with ex.lock:  # per batch: an image page asked meanwhile waits for one batch, not the whole job
                net = _net(ex)
                device, dtype = model_device(net)
                with torch.no_grad(), eval_mode(net):
                    p = torch.softmax(net(images[lo:lo + batch].to(device, dtype)).double(), 1).cpu()
            best = p.max(1)
            top[lo:lo + batch], prob[lo:lo + batch] = best.indices.numpy(), best.values.numpy()
            progress(min(n, lo + batch) / n, f"{min(n, lo + batch)} of {n} images")
        st.predictions = (top, prob)
        return st.predictions
    job = ex.jobs.submit(key, "Predictions of the data", work)
    if job.state == "done":
        return job.result, None
    return None, job


def _target(ex, request, probs: np.ndarray) -> int:
    given = request.query_params.get("target")
    if given is None or given == "":
        return int(np.argmax(probs))
    k = len(probs)
    if re.fullmatch(r"[0-9]{1,9}", given) and int(given) < k:
        return int(given)
    names = class_names(ex)
    if given in names:
        return names.index(given)
    import difflib

    raise WebError(f"target must be a class index in [0, {k - 1}] or a class name; got {given[:60]!r}",
                   difflib.get_close_matches(given, names, n=3) if names else [])


def _int_param(request, name: str, default: int, lo: int, hi: int) -> int:
    given = request.query_params.get(name)
    if given is None or given == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,9}", given) or not lo <= int(given) <= hi:
        raise WebError(f"{name} must be an integer in [{lo}, {hi}]; got {given[:40]!r}")
    return int(given)


def _image_id(ex, request) -> str:
    return up.check_id(ex, request.path_params["id"])


def _thumb_url(image_id: str) -> str:
    return f"png/images/{image_id}?size={THUMB}"


# ---- /images -------------------------------------------------------------------------------------------------

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
    p = _int_param(request, "page", 1, 1, pages)
    shown = rows[(p - 1) * PER_PAGE:p * PER_PAGE]
    items = []
    for r in shown.tolist():
        item = {"id": f"t{r}", "row": r, "label": label_of(ex, r), "image": f"png/images/t{r}",
                "thumb": _thumb_url(f"t{r}"), "prediction": None, "correct": None}
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
            "uploads": [{"id": u, "image": f"png/images/{u}", "thumb": _thumb_url(u)} for u in ups[:UPLOADS_SHOWN]],
            "uploads_total": len(ups), "input": list(up.input_shape(ex)), "crop": up.crop_of(ex.run),
            "max_bytes": up.MAX_BYTES, "max_pixels": up.MAX_PIXELS}


# ---- uploads ---------------------------------------------------------------------------------------------------

async def _store_upload(ex, request) -> str:
    from starlette.concurrency import run_in_threadpool

    data = await up.read_upload(request)
    return await run_in_threadpool(up.store, ex, data)


@raw("/api/images", name="upload_api", methods=("POST",))
async def upload_api(ex, request) -> Response:
    from ..app import JSON

    image_id = await _store_upload(ex, request)
    return JSON({"id": image_id, "page": f"images/{image_id}", "image": f"png/images/{image_id}"}, status_code=201)


@raw("/images/upload", name="upload_form", methods=("POST",))
async def upload_form(ex, request) -> Response:
    image_id = await _store_upload(ex, request)
    return RedirectResponse(image_id, status_code=303)  # relative to /images/upload: /images/<id>


# ---- one image: predictions, backprop views, activations, occlusion, neighbours --------------------------------

def _views(ex, image_id: str, target: int):
    """The BackpropResult of the image for ``target`` (one image): a result the CLI saved for it, else
    ``explain`` under the model lock, kept in memory."""
    st = state(ex)
    key = (image_id, target)
    found = st.views.get(key)
    if found is not None:
        return found
    with ex.lock:  # one computation per key: a second request waits here, then finds it
        found = st.views.get(key)
        if found is None:
            found = _cli_views(ex, image_id, target)
        if found is None:
            row = up.row_of(image_id)
            x = up.image(ex, image_id)[None]
            found = _explain(ex, x, target, () if row is None else (row,), f"{ex.name} image {image_id}")
        st.views.put(key, found)
    return found


def scripted_note(ex) -> str | None:
    """Why deconvnet and guided backprop cannot be drawn for this model (TorchScript: no ReLU can be
    rerouted inside it), else None."""
    from ...taps import scripted_path

    st = state(ex)
    if "scripted" not in st.misc:
        path = scripted_path(_net(ex))
        st.misc["scripted"] = None if path is None else (
            f"deconvnet and guided backprop need the model's ReLUs, which TorchScript code hides "
            f"({'the model' if path == '' else path!r} is TorchScript)")
    return st.misc["scripted"]


def _explain(ex, x, target: int, indices, label: str):
    """``explain``; for a TorchScript model the saliency and its mask only (deconvnet, guided: None)."""
    from ...units.segment import BackpropResult, explain, grabcut_from_saliency

    if scripted_note(ex) is None:
        return explain(ex.run, x, target, indices=indices, data=label)
    from ...taps import eval_mode
    from ...units.backprop import saliency

    net = _net(ex)
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
            result = saved(ex, "saliency", options)
        except Exception:  # noqa: BLE001 -- an unreadable cached result is recomputed
            result = None
        if result is None or result.segment_params.get("iterations", 5) != 5:
            continue
        for i, (r, t) in enumerate(zip(result.indices, result.targets.tolist())):
            if int(r) == row and int(t) == target:
                return result[i]
    return None


def _activation(ex, image_id: str, layer: str) -> np.ndarray:
    """(C, H, W) float32: the layer's output for the image (one forward under the model lock, cached)."""
    from ...taps import activations, eval_mode

    if layer not in ex.layers:
        raise not_found("layer", layer, ex.layers)
    st = state(ex)
    found = st.acts.get((image_id, layer))
    if found is None:
        x = up.image(ex, image_id)[None]
        with ex.lock:
            net = _net(ex)
            with eval_mode(net):
                acts = activations(ex.run, x, [layer])
        a = acts[layer]
        a = a[0] if isinstance(a, torch.Tensor) else torch.as_tensor(np.asarray(a))[0]
        a = a.detach().cpu().float()
        if a.dim() == 1:
            a = a[:, None, None]
        elif a.dim() == 2:
            a = a[None]
        found = st.acts.put((image_id, layer), a.numpy())
    return found


def grid_layout(n: int, h: int, w: int) -> dict:
    """Where ``n`` tiles of an (h, w) map go in the channel grid: columns, tile size (enlarged or shrunk by
    an integer factor), gap. The page's links and the PNG use the same layout."""
    up_f = max(1, math.ceil(MIN_TILE / max(1, min(h, w))))
    th, tw = h * up_f, w * up_f
    cols = max(1, math.ceil(math.sqrt(n * th / max(tw, 1))))
    rows = max(1, math.ceil(n / cols))
    down = 1
    while (rows * (th // down + GAP)) * (cols * (tw // down + GAP)) > MAX_GRID_PIXELS and min(th, tw) // down > 8:
        down += 1
    return {"cols": cols, "rows": rows, "up": up_f, "down": down, "tile_h": th // down, "tile_w": tw // down,
            "gap": GAP, "width": cols * (tw // down + GAP) - GAP, "height": rows * (th // down + GAP) - GAP}


def _channel_page(ex, request, a: np.ndarray) -> tuple[int, int, range]:
    pages = max(1, math.ceil(len(a) / CHANNELS))
    p = _int_param(request, "channels", 1, 1, pages)
    return p, pages, range((p - 1) * CHANNELS, min(len(a), p * CHANNELS))


def _grid_image(a: np.ndarray, units: range, layout: dict) -> np.ndarray:
    """The channel grid (H, W, 3) uint8: each channel's map in grey, scaled by the layer's range."""
    import torch.nn.functional as F

    lo, hi = float(np.min(a)), float(np.max(a))
    scaled = np.zeros_like(a) if hi - lo < 1e-12 else (a - lo) / (hi - lo)
    t = torch.from_numpy(np.ascontiguousarray(scaled[units.start:units.stop]))[:, None]  # (n, 1, h, w)
    if layout["up"] > 1:
        t = t.repeat_interleave(layout["up"], 2).repeat_interleave(layout["up"], 3)
    if layout["down"] > 1:
        t = F.avg_pool2d(t, layout["down"], ceil_mode=False)
    tiles = (t[:, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
    th, tw, gap = layout["tile_h"], layout["tile_w"], layout["gap"]
    canvas = np.empty((layout["height"], layout["width"], 3), np.uint8)
    canvas[:] = (176, 196, 214)  # the gaps: a light blue, so a black tile is told from the background
    for i, tile in enumerate(tiles):
        r, c = divmod(i, layout["cols"])
        y, x = r * (th + gap), c * (tw + gap)
        canvas[y:y + th, x:x + tw] = tile[:th, :tw, None]
    return canvas


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


def _occlusion_found(ex, image_id: str, target: int, predicted: int):
    """The saved occlusion map of this image and target, or None: with the explicit target, or without
    one when the target is the prediction (``convlens occlusion RUN --index I``), or among the maps of
    the default result (``convlens occlusion RUN``)."""
    tries = [occlusion_options(ex, image_id, target)]
    if target == predicted:
        tries.append(occlusion_options(ex, image_id, None))
    row = up.row_of(image_id)
    for options in tries:
        found = saved(ex, "occlusion", options)
        if found:
            return found[0], options
    if row is not None and ex.data_source is None:
        found = saved(ex, "occlusion", {}) or []
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
        m = occlusion(ex.run, x, target, o["window"], o["stride"], o["baseline"], default_layer(_net(ex)), None,
                      method=o["method"], batch_size=o["batch_size"], tau=o["tau"])
        if row is not None:
            m = replace(m, label=int(ex.data.labels[row]), index=row)
        return [m]
    found, job = ex.ensure("occlusion", options, f"Occlusion map of {image_id} for "
                                                 f"{class_name(ex, target)}", compute)
    return (found[0] if found else None), job


def _class_colors(classes) -> dict[int, str]:
    """A colour per class index, in the given order (the most frequent first)."""
    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(classes) > 10 else "tab10"]
    out = {}
    for i, k in enumerate(classes):
        r, g, b = cmap(i % cmap.N)[:3] if i < 20 else _hue(i)
        out[int(k)] = "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))
    return out


def _hue(i: int) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.85)


def _top_classes(m) -> list[tuple[int, int]]:
    ks, counts = np.unique(np.asarray(m.top_class), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    return [(int(ks[i]), int(counts[i])) for i in order]


def _occlusion_dict(ex, m, options, image_id, target) -> dict:
    q = f"?target={target}"
    colors = _class_colors([k for k, _ in _top_classes(m)])
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


def _neighbors(ex, image_id: str) -> dict:
    """The image's nearest neighbours among the data: in code space (cosine) and in pixels (Euclidean)."""
    from . import codes as codespace

    out = {"k": NEIGHBORS, "pixels": _pixel_neighbors(ex, image_id), "code": None, "job": None,
           "layer": None, "metric": "cosine"}
    code, job = codespace.codes_or_job(ex)
    if code is None:
        out["job"] = job.to_dict()
        return out
    out["layer"] = code.layer
    st = state(ex)
    found = st.near.get((image_id, "code"))
    if found is None:
        from ...codespace.neighbors import neighbors

        row = up.row_of(image_id)
        k = min(NEIGHBORS, len(code) - 1)
        pos = None if row is None else np.flatnonzero(np.asarray(code.indices) == row)
        if pos is not None and len(pos):
            nb = neighbors(code, [int(pos[0])], k, "cosine", exclude_self=True)
        else:
            qvec = codespace.code_of(ex, code, up.image(ex, image_id))
            nb = neighbors(code, qvec, min(NEIGHBORS, len(code)), "cosine")
        rows = np.asarray(code.indices)[nb.indices[0]]
        found = st.near.put((image_id, "code"), _near_list(ex, rows, nb.distances[0]))
    out["code"] = found
    return out


def _pixel_neighbors(ex, image_id: str) -> list[dict]:
    from ...codespace.neighbors import neighbors

    st = state(ex)
    found = st.near.get((image_id, "pixels"))
    if found is None:
        images = ex.data.images
        flat = images.reshape(len(images), -1)
        row = up.row_of(image_id)
        if row is not None:
            nb = neighbors(flat, [row], min(NEIGHBORS, len(images) - 1), "l2", exclude_self=True)
        else:
            nb = neighbors(flat, up.image(ex, image_id).reshape(1, -1), min(NEIGHBORS, len(images)), "l2")
        found = st.near.put((image_id, "pixels"), _near_list(ex, nb.indices[0], nb.distances[0]))
    return found


def _near_list(ex, rows, distances) -> list[dict]:
    return [{"id": f"t{int(r)}", "row": int(r), "label": label_of(ex, int(r)), "distance": float(d),
             "thumb": _thumb_url(f"t{int(r)}")} for r, d in zip(rows, distances)]


def _neighbours_ids(ex, image_id: str) -> tuple[str | None, str | None]:
    row = up.row_of(image_id)
    if row is not None:
        n = len(ex.data.labels)
        return (f"t{row - 1}" if row > 0 else None), (f"t{row + 1}" if row + 1 < n else None)
    ups = up.uploads(ex)
    i = ups.index(image_id) if image_id in ups else -1
    return (ups[i - 1] if i > 0 else None), (ups[i + 1] if 0 <= i < len(ups) - 1 else None)


@page("/images/{id}", "image.html", name="image_page")
def image_page(ex, request) -> dict:
    image_id = _image_id(ex, request)
    probs = scores(ex, image_id)
    target = _target(ex, request, probs)
    predicted = int(np.argmax(probs))
    k = min(TOPK, len(probs))
    top = np.argsort(-probs, kind="stable")[:k]
    row = up.row_of(image_id)
    q = f"?target={target}"
    c, h, w = up.input_shape(ex)
    prev_id, next_id = _neighbours_ids(ex, image_id)
    out = {"id": image_id, "kind": "data" if row is not None else "upload", "row": row,
           "label": label_of(ex, row) if row is not None else None, "image": f"png/images/{image_id}",
           "shape": [c, h, w], "prev": prev_id, "next": next_id,
           "predictions": [{"index": int(i), "name": class_name(ex, int(i)), "prob": float(probs[i]),
                            "target": int(i) == target} for i in top],
           "predicted": {"index": predicted, "name": class_name(ex, predicted)},
           "target": {"index": target, "name": class_name(ex, target), "prob": float(probs[target]),
                      "default": request.query_params.get("target") in (None, "")},
           "views": {v: None if v in ("deconvnet", "guided") and scripted_note(ex) else
                     f"png/images/{image_id}/{v}{q}" for v in VIEWS},
           "views_note": scripted_note(ex),
           "arrays": f"api/images/{image_id}/maps{q}"}
    if out["label"] is not None:
        out["label"]["model_index"] = int(model_labels(ex)[row])
    # activations of one layer
    layers = ex.layers
    out["activations"], out["activations_error"] = None, None
    layer = request.query_params.get("layer") or (layers[0] if layers else None)
    try:
        a = _activation(ex, image_id, layer) if layers else None
    except NotFound:
        raise
    except ConvLensError as err:  # a TorchScript model: no forward hooks to read a layer with
        a, out["activations_error"] = None, str(err)
    if a is not None:
        p, pages, units = _channel_page(ex, request, a)
        layout = grid_layout(len(units), a.shape[1], a.shape[2])
        means = a.reshape(len(a), -1).mean(1)
        maxes = a.reshape(len(a), -1).max(1)
        tiles = []
        for i, u in enumerate(units):
            r_, c_ = divmod(i, layout["cols"])
            y, x = r_ * (layout["tile_h"] + GAP), c_ * (layout["tile_w"] + GAP)
            tiles.append({"unit": u, "box": [x, y, x + layout["tile_w"], y + layout["tile_h"]],
                          "mean": float(means[u]), "max": float(maxes[u])})
        li = layers.index(layer)
        strongest = np.argsort(-means, kind="stable")[:STRONGEST]
        out["activations"] = {
            "layer": layer, "layers": layers, "index": li, "channels": int(len(a)), "map": [int(a.shape[1]),
                                                                                           int(a.shape[2])],
            "prev_layer": layers[li - 1] if li > 0 else None,
            "next_layer": layers[li + 1] if li + 1 < len(layers) else None,
            "page": p, "pages": pages, "first": units.start, "last": units.stop - 1,
            "range": [float(a.min()), float(a.max())], "layout": layout, "tiles": tiles,
            "grid": f"png/images/{image_id}/activations/{quote(layer, safe='')}?channels={p}",
            "strongest": [{"unit": int(u), "mean": float(means[u])} for u in strongest]}
    # occlusion
    m, options = _occlusion_found(ex, image_id, target, predicted)
    if m is not None:
        out["occlusion"] = _occlusion_dict(ex, m, options, image_id, target)
    else:
        key_options = occlusion_options(ex, image_id, target)
        job = ex.jobs.for_key(f"occlusion {sorted(key_options.items())}")
        out["occlusion"] = {"state": "job" if job is not None else "none", "options": key_options,
                            "job": None if job is None else job.to_dict(),
                            "start": f"images/{image_id}/occlusion{q}",
                            "result": ex.store.path("occlusion", key_options).name}
    out["neighbors"] = _neighbors(ex, image_id)
    return out


@raw("/images/{id}/occlusion", name="occlusion_start", methods=("POST",))
def occlusion_start(ex, request) -> Response:
    """Start the occlusion job (the page's button): 303 back to the image page."""
    image_id = _image_id(ex, request)
    probs = scores(ex, image_id)
    target = _target(ex, request, probs)
    start_occlusion(ex, image_id, target)
    return RedirectResponse(f"../{image_id}?target={target}#occlusion", status_code=303)


@raw("/api/images/{id}/occlusion", name="occlusion_start_api", methods=("POST",))
def occlusion_start_api(ex, request) -> Response:
    """Start the occlusion job: 202 with the job, or 200 with ``{"state": "done"}`` when it is saved."""
    from ..app import JSON

    image_id = _image_id(ex, request)
    probs = scores(ex, image_id)
    target = _target(ex, request, probs)
    m, job = start_occlusion(ex, image_id, target)
    if m is not None:
        return JSON({"state": "done", "options": occlusion_options(ex, image_id, target)})
    return JSON({"state": job.state, "job": job.to_dict(), "options": occlusion_options(ex, image_id, target)},
                status_code=202)


# ---- raw: PNGs and arrays -------------------------------------------------------------------------------------

def _size_param(request) -> int | None:
    given = request.query_params.get("size")
    if given is None:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", given) or not 16 <= int(given) <= 1024:
        raise WebError(f"size must be an integer in [16, 1024] (px); got {given[:40]!r}")
    return int(given)


@raw("/png/images/{id}", name="image_png")
def image_png(ex, request) -> Response:
    """The image (``?size=N``: shrunk to N px high, or enlarged by an integer factor to about N px)."""
    image_id = _image_id(ex, request)
    x = up.image(ex, image_id)
    size = _size_param(request)
    if size is not None and x.shape[1] > size:
        from ...codespace.codes import thumbnails

        return Response(encode(thumbnails(x[None], size)[0]), media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})
    return png(x, size=size)


@raw("/png/images/{id}/{view}", name="image_view_png")
def image_view_png(ex, request) -> Response:
    """Saliency (grey, white: most salient), the image with its GrabCut mask (outside dimmed), deconvnet and
    guided backprop (grey at zero, per-image contrast), as the report draws them."""
    from ...plots.backprop import masked_image, projection_image, saliency_image

    image_id = _image_id(ex, request)
    view = request.path_params["view"]
    if view not in VIEWS:
        raise not_found("view", view, VIEWS)
    target = _target(ex, request, scores(ex, image_id))
    r = _views(ex, image_id, target)
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
    from ..app import JSON

    image_id = _image_id(ex, request)
    probs = scores(ex, image_id)
    target = _target(ex, request, probs)
    r = _views(ex, image_id, target)
    return JSON({"id": image_id, "target": target, "predicted": int(r.predicted[0]), "saliency": r.saliency[0],
                 "mask": r.masks[0].astype(bool), "deconvnet": None if r.deconvnet is None else r.deconvnet[0],
                 "guided": None if r.guided is None else r.guided[0],
                 "segment": r.segment_params, "from_cli": bool(r.indices) and r.data != f"{ex.name} image {image_id}"})


@raw("/png/images/{id}/activations/{layer}", name="activation_grid_png")
def activation_grid_png(ex, request) -> Response:
    image_id = _image_id(ex, request)
    layer = request.path_params["layer"]
    a = _activation(ex, image_id, layer)
    p, _, units = _channel_page(ex, request, a)
    st = state(ex)
    found = st.grids.get((image_id, layer, p))
    if found is None:
        layout = grid_layout(len(units), a.shape[1], a.shape[2])
        found = st.grids.put((image_id, layer, p), encode(_grid_image(a, units, layout)))
    return Response(found, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})


@raw("/png/images/{id}/occlusion/{panel}", name="occlusion_png")
def occlusion_png(ex, request) -> Response:
    """Zeiler & Fergus's three panels: P(target) per occluder position and the feature map's total activation
    (each in its own range: inferno and viridis), the most probable class (a colour per class, as the page's
    legend)."""
    from ..png import heat

    image_id = _image_id(ex, request)
    panel = request.path_params["panel"]
    if panel not in PANELS:
        raise not_found("panel", panel, PANELS)
    probs = scores(ex, image_id)
    target = _target(ex, request, probs)
    m, _ = _occlusion_found(ex, image_id, target, int(np.argmax(probs)))
    if m is None:
        raise NotFound(f"no occlusion map of {image_id} for class {target} yet: start it on the image's page")
    if panel == "p_target":
        picture = heat(np.asarray(m.p_target, float), "inferno")
    elif panel == "top_class":
        colors = _class_colors([k for k, _ in _top_classes(m)])
        lut = {k: tuple(int(v[i:i + 2], 16) / 255 for i in (1, 3, 5)) for k, v in colors.items()}
        picture = np.array([[lut[int(k)] for k in row] for row in np.asarray(m.top_class)], float)
    else:
        if m.activation is None:
            raise NotFound(f"the occlusion map of {image_id} has no activation panel")
        picture = heat(np.asarray(m.activation, float), "viridis")
    h = up.input_shape(ex)[1]
    return png(picture, size=max(h, 192))
