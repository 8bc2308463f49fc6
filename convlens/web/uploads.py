"""Image ids and uploads of the explorer.

**Ids.** An image page is named by an id, never by a path:

* ``t<row>``: row ``row`` of the explorer's data (``ex.data``: the run's test split, or ``serve --data``),
  ``t0`` ... ``t<N-1>``;
* ``u<16 hex>``: an uploaded image, the first 16 hex digits of the sha256 of its stored PNG, kept as
  ``RUN/uploads/<id>.png``. The same picture uploaded twice gets the same id (and one file).

An id must match :data:`ID` (a strict regex) and name a row the data has or a file the upload folder
has; anything else is a 404 that says what the ids are and suggests the nearest. Files are found by
the id alone: the folder is ``RUN/uploads`` and the name is ``<id>.png``, so no part of a request
becomes a path.

**Uploads** (``POST api/images``: a multipart form field ``file``, or a raw body with ``Content-Type:
image/png`` or ``image/jpeg``; the HTML form posts to ``images/upload`` and is redirected to the new
image's page):

* at most :data:`MAX_BYTES` (10 MiB): a ``Content-Length`` above it is refused before anything is read,
  and the bytes are counted while they arrive (a body without a length, or one that lies, is cut off
  there): 413. The body is held in memory only: nothing is spooled to a temporary file;
* PNG or JPEG content (what the bytes are, whatever the client calls them or its file name: the name is
  never used); anything else, or a file that does not decode (truncated, corrupt), is a 400 that says
  why;
* at most :data:`MAX_PIXELS` (40 million) pixels, checked from the header before the pixels are decoded
  (a 20000x20000 PNG of a few kilobytes is refused without decoding it): 400;
* the picture is turned upright by its EXIF orientation, converted to the model's channels as image
  files are everywhere in convlens (``convlens.data.images``: alpha dropped, palettes and CMYK to RGB,
  colour to gray with ITU-R 601 luma for a 1-channel model), then **resized and centre-cropped to the
  model's input** (:func:`fit`): as ``convlens.photo_batch`` does -- the shorter side scaled
  (bilinear, antialiased) so that the input's square is the central ``crop`` of it, and that centre
  cut out. ``crop`` is ImageNet's evaluation crop, 0.875 (shorter side 256 for a 224 input), for a run
  wrapping a pretrained ImageNet model, and 1 (the shorter side fills the input: only the longer side's
  excess is cut) for every other run. A non-square input (H x W) is covered the same way: the smallest
  scale at which the picture covers H/crop x W/crop, then the central H x W. A picture already of the
  input's size is kept as it is;
* what the model then sees is stored as an 8-bit PNG, ``RUN/uploads/<id>.png`` (written atomically;
  the only file the explorer writes outside ``RUN/results``), and read back from there, so that
  ``convlens saliency RUN RUN/uploads/<id>.png`` and the explorer see the same pixels.
"""
from __future__ import annotations

import hashlib
import io
import re
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import NotFound, TooLarge, WebError

MAX_BYTES = 10 * 1024 * 1024        # the largest upload (the file itself)
ENVELOPE = 64 * 1024                # what a multipart body may add around it (boundaries, part headers)
MAX_PIXELS = 40_000_000             # the largest picture, in pixels (width x height), checked before decoding
FOLDER = "uploads"
FIELD = "file"                      # the multipart form field holding the image
ID = re.compile(r"(?:t(?:0|[1-9][0-9]{0,9})|u[0-9a-f]{16})\Z")
FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}  # Pillow's format -> what we call it (MPO: camera JPEG)
IMAGENET_CROP = 0.875
THUMB = 96                          # px: the thumbnails of the list pages


# ---- ids ----------------------------------------------------------------------------------------------

def upload_dir(ex) -> Path:
    return Path(ex.dir) / FOLDER


def uploads(ex) -> list[str]:
    """The ids of the uploaded images, newest first."""
    folder = upload_dir(ex)
    if not folder.is_dir():
        return []
    found = [(p.stat().st_mtime_ns, p.stem) for p in folder.glob("u*.png") if ID.match(p.stem) and p.is_file()]
    return [stem for _, stem in sorted(found, reverse=True)]


def check_id(ex, image_id: str) -> str:
    """``image_id`` if it names an image of ``ex`` (a data row or an upload), else a 404 with suggestions."""
    if isinstance(image_id, str) and ID.match(image_id):
        if image_id[0] == "t" and int(image_id[1:]) < len(ex.data.labels):
            return image_id
        if image_id[0] == "u" and (upload_dir(ex) / f"{image_id}.png").is_file():
            return image_id
    raise _no_image(ex, image_id)


def _no_image(ex, image_id) -> NotFound:
    n = len(ex.data.labels)
    shown = str(image_id)[:80]
    suggestions = []
    digits = re.search(r"\d+", shown)
    if digits:
        suggestions.append(f"t{min(int(digits.group()[:10]), n - 1)}")
    ups = uploads(ex)
    import difflib

    suggestions += difflib.get_close_matches(shown, ups, n=3, cutoff=0.5)
    if not suggestions:
        suggestions = ["t0"] + ups[:2]
    return NotFound(f"no image {shown!r}: images are t0 ... t{n - 1} (the rows of the explorer's data) and "
                    f"u followed by 16 hex digits (the {len(ups)} uploaded image{'s' * (len(ups) != 1)})",
                    dict.fromkeys(suggestions))


def row_of(image_id: str) -> int | None:
    """The data row of a ``t`` id, None for an upload."""
    return int(image_id[1:]) if image_id[0] == "t" else None


def thumb_url(image_id: str) -> str:
    """The URL of an image's thumbnail, relative to the app's root (served by ``pages/image_list.py``)."""
    return f"png/images/{image_id}?size={THUMB}"


def upload_path(ex, image_id: str) -> Path:
    """``RUN/uploads/<id>.png`` of an upload id that :func:`check_id` accepted."""
    if not (ID.match(image_id) and image_id[0] == "u"):
        raise _no_image(ex, image_id)
    return upload_dir(ex) / f"{image_id}.png"


_PIXELS: dict = {}
_PIXELS_LOCK = threading.Lock()


def image(ex, image_id: str) -> torch.Tensor:
    """The (C, H, W) float image in [0, 1] that the model is shown for ``image_id`` (already checked)."""
    row = row_of(image_id)
    if row is not None:
        return ex.data.images[row]
    key = (str(ex.dir), image_id)
    with _PIXELS_LOCK:
        found = _PIXELS.get(key)
    if found is None:
        from ..data.images import load_image

        c, h, w = input_shape(ex)
        found = load_image(upload_path(ex, image_id), size=(h, w), channels=c)
        with _PIXELS_LOCK:
            if len(_PIXELS) > 64:
                _PIXELS.pop(next(iter(_PIXELS)))
            _PIXELS[key] = found
    return found


def input_shape(ex) -> tuple[int, int, int]:
    """(C, H, W) of the model's input: the run's, else that of its data."""
    shape = ex.run.input_shape or tuple(ex.data.images.shape[1:])
    return tuple(int(v) for v in shape)


def crop_of(run) -> float:
    """The fraction of the shorter side the centre crop keeps: ImageNet's 0.875 for a pretrained ImageNet
    model, else 1 (see the module docstring)."""
    source = ((run.manifest or {}).get("arch") or {}).get("source") or {}
    return IMAGENET_CROP if source.get("kind") == "pretrained" else 1.0


# ---- reading an upload ----------------------------------------------------------------------------------

def _limit(request, limit: int) -> None:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            size = int(length)
        except ValueError:
            raise WebError(f"Content-Length must be a number of bytes; got {length[:40]!r}") from None
        if size > limit:
            raise TooLarge(f"the upload is {size:,} bytes; at most {MAX_BYTES:,} bytes (10 MiB) are accepted")


def _too_large(got: int) -> TooLarge:
    return TooLarge(f"the upload is more than {got:,} bytes; at most {MAX_BYTES:,} bytes (10 MiB) are accepted")


async def _counted(request, limit: int):
    """The body's chunks, counted: a 413 as soon as more than ``limit`` bytes came."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        yield chunk


async def read_upload(request) -> bytes:
    """The uploaded file's bytes: the multipart field ``file``, or the whole body of an ``image/png`` or
    ``image/jpeg`` request; 413 above :data:`MAX_BYTES`, 400 for anything else (see the module docstring)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        _limit(request, MAX_BYTES + ENVELOPE)
        return await _multipart(request)
    if kind in ("image/png", "image/jpeg", "image/jpg", "application/octet-stream"):
        _limit(request, MAX_BYTES)
        body = bytearray()
        async for chunk in _counted(request, MAX_BYTES):
            body += chunk
        return bytes(body)
    raise WebError(f"an upload must be a multipart form with the image in the field {FIELD!r}, or a body of "
                   f"Content-Type image/png or image/jpeg; got Content-Type {kind or 'none'!r}")


async def _multipart(request) -> bytes:
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    _, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if not boundary:
        raise WebError("a multipart upload must name its boundary in the Content-Type header; got none")
    parts: list[tuple[dict, bytearray]] = []
    state = {"field": b"", "value": b"", "headers": {}, "data": None}

    def on_part_begin():
        state.update(headers={}, data=bytearray(), field=b"", value=b"")

    def on_header_field(data, start, end):
        state["field"] += data[start:end]

    def on_header_value(data, start, end):
        state["value"] += data[start:end]

    def on_header_end():
        state["headers"][state["field"].strip().lower()] = state["value"].strip()
        state["field"], state["value"] = b"", b""

    def on_part_data(data, start, end):
        state["data"] += data[start:end]
        if len(state["data"]) > MAX_BYTES:
            raise _too_large(MAX_BYTES)

    def on_part_end():
        parts.append((state["headers"], state["data"]))

    callbacks = dict(on_part_begin=on_part_begin, on_header_field=on_header_field, on_header_value=on_header_value,
                     on_header_end=on_header_end, on_part_data=on_part_data, on_part_end=on_part_end)
    try:
        parser = MultipartParser(boundary, callbacks)
        async for chunk in _counted(request, MAX_BYTES + ENVELOPE):
            parser.write(chunk)
        parser.finalize()
    except FormParserError as err:
        raise WebError(f"the multipart body cannot be parsed ({err})") from None
    for headers, data in parts:
        _, disposition = parse_options_header(headers.get(b"content-disposition", b""))
        if disposition.get(b"name") == FIELD.encode():
            return bytes(data)
    names = [parse_options_header(h.get(b"content-disposition", b""))[1].get(b"name", b"?").decode("latin-1")
             for h, _ in parts]
    raise WebError(f"a multipart upload must hold the image in the field {FIELD!r}; got fields "
                   f"{', '.join(map(repr, names)) or 'none'}")


# ---- decoding, fitting, storing -------------------------------------------------------------------------

def decode(data: bytes, channels: int) -> torch.Tensor:
    """PNG or JPEG bytes -> (channels, h, w) float32 in [0, 1], upright; 400 for anything else."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ..data.images import _to_tensor

    if not data:
        raise WebError("the upload is empty (0 bytes); expected a PNG or JPEG image")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own, smaller cap decides
        try:
            img = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as err:
            raise WebError(f"the image is too large to decode: at most {MAX_PIXELS:,} pixels are accepted "
                           f"({err})") from None
        except UnidentifiedImageError:
            raise WebError(f"the upload is not an image Pillow can identify ({len(data):,} bytes starting "
                           f"{data[:8]!r}); expected a PNG or JPEG image") from None
        except Exception as err:  # noqa: BLE001 -- Pillow raises many kinds on corrupt headers
            raise WebError(f"the upload cannot be read as an image ({type(err).__name__}: {err}); expected a "
                           "PNG or JPEG image") from None
        with img:
            if img.format not in FORMATS:
                raise WebError(f"the upload must be a PNG or JPEG image; got a {img.format} image")
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise WebError(f"the image is {w}x{h} = {w * h:,} pixels; at most {MAX_PIXELS:,} are accepted")
            if w < 1 or h < 1:
                raise WebError(f"the image has no pixels ({w}x{h})")
            try:
                img.load()  # decode now: truncated or corrupt pixel data fails here
                upright = ImageOps.exif_transpose(img)
                return _to_tensor(upright, None, channels)[0]
            except Exception as err:  # noqa: BLE001
                raise WebError(f"the {FORMATS[img.format]} image cannot be decoded: it is truncated or corrupt "
                               f"({type(err).__name__}: {err})") from None


def fit(x: torch.Tensor, shape: tuple[int, int, int], crop: float = 1.0) -> torch.Tensor:
    """(C, h, w) in [0, 1] -> (C, H, W) of ``shape``: resized and centre-cropped (see the module docstring)."""
    import torch.nn.functional as F

    from ..data.resize import photo_batch

    c, h, w = shape
    if tuple(x.shape[1:]) == (h, w):
        return x
    if h == w:
        return photo_batch(x, size=h, crop=crop)[0, :c]  # gray was repeated to 3 equal channels
    scale = max(h / x.shape[1], w / x.shape[2]) / crop
    new = (max(h, round(x.shape[1] * scale)), max(w, round(x.shape[2] * scale)))
    y = x if new == tuple(x.shape[1:]) else \
        F.interpolate(x[None], size=new, mode="bilinear", align_corners=False, antialias=True)[0].clamp_(0, 1)
    top, left = (new[0] - h) // 2, (new[1] - w) // 2
    return y[:, top:top + h, left:left + w]


def to_png(x: torch.Tensor) -> bytes:
    """(C, H, W) in [0, 1] -> 8-bit PNG bytes (gray for one channel)."""
    from PIL import Image

    a = (x.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()
    im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else np.ascontiguousarray(a))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def store(ex, data: bytes) -> str:
    """Decode, fit and store an upload (see the module docstring); returns its id."""
    from ..io import atomic_write_bytes

    shape = input_shape(ex)
    picture = fit(decode(data, shape[0]), shape, crop_of(ex.run))
    png = to_png(picture)
    image_id = "u" + hashlib.sha256(png).hexdigest()[:16]
    path = upload_dir(ex) / f"{image_id}.png"
    if not path.is_file():
        atomic_write_bytes(path, png)
    return image_id
