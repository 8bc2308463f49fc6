"""The one check for images handed to a visualization method: ``as_images(x) -> (N, C, H, W)``."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..errors import expect
from ..taps import model_device

__all__ = ["as_images"]


def as_images(x, model: nn.Module | None = None, *, input_shape=None) -> torch.Tensor:
    """A detached floating (N, C, H, W) tensor from a (C, H, W) image or an (N, C, H, W) batch (tensor
    or numpy); on ``model``'s device and dtype when given; ``input_shape`` (C, H, W) enforced when given
    (a Run's input). Anything else raises InputError naming what was expected."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor) or x.dim() not in (3, 4) or not x.is_floating_point() or x.numel() == 0:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise expect("x", "a float image (C, H, W) or a batch (N, C, H, W) (pixels in [0, 1] for a Run)", got)
    x = (x[None] if x.dim() == 3 else x).detach()                                 # (N, C, H, W)
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise expect("x", f"images of the model's input shape {tuple(input_shape)} (C, H, W)", tuple(x.shape[1:]))
    if model is not None:
        device, dtype = model_device(model)
        x = x.to(device=device, dtype=dtype)
    return x
