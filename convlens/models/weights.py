"""Weights from a file, never unpickling code: ``.safetensors``, or ``.pt``/``.pth`` through
``torch.load(weights_only=True)``; loaded strictly, a mismatch naming the keys and shapes."""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ..errors import RunError
from ..io import load_tensors

__all__ = ["read_state_dict", "load_weights", "WEIGHT_SUFFIXES"]

WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")


def read_state_dict(p: Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from a torch.save file with ``weights_only=True``."""
    p = Path(p)
    if p.suffix == ".safetensors":
        state, _ = load_tensors(p, what="a state_dict in safetensors format")
        return _strip_prefix(state)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"{p}: holds pickled Python objects that torch.load(weights_only=True) refuses; convlens "
                       "never unpickles code. Re-save the weights with torch.save(model.state_dict(), path) "
                       "or safetensors.torch.save_file") from None
    except Exception as err:  # truncated zip, not a torch file at all, ...
        raise RunError(f"{p}: not a readable PyTorch weight file ({type(err).__name__}: {str(err)[:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunError(f"{p}: expected a state_dict (a dict of tensor names to tensors); got {type(obj).__name__}")
    return _strip_prefix(obj)


def _strip_prefix(state: dict) -> dict:
    """Drop the ``module.`` prefix that DataParallel/DistributedDataParallel add to every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], *, source, label: str | None = None) -> None:
    """``net.load_state_dict(state)`` strictly, or RunError naming the first missing and unexpected keys
    and the wrong shapes (with both shapes)."""
    own = net.state_dict()
    missing = [f"{k} {tuple(own[k].shape)}" for k in own if k not in state]
    unexpected = [f"{k} {tuple(state[k].shape)}" for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (the model's is {tuple(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{what}: {_brief(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)) if keys]
    if problems:
        raise RunError(f"{source}: weights do not fit the {label or type(net).__name__}; " + "; ".join(problems))
    net.load_state_dict(state)


def _brief(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")
