"""Photos -> the square [0, 1] batch an ImageNet network takes: resize the shorter side, crop the centre.

``photo_batch(skimage.data.coffee())`` returns a (1, 3, 224, 224) float32 tensor in [0, 1], ready for
``run.pixel_model()``. The rule is ImageNet's usual evaluation crop (Krizhevsky et al. 2012's 256 -> 224;
torchvision's ``Resize(256)`` + ``CenterCrop(224)``; TensorFlow's EfficientNet keeps the same
224/256 = 0.875 of the shorter side): scale so the *shorter* side is ``round(size / crop)`` pixels (256 for 224),
keeping the aspect ratio, with bilinear interpolation antialiased when shrinking
(``F.interpolate(..., antialias=True)``), then cut the central ``size x size`` square (offsets
``(H - size) // 2``, ``(W - size) // 2``).

Images may be: numpy arrays or PIL images, channels last ((H, W) gray, (H, W, 3) RGB, (H, W, 4) RGBA:
alpha dropped), uint8 in 0-255 or floating in [0, 1]; torch tensors, channels first ((C, H, W) or an
(N, C, H, W) batch, C in 1, 3, 4), floating in [0, 1] (what ``convlens.datasets.load_image`` returns);
an image file path; or a list of these, of any sizes. Gray images get three equal channels.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import expect

CROP = 0.875  # 224 / 256: the fraction of the shorter side that the centre crop keeps

__all__ = ["CROP", "photo_batch", "resize_shorter_side", "center_crop"]


def photo_batch(images, size: int = 224, *, crop: float = CROP) -> torch.Tensor:
    """One photo or a list of photos -> (N, 3, size, size) float32 in [0, 1] (see the module docstring)."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise expect("size", "a positive int", size)
    if not isinstance(crop, (int, float)) or isinstance(crop, bool) or not 0 < crop <= 1:
        raise expect("crop", "a number in (0, 1]", crop)
    side = max(size, round(size / crop))
    out = [center_crop(resize_shorter_side(img, side), size) for img in _images(images)]
    return torch.stack(out)  # (N, 3, size, size)


def resize_shorter_side(image: torch.Tensor, side: int) -> torch.Tensor:
    """(C, H, W) -> (C, H', W') with min(H', W') == ``side`` and the aspect ratio kept (bilinear, antialiased)."""
    h, w = image.shape[-2:]
    scale = side / min(h, w)
    new = (side, max(side, round(w * scale))) if h <= w else (max(side, round(h * scale)), side)
    if new == (h, w):
        return image
    x = F.interpolate(image[None], size=new, mode="bilinear", align_corners=False, antialias=True)  # (1, C, H', W')
    return x[0].clamp_(0, 1)


def center_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` square of a (C, H, W) image at least that large."""
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise expect("image", f"at least {size}x{size} pixels to crop", f"{h}x{w}")
    top, left = (h - size) // 2, (w - size) // 2
    return image[:, top:top + size, left:left + size]


# -- reading what was given -------------------------------------------------------------------------------
_EXPECTED = ("an image: a numpy array or PIL image (H, W) / (H, W, 3|4), uint8 or float in [0, 1]; a torch "
             "tensor (C, H, W) / (N, C, H, W) in [0, 1]; an image file path; or a list of these")


def _images(images) -> list[torch.Tensor]:
    """Every given image as a float32 (3, H, W) tensor in [0, 1]."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return [_rgb(_checked(t, "image"), "image") for t in images]
    if isinstance(images, np.ndarray) and images.ndim == 4:
        return [_one(a, f"images[{i}]") for i, a in enumerate(images)]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not images:
            raise expect("images", "at least one image", images)
        return [_one(img, f"images[{i}]") for i, img in enumerate(images)]
    return [_one(images, "image")]


def _one(img, name: str) -> torch.Tensor:
    if isinstance(img, (str, os.PathLike)):
        from .images import load_image

        return load_image(img, channels=3)
    if isinstance(img, torch.Tensor):
        if img.dim() == 2:
            img = img[None]
        if img.dim() != 3:
            raise expect(name, _EXPECTED, f"a tensor of shape {tuple(img.shape)}")
        return _rgb(_checked(img, name), name)
    try:
        from PIL import Image

        if isinstance(img, Image.Image):
            img = np.array(img.convert("RGB") if img.mode not in ("L", "RGB", "RGBA") else img)
    except ImportError:  # pragma: no cover - Pillow is a dependency
        pass
    if not isinstance(img, np.ndarray) or img.ndim not in (2, 3):
        shape = f" of shape {img.shape}" if isinstance(img, np.ndarray) else ""
        raise expect(name, _EXPECTED, f"a {type(img).__name__}{shape}")
    if img.dtype == np.uint8:
        t = torch.from_numpy(np.array(img)).float() / 255  # a copy: arrays may be read-only
    elif np.issubdtype(img.dtype, np.floating):
        t = _checked(torch.from_numpy(np.array(img, dtype=np.float32)), name)
    else:
        raise expect(name, "uint8 (0-255) or floating (0-1) pixels", f"dtype {img.dtype}")
    t = t[None] if t.dim() == 2 else t.permute(2, 0, 1)  # (H, W, C) -> (C, H, W)
    return _rgb(t, name)


def _checked(t: torch.Tensor, name: str) -> torch.Tensor:
    if not t.is_floating_point():
        raise expect(name, "a floating tensor in [0, 1] (channels first)", f"dtype {t.dtype}")
    if not torch.isfinite(t).all():
        raise expect(name, "finite pixel values", "NaN or inf")
    lo, hi = float(t.min()), float(t.max())
    if lo < 0 or hi > 1:
        hint = " (0-255 values? pass uint8 or divide by 255)" if hi > 1.5 else ""
        raise expect(name, f"pixels in [0, 1]{hint}", f"values in [{lo:.3g}, {hi:.3g}]")
    return t.detach().to(torch.float32, copy=True)


def _rgb(t: torch.Tensor, name: str) -> torch.Tensor:
    """(C, H, W) with C in 1, 3, 4 -> (3, H, W): gray repeated, alpha dropped."""
    c = t.shape[0]
    if c == 1:
        return t.expand(3, -1, -1).contiguous()
    if c in (3, 4):
        return t[:3].contiguous()
    raise expect(name, "1, 3 or 4 channels (gray, RGB, RGBA)", f"{c} channels, shape {tuple(t.shape)}")
