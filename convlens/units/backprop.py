"""Backprop visualizations: one modified-gradient core, three rules for the ReLU.

* ``saliency(model, x, target)`` -> (N, H, W): Simonyan, Vedaldi & Zisserman, "Deep Inside
  Convolutional Networks: Visualising Image Classification Models and Saliency Maps", ICLR workshop
  2014 (https://arxiv.org/abs/1312.6034), Sec. 3: ``M_ij = max_c |dS_c / dI_(i,j,c)|``, the plain
  gradient of the class score *before* the softmax, its absolute value, the max over colour channels.
* ``deconvnet(model, x, target=None, layer=None, unit=None)`` -> (N, C, H, W): Zeiler & Fergus,
  "Visualizing and Understanding Convolutional Networks", ECCV 2014 (https://arxiv.org/abs/1311.2901),
  Sec. 2.1: unpool by the max-pool switches, rectify the signal going down, filter with the transposed
  filters. As Simonyan et al. (Sec. 4) show, that is the gradient with one change: at a ReLU the
  signal going down is rectified (``relu(grad)``) instead of masked by where the forward input was
  positive. Max pooling's gradient already routes to the recorded argmax (the switches), and a
  convolution's gradient is the convolution with the transposed filters.
* ``guided_backprop(...)`` (same signature) -> (N, C, H, W): Springenberg et al., "Striving for
  Simplicity: The All Convolutional Net", ICLR workshop 2015 (https://arxiv.org/abs/1412.6806):
  both masks at once, ``grad * (forward input > 0) * (grad > 0)``.

Seeds. With ``target`` (an int, a class name, or one per image; None: the predicted class) the
backward starts from the class score S_c: the model's output *is* taken as the scores, so a model
whose ``forward`` ends in a softmax should be given without it (convlens grammar nets return the
scores before the softmax). With ``layer``/``unit`` (deconvnet and guided backprop) the forward stops
at that layer's first call, and for each image the backward starts from the strongest activation of
feature map ``unit`` (its argmax over positions, the first one on ties), every other activation of
the layer set to zero, as in Zeiler & Fergus. The seed there is **1**, not the activation itself as
in the paper: the projection is linear in a positive seed, so this only divides the paper's picture
by that (positive) activation, which per-image display normalization hides anyway. A map that is
<= 0 everywhere for an image (a silent unit) still projects from its first argmax.

How: during the forward a ``TorchFunctionMode`` routes every ReLU -- ``F.relu`` (what ``nn.ReLU``
calls), ``torch.relu``, ``Tensor.relu``, and the in-place ``relu_`` / ``F.relu(inplace=True)`` --
through an ``autograd.Function`` whose backward is the rule, so the model may call ReLU any way it
likes (Captum's ``Deconvolution``/``GuidedBackprop`` hook ``nn.ReLU`` modules only and silently fall
back to plain gradients for a functional ReLU). In-place ReLUs stay in place for the code after them.
Other nonlinearities (leaky ReLU, ReLU6, ELU, GELU, SiLU, tanh, sigmoid, ``clamp(min=0)``) and
everything else (BatchNorm, residual additions, average pooling) keep their plain gradient. The
saliency rule ("gradient") needs no mode at all: it is the plain gradient. TorchScript code never
calls back into Python, so no mode reaches a ReLU inside it: deconvnet and guided backprop refuse a
model holding a TorchScript module (the model itself, a submodule, or the net of a Run loaded from a
TorchScript file) with an InputError naming it, where they would silently return the plain gradient;
saliency works on TorchScript. A scripted *function* called from an eager ``forward`` is no module and
cannot be seen: its ReLUs keep their plain gradient.

The model is left as found: it runs in **eval mode** during the call (BatchNorm's running statistics,
dropout off, so every image's map is its own; Captum uses the model's current mode, so compare in
eval) and each module's mode is restored after, also when the forward raises; weights,
``requires_grad`` and the caller's ``x`` are untouched; no hook stays behind. Inputs are moved to the
model's device and dtype; results come back there, detached.
"""
from __future__ import annotations

import math
from contextlib import nullcontext
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InputError, ShapeError, expect
from ..taps import capture, eval_mode, resolve_hookable, scripted_path, torchscript_error
from ..inputs import as_images, forward_errors
from ..targets import class_names_of, target_indices

__all__ = ["RULES", "modified_gradient", "saliency", "deconvnet", "guided_backprop", "unit_maxima",
           "top_projections"]

RULES = ("gradient", "deconvnet", "guided")


# ---- the ReLU rules ----------------------------------------------------------------------------------------

class _DeconvReLU(torch.autograd.Function):
    """Forward: ReLU. Backward: ReLU of the incoming signal, ignoring the forward mask (Zeiler & Fergus)."""

    @staticmethod
    def forward(ctx, x, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
            return torch.relu_(x)
        return torch.relu(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0), None


class _GuidedReLU(torch.autograd.Function):
    """Forward: ReLU. Backward: the gradient where both the forward input and the gradient are positive."""

    @staticmethod
    def forward(ctx, x, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
            out = torch.relu_(x)
        else:
            out = torch.relu(x)
        ctx.save_for_backward(out)  # out > 0 exactly where the input was > 0 (what torch's relu saves too)
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0).clamp_min_(0), None  # one new tensor


_FUNCTIONS = {"deconvnet": _DeconvReLU, "guided": _GuidedReLU}
_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_ = {torch.relu_, torch.Tensor.relu_}  # F.relu_ is torch.relu_


class _ReluRule(TorchFunctionMode):
    """Route every ReLU of the forward through the rule's autograd.Function (see the module docstring)."""

    def __init__(self, rule: str):
        super().__init__()
        self.function = _FUNCTIONS[rule]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_:
            x = args[0] if args else kwargs.get("input")
            if isinstance(x, torch.Tensor) and x.requires_grad:
                inplace = func in _RELU_ or (func is F.relu and bool(args[1] if len(args) > 1
                                                                     else kwargs.get("inplace", False)))
                return self.function.apply(x, inplace)
        return func(*args, **kwargs)


# ---- the core ----------------------------------------------------------------------------------------------

class _Stop(Exception):
    """Raised by the layer hook: nothing above the seeded layer needs to run."""


def modified_gradient(model: nn.Module, x, seed: Callable[[torch.Tensor], torch.Tensor], *,
                      rule: str = "gradient", layer: str | None = None) -> torch.Tensor:
    """The input gradient of ``model`` at ``x`` (N, C, H, W) under a ReLU ``rule``, seeded by ``seed``.

    ``seed(output) -> grad_output`` builds the backward's starting signal (same shape as ``output``)
    from the model's output, or from ``layer``'s output (its first call; the forward stops there).
    ``rule``: ``"gradient"`` (plain), ``"deconvnet"`` or ``"guided"``. Returns (N, C, H, W), detached,
    on the model's device. The model runs in eval mode and is left as found (module docstring).
    """
    if rule not in RULES:
        raise expect("rule", f"one of {RULES}", rule)
    if not isinstance(model, nn.Module):
        raise expect("model", "an nn.Module (or a Run / run directory)", type(model).__name__)
    scripted = scripted_path(model) if rule != "gradient" else None
    if scripted is not None:
        raise torchscript_error(scripted, f"the {rule!r} ReLU rule never runs inside TorchScript code (the result "
                                          "would be the plain gradient; saliency works on TorchScript)")
    x = as_images(x, model)
    module = resolve_hookable(model, layer)[1] if layer is not None else None
    captured: list[torch.Tensor] = []

    def hook(_module, _args, output):
        captured.append(output)
        raise _Stop

    modes = [(m, m.training) for m in model.modules()]
    handle = module.register_forward_hook(hook) if module is not None else None
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().requires_grad_()  # a fresh leaf: the caller's tensor is untouched
            try:
                with forward_errors(model, x), _ReluRule(rule) if rule != "gradient" else nullcontext():
                    out = model(x)
            except _Stop:
                out = captured[0]
            if handle is not None and not captured:
                raise InputError(f"layer {layer!r} did not run during the forward pass")
            out = _check_output(out, len(x), layer)
            (grad,) = torch.autograd.grad(out, x, grad_outputs=seed(out.detach()), allow_unused=True)
    finally:
        if handle is not None:
            handle.remove()
        for m, mode in modes:
            m.training = mode
    return torch.zeros_like(x) if grad is None else grad.detach()  # (N, C, H, W)


def _check_output(out, n: int, layer: str | None) -> torch.Tensor:
    what = f"layer {layer!r}'s output" if layer is not None else "the model's output"
    if not isinstance(out, torch.Tensor):
        raise ShapeError(f"{what} must be a tensor; got {type(out).__name__}")
    if out.dim() < 2 or out.shape[0] != n:
        raise ShapeError(f"{what} must be ({n}, ...) with one row per image; got shape {tuple(out.shape)}")
    if layer is None and out.dim() != 2:
        raise ShapeError(f"{what} must be ({n}, classes) class scores; got shape {tuple(out.shape)}")
    if not out.requires_grad:
        raise InputError(f"{what} does not depend on the input (no gradient flows to it)")
    return out


# ---- seeds -------------------------------------------------------------------------------------------------

def _class_seed(model: nn.Module, target) -> Callable[[torch.Tensor], torch.Tensor]:
    """One-hot at each image's target class (None: its predicted class) of the (N, K) scores."""
    names = class_names_of(model)
    if target is not None and not isinstance(target, (torch.Tensor, list, tuple)):
        target_indices(target, 1, class_names=names)  # a bad name fails before the forward

    def seed(scores: torch.Tensor) -> torch.Tensor:  # (N, K)
        n, k = scores.shape
        t = (scores.argmax(1) if target is None else
             target_indices(target, n, class_names=names, num_classes=k, device=scores.device))  # (N,)
        return F.one_hot(t, k).to(scores.dtype)  # (N, K)
    return seed


def _unit_seed(unit) -> Callable[[torch.Tensor], torch.Tensor]:
    """1 at the argmax of feature map ``unit`` of each image, 0 everywhere else in the layer."""
    def seed(acts: torch.Tensor) -> torch.Tensor:  # (N, C, ...)
        c = acts.shape[1]
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)) or not 0 <= unit < c:
            raise expect("unit", f"a feature map index in [0, {c - 1}]", unit)
        n = acts.shape[0]
        where = acts[:, int(unit)].reshape(n, -1).argmax(1)     # (N,) flat position of the maximum
        out = acts.new_zeros(n, c, math.prod(acts.shape[2:]))
        out[torch.arange(n, device=acts.device), int(unit), where] = 1  # (N, C, P)
        return out.reshape(acts.shape)
    return seed


def unit_maxima(model: nn.Module, x, layer: str, unit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (N,), positions (N, D)): the strongest activation of feature map ``unit`` of ``layer``
    per image and where it is (row, col for a conv map; empty D for an fc layer), in eval mode."""
    x = as_images(x, model)
    with torch.no_grad(), eval_mode(model), capture(model, layer, stop_at_last=True, calls="all") as acts, \
            forward_errors(model, x):
        acts.forward(x)
    out = acts[layer][0]                                          # (N, C, ...) the first call
    _unit_seed(unit)(out[:1])                                     # validates unit
    flat = out[:, unit].reshape(len(out), -1)                     # (N, P)
    values, where = flat.max(1)                                   # (N,), (N,) first maximum
    shape = tuple(out.shape[2:])
    pos = np.stack(np.unravel_index(where.cpu().numpy(), shape), 1) if shape else np.zeros((len(out), 0), int)
    return values, torch.as_tensor(pos, dtype=torch.int64)


# ---- the three methods -------------------------------------------------------------------------------------

def saliency(model, x, target=None) -> torch.Tensor:
    """Simonyan et al. 2014's image-specific class saliency, (N, H, W): ``max_c |dS_c/dI|``.

    ``model``: an nn.Module, a Run or a run directory (a Run's pixel model takes images in [0, 1]).
    ``target``: the class (index or name, or one per image); None: each image's predicted class.
    """
    model = _model(model)
    grad = modified_gradient(model, x, _class_seed(model, target), rule="gradient")  # (N, C, H, W)
    return grad.abs().amax(1)                                                          # (N, H, W)


def deconvnet(model, x, target=None, layer: str | None = None, unit: int | None = None) -> torch.Tensor:
    """Zeiler & Fergus 2014's deconvnet projection to pixel space, (N, C, H, W).

    From the class score ``target`` (None: the predicted class), or from the strongest activation of
    feature map ``unit`` of ``layer`` with the rest of the layer zeroed (module docstring).
    """
    return _project(model, x, target, layer, unit, "deconvnet")


def guided_backprop(model, x, target=None, layer: str | None = None, unit: int | None = None) -> torch.Tensor:
    """Springenberg et al. 2015's guided backpropagation, (N, C, H, W); arguments as :func:`deconvnet`."""
    return _project(model, x, target, layer, unit, "guided")


def _project(model, x, target, layer, unit, rule: str) -> torch.Tensor:
    model = _model(model)
    if layer is not None or unit is not None:
        if layer is None or unit is None:
            raise InputError(f"layer and unit go together: give both (the feature map `unit` of `layer`); "
                             f"got layer={layer!r}, unit={unit!r}")
        if target is not None:
            raise InputError(f"give either target (project a class score) or layer/unit (project a feature "
                             f"map), not both; got target={target!r}, layer={layer!r}")
        return modified_gradient(model, x, _unit_seed(unit), rule=rule, layer=layer)
    return modified_gradient(model, x, _class_seed(model, target), rule=rule)


def _model(model_or_run) -> nn.Module:
    return _model_and_run(model_or_run)[0]


def _model_and_run(model_or_run):
    from ..training.runs import model_and_run

    return model_and_run(model_or_run)


def _label(model: nn.Module, run) -> str:
    if run is not None and getattr(run, "dir", None) is not None:
        return Path(run.dir).name
    return type(getattr(model, "net", model)).__name__



# ---- Zeiler & Fergus Fig. 2: the projections of a unit's top-k images ----------------------------------------

def top_projections(model, top, data, layer: str, unit: int, *, rule: str = "deconvnet",
                    pad: bool = True) -> list[torch.Tensor]:
    """The deconvnet (or ``rule``) projections of one unit's top images, cropped like their patches.

    ``top``: a :class:`~convlens.units.patches.TopPatches` mined on ``data`` with ``model``.
    Each image is projected from unit ``unit`` of the module ``top`` read for ``layer``, seeded with 1
    at the very position that was ranked (``top.positions``), all else zero, then cropped with the
    same box as :meth:`TopPatches.crops` and, with ``pad``, placed the same way in a canvas of the
    receptive-field size filled with 0. Returns (C, h, w) tensors, best first, on the CPU.
    """
    model = _model(model)
    r = top.row(layer, unit)
    keep = top.indices[layer][r] >= 0
    if not keep.any():
        return []
    images = top.source(data).take(top.indices[layer][r][keep])              # (m, C, H, W)
    positions = torch.as_tensor(top.positions[layer][r][keep], dtype=torch.int64)  # (m, 2)

    def seed(acts: torch.Tensor) -> torch.Tensor:                            # (m, C, ...) -> one-hot
        out = torch.zeros_like(acts)
        rows, pos = torch.arange(len(acts), device=acts.device), positions.to(acts.device)
        if acts.dim() == 4:
            out[rows, unit, pos[:, 0], pos[:, 1]] = 1
        else:
            out.reshape(len(acts), acts.shape[1], -1)[rows, unit, 0] = 1
        return out

    proj = modified_gradient(model, images, seed, rule=rule, layer=top.paths[layer]).cpu()  # (m, C, H, W)
    geo = top.fields.get(layer)
    out = []
    for p, (t, lf, b, rt), pos in zip(proj, top.boxes[layer][r][keep], top.positions[layer][r][keep]):
        crop = p[:, t:b, lf:rt]                                                # (C, h, w)
        if pad and geo is not None:
            top_, left = geo["start"][0] + int(pos[0]) * geo["jump"][0], geo["start"][1] + int(pos[1]) * geo["jump"][1]
            canvas = torch.zeros((p.shape[0], *geo["rf"]), dtype=p.dtype)
            canvas[:, t - top_:b - top_, lf - left:rt - left] = crop
            crop = canvas
        out.append(crop)
    return out
