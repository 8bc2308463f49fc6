"""What the explorer answers besides a rendered page: strict JSON (:func:`to_json`, :class:`JSON`: the JSON
twins and the raw API routes), relative URLs (:func:`rel`: the prefix from a page to the app's root, so the
app works under any proxy prefix), and the answer to a button's POST (:func:`started`)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response


def _plain(obj):
    """JSON for what page dicts hold besides plain types: numpy scalars and arrays, tensors, paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def to_json(obj) -> str:
    """Strict JSON (NaN and infinities become null)."""
    return json.dumps(_finite(json.loads(json.dumps(obj, default=_plain))), allow_nan=False)


class JSON(JSONResponse):
    def render(self, content) -> bytes:
        return to_json(content).encode()


def rel(request: Request) -> str:
    """The relative prefix from this page to the app's root: ``./`` on ``/``, ``../`` per level below."""
    path, root = request.scope["path"], request.scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    depth = path.count("/") - 1
    return "../" * depth if depth > 0 else "./"


def relative(request: Request, target: str) -> str:
    """A relative URL from this request's path to ``target`` (relative to the app's root)."""
    prefix = rel(request)
    return (prefix if prefix != "./" else "") + target or "./"


def wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


def started(request: Request, job, back: str) -> Response:
    """The answer to a button that starts a job (``job``: None when the result was there already): a form
    post goes back to the page ``back`` (relative to the app's root), an API client gets ``{"job": ...}``
    (202 while it runs)."""
    if wants_html(request):
        return RedirectResponse(relative(request, back), status_code=303)
    return JSONResponse({"job": None if job is None else job.to_dict()}, status_code=202 if job else 200)
