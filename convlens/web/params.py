"""A request's query and path parameters, checked: a 400 that says what was expected, a 404 with
suggestions for an image id the run does not have."""
from __future__ import annotations

import re

from . import uploads
from .errors import WebError


def int_param(request, name: str, default: int, lo: int, hi: int) -> int:
    """The query parameter ``name``, an integer in [lo, hi] (``default`` when absent or empty)."""
    given = request.query_params.get(name)
    if given is None or given == "":
        return default
    if not re.fullmatch(r"-?[0-9]{1,9}", given) or not lo <= int(given) <= hi:
        raise WebError(f"{name} must be an integer in [{lo}, {hi}]; got {given[:40]!r}")
    return int(given)


def size_param(request) -> int | None:
    """``?size=N``: a PNG's size in pixels, in [16, 1024] (None when absent)."""
    given = request.query_params.get("size")
    if given is None:
        return None
    if not re.fullmatch(r"[0-9]{1,4}", given) or not 16 <= int(given) <= 1024:
        raise WebError(f"size must be an integer in [16, 1024] (px); got {given[:40]!r}")
    return int(given)


def image_id(ex, request) -> str:
    """The path's ``{id}``, an image of the run (:func:`convlens.web.uploads.check_id`)."""
    return uploads.check_id(ex, request.path_params["id"])
