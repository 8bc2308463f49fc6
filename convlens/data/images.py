"""Reading one image file into a (C, H, W) float tensor in [0, 1], with every failure a DataError.

Policy (shared by ``load_image`` and image folders):
- Formats: whatever Pillow reads, by extension ``IMAGE_EXTENSIONS``; multi-frame files (GIF,
  TIFF) give their first frame.  Any other extension is "not an image file".
- Channels: ``channels=3`` converts gray, palette and CMYK images to RGB; ``channels=1``
  converts colour to gray with ITU-R 601 luma (Pillow's ``convert("L")``).  An alpha channel
  is dropped (the colour values are kept, as torchvision's loader does), not composited.
  16-bit gray is scaled by 1/65535, float images are clipped to [0, 1].
- Size: ``size`` (int or (H, W)) resizes with Pillow's bilinear filter (antialiased when
  shrinking), ignoring aspect ratio; ``size=None`` keeps the file's size.
- Errors: a missing path, a directory, an empty (0-byte) file, an unknown extension, content
  Pillow cannot identify, and truncated or corrupt pixel data each raise ``DataError`` naming
  the file and what was expected.  EXIF orientation is not applied.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..errors import DataError, expect
from .dataset import as_size

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                    ".ppm", ".pgm", ".pbm", ".pnm")
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_EXPECTED = "a readable image file (" + ", ".join(IMAGE_EXTENSIONS) + ")"


@dataclass(frozen=True)
class ImageInfo:
    """What the file's header says: Pillow ``mode`` and (H, W) ``size``."""
    path: str
    mode: str
    size: tuple[int, int]

    @property
    def channels(self) -> int:
        return 1 if self.mode in GRAY_MODES else 3


def probe(path: str | os.PathLike) -> ImageInfo:
    """Check the file and read only its header (fast); raises DataError on any fault."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            return ImageInfo(path, img.mode, (img.height, img.width))
    except Exception as e:  # Pillow raises many kinds (UnidentifiedImageError, OSError, SyntaxError...)
        raise DataError(f"{path}: cannot be read as an image ({_reason(e)}); expected {_EXPECTED}") from e


def read(path: str | os.PathLike, *, size: tuple[int, int] | None = None,
         channels: int | None = 3) -> tuple[torch.Tensor, str]:
    """-> (image (C, H, W) float32 in [0, 1], conversion done: '' or e.g. 'RGBA->RGB')."""
    path = os.fspath(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            img.load()  # decodes now, so truncated or corrupt data fails here, inside the try
            return _to_tensor(img, size, channels)
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"{path}: cannot be read as an image ({_reason(e)}); "
                        f"expected {_EXPECTED} with complete pixel data") from e


def load_image(path: str | os.PathLike, *, size=None, channels: int | None = 3) -> torch.Tensor:
    """One image file -> (C, H, W) float32 in [0, 1] (see the module docstring for the policy).

    ``channels=None`` keeps the file's own count (1 for gray, 3 otherwise).
    """
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise expect("channels", "None, 1 or 3", channels)
    return read(path, size=as_size(size), channels=channels)[0]


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; expected {_EXPECTED}")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a directory; expected {_EXPECTED}")
    if not path.lower().endswith(IMAGE_EXTENSIONS):
        raise DataError(f"{path}: not an image file (extension {os.path.splitext(path)[1] or 'none'!r}); "
                        f"expected {_EXPECTED}")
    if os.path.getsize(path) == 0:
        raise DataError(f"{path}: is empty (0 bytes); expected {_EXPECTED}")


def _to_tensor(img: Image.Image, size, channels) -> tuple[torch.Tensor, str]:
    mode = img.mode
    high = mode.startswith("I") or mode == "F"  # 16/32-bit integer or float pixels
    if channels is None:
        channels = 1 if mode in GRAY_MODES else 3
    if high:
        work = img.convert("F")
    else:
        if mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")  # Pillow's advice for palettes with transparency
        work = img.convert("L" if channels == 1 else "RGB")
    if size is not None and (work.height, work.width) != tuple(size):
        work = work.resize((size[1], size[0]), Image.BILINEAR)
    arr = np.asarray(work, dtype=np.float32)  # (H, W) or (H, W, 3)
    if high:
        arr = np.clip(arr / 65535.0 if mode.startswith("I") else arr, 0.0, 1.0)
    else:
        arr = arr / 255.0
    x = torch.from_numpy(np.ascontiguousarray(arr))
    x = x.unsqueeze(0) if x.ndim == 2 else x.permute(2, 0, 1)  # (C, H, W)
    if x.shape[0] != channels:
        x = x.expand(channels, -1, -1).contiguous()  # high-bit gray asked for RGB
    target = "L" if channels == 1 else "RGB"
    return x.contiguous(), ("" if mode == target else f"{mode}->{target}")


def _reason(e: Exception) -> str:
    text = str(e).strip() or type(e).__name__
    return text if len(text) < 200 else text[:200] + "..."
