"""PNG responses for the explorer: images, thumbnails and heatmaps drawn from arrays (never files named
by a request). Encoded with Pillow; cached by the browser for a day (each URL names one immutable
result: a saved result's ids change when it is recomputed, see ``version``)."""
from __future__ import annotations

import io

import numpy as np
from starlette.responses import Response


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


def png(image, *, size: int | None = None, cache: bool = True) -> Response:
    headers = {"Cache-Control": "private, max-age=86400" if cache else "no-store"}
    return Response(encode(image, size=size), media_type="image/png", headers=headers)
