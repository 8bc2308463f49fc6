"""The one check for images handed to a method: ``as_images(x, model) -> (N, C, H, W)``.

Every method that takes images goes through it: the visualization methods on their ``x``, and the
dataset-wide ones (features and what builds on them, health) on the first batch they read.

It refuses, each with an InputError naming what was expected and what was given: anything but a
float (C, H, W) image or (N, C, H, W) batch (tensor or numpy array), an empty batch, NaN or inf
values, a channel count other than the model's (with a hint when the image is channels-last, HWC),
and, for a Run's pixel model (documented to take [0, 1] pixels), values outside [0, 1] (with a hint
when they look like 0-255). The model's channel count comes from ``input_shape`` when given, else
the model's own ``input_shape`` (a Run's pixel model and a GrammarNet have one), else its first
``nn.Conv2d``; a model with none of these gets no channel check.

``forward_errors(model, x)`` wraps the first forward: the model's own RuntimeError on ``x`` becomes
a ShapeError naming the input's shape and the input the model expects.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from .errors import InputError, ShapeError, expect
from .layers import model_label
from .taps import model_device

__all__ = ["as_images", "forward_errors"]


def as_images(x, model: nn.Module | None = None, *, input_shape=None, name: str = "x") -> torch.Tensor:
    """A detached floating (N, C, H, W) tensor from a (C, H, W) image or an (N, C, H, W) batch (tensor
    or numpy), checked as the module docstring says; on ``model``'s device and dtype when given;
    ``input_shape`` (C, H, W) enforced when given (a Run's input); ``name``: what errors call the images."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point():
        raise _kind_error(x, name)
    given = tuple(x.shape)
    x = (x[None] if x.dim() == 3 else x).detach()                                 # (N, C, H, W)
    if x.numel() == 0:
        raise expect(name, "at least one image, (N, C, H, W) with every size >= 1", given)
    channels, source = _expected_channels(model, input_shape)
    if channels is not None and x.shape[1] != channels:
        raise _channel_error(given, channels, source, name)
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise expect(name, f"images of the model's input shape {tuple(input_shape)} (C, H, W)", tuple(x.shape[1:]))
    lo, hi = (float(v) for v in torch.aminmax(x))  # one pass: a NaN makes both NaN, an inf shows at an end
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad, nan = int((~torch.isfinite(x)).sum()), int(torch.isnan(x).sum())
        raise expect(name, "finite (no NaN or inf)", f"{nan} NaN and {bad - nan} inf values")
    if _takes_pixels(model):
        if lo < 0 or hi > 1:
            hint = "; they look like 0-255 pixels: divide by 255" if lo >= 0 and hi > 1.5 else ""
            err = expect(name, "pixels in [0, 1] (a Run's pixel model normalizes them itself)",
                         f"values in [{lo:.4g}, {hi:.4g}]")
            raise InputError(f"{err}{hint}")
    if model is not None:
        device, dtype = model_device(model)
        x = x.to(device=device, dtype=dtype)
    return x


def _expected_channels(model: nn.Module | None, input_shape=None) -> tuple[int | None, str]:
    """(the channel count ``model`` takes, a phrase saying where that comes from), or (None, "")."""
    if input_shape is not None:
        return int(input_shape[0]), f"the input shape {tuple(input_shape)}"
    if model is None:
        return None, ""
    shape = getattr(model, "input_shape", None)
    if isinstance(shape, (tuple, list)) and len(shape) == 3:
        return int(shape[0]), f"the model's input shape {tuple(shape)}"
    path, conv = next(((p, m) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)), ("", None))
    if conv is None or not conv.in_channels:  # no conv, or a lazy one not built yet
        return None, ""
    return conv.in_channels, f"the model's first conv {path!r} takes {conv.in_channels} channels"


def _kind_error(x, name: str) -> InputError:
    if not isinstance(x, torch.Tensor):
        return expect(name, "a float image (C, H, W) or a batch (N, C, H, W)", type(x).__name__)
    err = expect(name, "a float image (C, H, W) or a batch (N, C, H, W)", f"{x.dtype} tensor of shape {tuple(x.shape)}")
    return InputError(f"{err}; convert 0-255 pixels with x.float() / 255") if x.dtype == torch.uint8 else err


def _channel_error(given: tuple, channels: int, source: str, name: str) -> InputError:
    err = expect(name, f"{channels}-channel images, ({channels}, H, W) or (N, {channels}, H, W) ({source})", given)
    batch = len(given) == 4
    if given[-1] == channels:                                                     # (..., H, W, C)
        order = "0, 3, 1, 2" if batch else "2, 0, 1"
        return InputError(f"{err}; it looks like HWC (channels last): permute to CHW with x.permute({order})")
    if given[-3] == 1:
        sizes = f"-1, {channels}, -1, -1" if batch else f"{channels}, -1, -1"
        return InputError(f"{err}; to feed a 1-channel image to it, repeat the channel: x.expand({sizes})")
    return err


def _takes_pixels(model: nn.Module | None) -> bool:
    """Is ``model`` a Run's pixel model, documented to take [0, 1] pixels?"""
    from .training.runs import PixelModel

    return isinstance(model, PixelModel)


@contextmanager
def forward_errors(model: nn.Module, x: torch.Tensor):
    """Inside the block, the model's own RuntimeError on ``x`` (N, C, H, W) becomes a ShapeError naming
    ``x``'s shape and what the model expects, where known (out-of-memory errors pass through)."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as err:
        source = _expected_channels(model)[1]
        expected = f" (expected: {source})" if source else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ShapeError(f"the model ({model_label(model)}) failed on input of shape {tuple(x.shape)}{expected}: "
                         f"{first}") from err
