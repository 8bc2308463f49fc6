"""Cascading model-parameter randomization: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018
(https://arxiv.org/abs/1810.03292), Sec. 3.1: re-initialize the layers of a trained model one at a time,
from the top (the logits) down, keeping the layers already randomized random, until the whole network is.

The layers, found from the model and its forward (``cascade_layers``):

* the user's network (a Run's net, without the wrapper's normalization) is walked from its top: a pure
  container (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``) is opened, any other module that
  holds parameters is one layer (a residual block, an EfficientNet block, a conv, an fc); modules without
  parameters (ReLU, pooling) are not layers;
* they are ordered by when the forward runs them (traced on the meta device, ``arch/tracing.py``), and
  layers the forward never runs are left out (randomizing them changes nothing);
* a normalization layer (BatchNorm, GroupNorm, LayerNorm) goes with the layer that runs before it: the
  demo net's steps are ``fc5``, ``conv4+bn4``, ``conv3+bn3``, ``conv2+bn2``, ``conv1+bn1``.

``max_steps`` merges neighbouring layers into at most that many steps (evenly, top first); ``layers``
names the steps yourself (each a layer name, or a list of names randomized together), top first.

Re-initializing a layer calls ``reset_parameters()`` of every module in it that has one (PyTorch's own
initialization: Kaiming-uniform convolutions and linear layers; BatchNorm back to weight 1, bias 0 and
running statistics 0 / 1) and draws any other parameter from a normal with its own standard deviation.
Step ``k`` draws from the seed ``seed + k`` (the global RNG is left as found). All of it happens on one
deep copy of the model: the model itself is never touched.
"""
from __future__ import annotations

import copy
from typing import Iterator, Sequence

import torch
from torch import nn

from ..errors import InputError, expect
from ..arch.tracing import trace
from ..inputs import as_images
from ..layers import display_names, resolve, user_model, user_prefix
from ..taps import scripted_path, torchscript_error

__all__ = ["cascade_layers", "cascade", "randomize", "step_label"]

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def cascade_layers(model: nn.Module, x, *, layers: Sequence | None = None,
                   max_steps: int | None = None) -> list[tuple[str, ...]]:
    """The cascade's steps, top first, each a tuple of module paths of ``model`` randomized together (module
    docstring). ``x``: images the model takes (the first one runs once to order the layers)."""
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise expect("max_steps", "a positive int or None", max_steps)
    scripted = scripted_path(model)
    if scripted is not None:
        raise torchscript_error(scripted, "its layers cannot be re-initialized one by one")
    if layers is not None:
        steps = [_given(model, item) for item in layers]
        if not steps:
            raise expect("layers", "a non-empty list of layer names (top first)", layers)
        return _merge(steps, max_steps)
    found = _found_layers(model, as_images(x, model)[:1])
    if not found:
        shown = ", ".join(display_names(model).values()) or "none"
        raise InputError(f"the model has no layer with parameters that its forward uses, so there is nothing to "
                         f"randomize (the sanity check re-initializes a trained model's weights); its modules: {shown}")
    return _merge(found, max_steps)


def _found_layers(model: nn.Module, image: torch.Tensor) -> list[tuple[str, ...]]:
    prefix = user_prefix(model).rstrip(".")
    units: list[str] = []

    def walk(path: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            child_path = f"{path}.{name}" if path else name
            if isinstance(child, _CONTAINERS):
                walk(child_path, child)
            elif any(True for _ in child.parameters()):
                units.append(child_path)

    walk(prefix, user_model(model))
    if not units:
        return []
    first: dict[str, int] = {}                   # each layer's first return in the forward (traced on meta)
    for i, call in enumerate(trace(model, tuple(image.shape[1:]), dtype=image.dtype, containers=True).calls):
        first.setdefault(call.path, i)
    ran = sorted((first[u], u) for u in units if u in first)
    modules = dict(model.named_modules())
    steps: list[list[str]] = []
    for _, path in ran:                          # bottom up: a normalization joins the layer before it
        if isinstance(modules[path], _NORMS) and steps:
            steps[-1].append(path)
        else:
            steps.append([path])
    return [tuple(s) for s in reversed(steps)]


def _given(model: nn.Module, item) -> tuple[str, ...]:
    names = [item] if isinstance(item, str) else list(item) if isinstance(item, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise expect("layers", "a list of layer names, or of lists of names randomized together", item)
    return tuple(resolve(model, n)[0] for n in names)


def _merge(steps: list[tuple[str, ...]], max_steps: int | None) -> list[tuple[str, ...]]:
    """At most ``max_steps`` steps: neighbours merged into groups of nearly equal size, top first."""
    if max_steps is None or len(steps) <= max_steps:
        return steps
    bounds = [round(i * len(steps) / max_steps) for i in range(max_steps + 1)]
    return [tuple(p for s in steps[lo:hi] for p in s) for lo, hi in zip(bounds, bounds[1:])]


def step_label(model: nn.Module, paths: Sequence[str]) -> str:
    """A step as the user names its layers: ``conv4+bn4``; a longer group by its ends, ``_blocks.15…_blocks.13``."""
    shown = display_names(model)
    names = [shown.get(p, p) for p in paths]
    return "+".join(names) if len(names) <= 2 else f"{names[0]}…{names[-1]}"


def randomize(model: nn.Module, paths: Sequence[str], *, seed: int = 0) -> None:
    """Re-initialize, in place, every module under ``paths`` of ``model`` (module docstring), from ``seed``."""
    modules = dict(model.named_modules())
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for path in paths:
            for m in modules[path].modules():
                own = list(m.parameters(recurse=False))
                if callable(getattr(m, "reset_parameters", None)) and (own or list(m.buffers(recurse=False))):
                    m.reset_parameters()
                else:
                    for p in own:
                        std = float(p.std()) if p.numel() > 1 else 0.0
                        p.normal_(0.0, std if std > 0 else 1.0)


def cascade(model: nn.Module, steps: Sequence[Sequence[str]], *, seed: int = 0) -> Iterator[nn.Module]:
    """One deep copy of ``model``, yielded after each step of the cascade: after step ``k`` the layers of steps
    0..k are randomized (step k from ``seed + k``). ``model`` itself is never changed."""
    copied = copy.deepcopy(model)
    for k, paths in enumerate(steps):
        randomize(copied, paths, seed=seed + k)
        yield copied
