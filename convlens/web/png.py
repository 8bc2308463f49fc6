"""PNG responses for the explorer: images, thumbnails and heatmaps drawn from arrays (never files named
by a request). Encoded with Pillow; cached by the browser for a day (each URL names one immutable
result: a saved result's ids change when it is recomputed, see ``version``).

Matplotlib figures (``convlens.plots``) are drawn under one lock (:func:`drawing`, :func:`figure_png`):
pyplot keeps global state (its figure manager) and requests are served from a thread pool. The arrays
drawn here (:func:`heat`, :func:`class_colors`, the ``plots`` functions that return canvases) only read
colormaps and need no lock.
"""
from __future__ import annotations

import io
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np
from starlette.responses import Response

_DRAWING = threading.RLock()


def to_uint8(image) -> np.ndarray:
    """(H, W, 3) or (H, W) uint8 from a tensor or array: (C, H, W) or (H, W, C) with C in 1, 3, values in
    [0, 1] (floats) or [0, 255] (uint8)."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = a.transpose(1, 2, 0)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.dtype != np.uint8:
        a = (np.clip(np.nan_to_num(a.astype(np.float32)), 0, 1) * 255 + 0.5).astype(np.uint8)
    return a


def normalized(a) -> np.ndarray:
    """``a`` scaled to [0, 1] by its own min and max (a constant map becomes 0.5)."""
    a = a.detach().cpu().float().numpy() if hasattr(a, "detach") else np.asarray(a, np.float32)
    lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
    return np.full_like(a, 0.5) if hi - lo < 1e-12 else (a - lo) / (hi - lo)


def heat(a, cmap: str = "inferno") -> np.ndarray:
    """A (H, W) map as an RGB heatmap (H, W, 3) in [0, 1], scaled by its own range."""
    from matplotlib import colormaps

    return colormaps[cmap](normalized(a))[..., :3]


def encode(image, *, size: int | None = None) -> bytes:
    """PNG bytes of ``image`` (see :func:`to_uint8`), upscaled with nearest neighbour to about ``size`` px."""
    from PIL import Image

    im = Image.fromarray(to_uint8(image))
    if size and max(im.size) < size:
        f = max(1, size // max(im.size))
        im = im.resize((im.width * f, im.height * f), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def response(data: bytes, *, media_type: str = "image/png", max_age: int | None = 86400) -> Response:
    """Encoded image bytes as a response the browser keeps ``max_age`` seconds (None: not at all)."""
    headers = {"Cache-Control": f"private, max-age={max_age}" if max_age is not None else "no-store"}
    return Response(data, media_type=media_type, headers=headers)


def png(image, *, size: int | None = None, cache: bool = True) -> Response:
    """``image`` (see :func:`to_uint8`) as a PNG response (see :func:`encode`)."""
    return response(encode(image, size=size), max_age=86400 if cache else None)


@contextmanager
def drawing() -> Iterator[None]:
    """Hold the lock every matplotlib figure of the explorer is drawn under (see the module docstring)."""
    with _DRAWING:
        yield


def figure_png(draw: Callable) -> bytes:
    """PNG bytes of the matplotlib figure ``draw()`` returns (a ``convlens.plots`` function), drawn and
    closed under the drawing lock."""
    from ..plots.common import to_png

    with drawing():
        return to_png(draw())


def class_colors(classes) -> dict[int, str]:
    """A colour (``#rrggbb``) per class index, in the given order (the most frequent first): tab10 or tab20,
    then golden-ratio hues beyond 20 classes."""
    import colorsys

    from matplotlib import colormaps

    cmap = colormaps["tab20" if len(classes) > 10 else "tab10"]
    out = {}
    for i, k in enumerate(classes):
        r, g, b = cmap(i % cmap.N)[:3] if i < 20 else colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.65, 0.85)
        out[int(k)] = "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))
    return out
