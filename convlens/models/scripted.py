"""TorchScript files (``torch.jit.save``): kept as they are.

TorchScript code runs no Python hooks and no ``TorchFunctionMode``, so the methods that need them
refuse a scripted model with an error naming it (``taps.torchscript_error``): deconvnet, guided
backprop, layer taps and what builds on them (top patches, CNN codes, inversion, layer objectives,
health, probes, invariance per layer), receptive fields and summaries. Saliency, occlusion (by full
forwards), evaluation, class models, adversarial and fooling images need only the forward and its
gradient, and filters only the weights (a compiled ``Conv2d`` keeps them): these work. For every method, export the model with ``torch.export`` (``.pt2``) instead.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from torch import nn

from ..errors import RunError

__all__ = ["is_torchscript", "load_torchscript"]


def is_torchscript(p: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a torch.save zip has none)."""
    p = Path(p)
    if p.suffix in (".safetensors", ".pt2") or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any("/code/" in name or name.startswith("code/") for name in z.namelist())


def load_torchscript(p: Path, *, device=None) -> nn.Module:
    try:
        return torch.jit.load(str(p), map_location=device or "cpu").eval()
    except Exception as err:
        raise RunError(f"{p}: not a loadable TorchScript file ({type(err).__name__}: {str(err)[:200]})") from None
