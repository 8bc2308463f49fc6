"""Backprop visualizations: one modified-gradient core, three rules for the ReLU (and ReLU6).

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

The same core gives ``layer_gradient(model, x, seed, at)``: a layer's output and the seeded gradient with
respect to it, the backward stopping there (Grad-CAM, ``units/gradcam.py``); and ``gradient_of``, the core for
images already checked (the batched SmoothGrad and Integrated Gradients, ``units/attribution.py``).

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

ReLU6 and other clamps. ReLU6 (MobileNet, EfficientNet-Lite) is ``clamp(x, 0, 6)``: a ReLU with a
second kink where it saturates. A clamp ``min(max(x, 0), hi)`` whose lower bound is **0** (``hi`` > 0,
or none) is a *capped rectifier*, and the two rules extend to it as follows (``g``: the incoming
signal, ``x``: the clamp's forward input):

* deconvnet: ``relu(g)``, as for the ReLU. Zeiler & Fergus's backward path takes nothing from the
  forward pass but the max-pooling switches: at a rectifier it rectifies the signal going down ("the
  reconstructions ... also should be positive") whatever the unit did. A unit saturated at ``hi`` is
  a strongly active one, and its reconstruction should show what drove it; zeroing it there would
  bring back a forward mask, which is what the deconvnet does not use. (A consequence: in a network
  without max pooling, such as EfficientNet-Lite, a class-score deconvnet projection does not depend
  on the image at all, the known weakness of deconvnets without switches, Mahendran & Vedaldi,
  "Salient deconvolutional networks", ECCV 2016.)
* guided backprop: ``g * (0 < x < hi) * (g > 0)``. Springenberg et al. define it as the gradient
  masked where *either* backprop or the deconvnet would block the signal; backprop's mask at a clamp
  is the clamp's own local derivative, 1 strictly inside ``(0, hi)``; the deconvnet's is ``g > 0``.
  At the kinks themselves (``x`` exactly 0 or ``hi``) the mask is 0, as the guided ReLU's ``x > 0``
  (PyTorch's own derivative there is 0 for ``hardtanh``/``relu6`` and 1 for ``clamp``).
* saliency keeps the plain gradient, ``g * (local derivative)``, as for every op.

So ``guided = deconvnet * (0 < x < hi)``, the same relation as for the ReLU, and ``clamp(x, min=0)``
(no upper bound) gets exactly the ReLU rules. Clamps whose lower bound is not 0 (``hardtanh``'s
default ``(-1, 1)``, ``clamp(x, -1, 1)``, ``clamp_max``), or is given as a tensor, are not
rectifiers -- their output has both signs, like tanh -- and keep their plain gradient.

How: during the forward a ``TorchFunctionMode`` routes every ReLU -- ``F.relu`` (what ``nn.ReLU``
calls), ``torch.relu``, ``Tensor.relu``, and the in-place ``relu_`` / ``F.relu(inplace=True)`` --
and every clamp with lower bound 0 -- ``F.relu6``, ``F.hardtanh`` (what ``nn.ReLU6`` and
``nn.Hardtanh`` call), ``F.hardtanh_``, ``torch.clamp`` / ``clip`` / ``clamp_min`` and their
``Tensor`` methods, each in place or not -- through an ``autograd.Function`` whose backward is the
rule, so the model may call them any way it likes (Captum's ``Deconvolution``/``GuidedBackprop`` hook
``nn.ReLU`` modules only and silently fall back to plain gradients for a functional ReLU or a ReLU6).
In-place calls stay in place for the code after them, and the forward values are the original op's.
Other nonlinearities (leaky ReLU, ELU, GELU, SiLU, tanh, sigmoid, the clamps above that are not
rectifiers) and everything else (BatchNorm, residual additions, average pooling, depthwise
convolutions) keep their plain gradient. The
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

__all__ = ["RULES", "modified_gradient", "layer_gradient", "saliency", "deconvnet", "guided_backprop",
           "unit_maxima", "top_projections"]

RULES = ("gradient", "deconvnet", "guided")


# ---- the ReLU rules ----------------------------------------------------------------------------------------

class _Deconv(torch.autograd.Function):
    """Forward: the rectifier ``run(x)`` (a ReLU, or a clamp with lower bound 0, upper bound ``hi``).
    Backward: ReLU of the incoming signal, ignoring the forward (Zeiler & Fergus; module docstring)."""

    @staticmethod
    def forward(ctx, x, run, hi, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
        return run(x)  # the original op: its exact forward values, in place where it was

    @staticmethod
    def backward(ctx, grad):
        return grad.clamp_min(0), None, None, None


class _Guided(torch.autograd.Function):
    """Forward: as :class:`_Deconv`. Backward: the gradient where it is positive and the forward input was
    strictly inside (0, hi) (Springenberg et al.; module docstring)."""

    @staticmethod
    def forward(ctx, x, run, hi, inplace: bool):
        if inplace:
            ctx.mark_dirty(x)
        out = run(x)
        ctx.save_for_backward(out)  # 0 < out < hi exactly where 0 < x < hi (what torch's relu saves too)
        ctx.hi = hi
        return out

    @staticmethod
    def backward(ctx, grad):
        (out,) = ctx.saved_tensors
        if ctx.hi is None:   # (x > 0) (g > 0): one new tensor, rectified in place
            grad = torch.ops.aten.threshold_backward(grad, out, 0)
        else:                # (0 < x < hi) (g > 0): hardtanh's own backward zeroes out <= 0 and out >= hi
            grad = torch.ops.aten.hardtanh_backward(grad, out, 0, ctx.hi)
        return grad.clamp_min_(0), None, None, None


_FUNCTIONS = {"deconvnet": _Deconv, "guided": _Guided}
_RELU = {F.relu, torch.relu, torch.Tensor.relu}
_RELU_ = {torch.relu_, torch.Tensor.relu_}  # F.relu_ is torch.relu_
# clamps: func -> (names of the bound arguments at positions 1, 2; default (lower, upper); in place (None:
# its ``inplace`` argument says))
_NN = torch._C._nn
_CLAMPS = {
    F.relu6: ((), (0.0, 6.0), None), _NN.relu6: ((), (0.0, 6.0), False), _NN.relu6_: ((), (0.0, 6.0), True),
    F.hardtanh: (("min_val", "max_val"), (-1.0, 1.0), None),
    _NN.hardtanh: (("min_val", "max_val"), (-1.0, 1.0), False),
    _NN.hardtanh_: (("min_val", "max_val"), (-1.0, 1.0), True),  # F.hardtanh_
    **{f: (("min", "max"), (None, None), False) for f in (torch.clamp, torch.Tensor.clamp, torch.clip,
                                                           torch.Tensor.clip)},
    **{f: (("min", "max"), (None, None), True) for f in (torch.clamp_, torch.Tensor.clamp_, torch.clip_,
                                                          torch.Tensor.clip_)},
    **{f: (("min",), (None, None), False) for f in (torch.clamp_min, torch.Tensor.clamp_min)},
    **{f: (("min",), (None, None), True) for f in (torch.clamp_min_, torch.Tensor.clamp_min_)},
}


def _arg(args, kwargs, i: int, name: str, default):
    return args[i] if len(args) > i else kwargs.get(name, default)


def _rectifier(func, args, kwargs) -> tuple[float | None, bool] | None:
    """(upper bound or None, in place) of a ReLU, or of a clamp whose lower bound is the number 0 (a
    capped rectifier); None for any other clamp (lower bound not 0 or a tensor, upper bound <= 0)."""
    if func in _RELU or func in _RELU_:
        return None, func in _RELU_ or (func is F.relu and bool(_arg(args, kwargs, 1, "inplace", False)))
    names, defaults, inplace = _CLAMPS[func]
    lo, hi = (_arg(args, kwargs, 1 + i, names[i], d) if i < len(names) else d for i, d in enumerate(defaults))
    if inplace is None:  # F.relu6 / F.hardtanh: their last argument
        inplace = bool(_arg(args, kwargs, 1 + len(names), "inplace", False))

    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if not (number(lo) and lo == 0 and (hi is None or (number(hi) and hi > 0))):
        return None
    return (None if hi is None or hi == math.inf else float(hi)), inplace


class _ReluRule(TorchFunctionMode):
    """Route every ReLU, and every clamp with lower bound 0, of the forward through the rule's
    autograd.Function (see the module docstring)."""

    def __init__(self, rule: str):
        super().__init__()
        self.function = _FUNCTIONS[rule]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU or func in _RELU_ or func in _CLAMPS:
            x = args[0] if args else kwargs.get("input")
            found = _rectifier(func, args, kwargs) if isinstance(x, torch.Tensor) and x.requires_grad else None
            if found is not None:
                rest = {k: v for k, v in kwargs.items() if k != "input"}

                def run(t):  # the original call on t
                    return func(t, *args[1:], **rest)
                return self.function.apply(x, run, *found)
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
    model = _checked_model(model, rule)
    return gradient_of(model, as_images(x, model), seed, rule=rule, layer=layer)


def layer_gradient(model: nn.Module, x, seed: Callable[[torch.Tensor], torch.Tensor], at: str, *,
                   rule: str = "gradient") -> tuple[torch.Tensor, torch.Tensor]:
    """(output, gradient) of layer ``at``: its output during the forward of ``x`` (its last call, for a module
    called more than once) and the gradient of the seeded model output with respect to it, (N, ...) each,
    detached. The backward stops at ``at``: nothing below it is differentiated. Both are of the layer's own
    output even when a later in-place op (``x.relu_()``) overwrites it. ``rule`` applies to the ReLUs above
    ``at``. Eval mode, the model left as found, as :func:`modified_gradient`.
    """
    model = _checked_model(model, rule)
    return gradient_of(model, as_images(x, model), seed, rule=rule, at=at)


def _checked_model(model, rule: str) -> nn.Module:
    if rule not in RULES:
        raise expect("rule", f"one of {RULES}", rule)
    if not isinstance(model, nn.Module):
        raise expect("model", "an nn.Module (or a Run / run directory)", type(model).__name__)
    scripted = scripted_path(model) if rule != "gradient" else None
    if scripted is not None:
        raise torchscript_error(scripted, f"the {rule!r} ReLU rule never runs inside TorchScript code (the result "
                                          "would be the plain gradient; saliency works on TorchScript)")
    return model


def gradient_of(model: nn.Module, x: torch.Tensor, seed: Callable[[torch.Tensor], torch.Tensor], *,
                rule: str = "gradient", layer: str | None = None, at: str | None = None):
    """The core of :func:`modified_gradient` (``at`` None) and :func:`layer_gradient` for images ``x`` already
    checked by ``as_images`` (batched methods check their images once, then feed it perturbed copies that
    may leave a Run's [0, 1] range: SmoothGrad's noise)."""
    if rule not in RULES:
        raise expect("rule", f"one of {RULES}", rule)
    module = resolve_hookable(model, layer)[1] if layer is not None else None
    tapped_module = resolve_hookable(model, at)[1] if at is not None else None
    captured: list[torch.Tensor] = []
    tapped: list = []

    def hook(_module, _args, output):
        captured.append(output)
        raise _Stop

    def tap(_module, _args, output):  # the layer's own output, before any in-place op after it; last call wins
        if isinstance(output, torch.Tensor) and output.requires_grad:
            tapped[:] = [output.detach().clone(), torch.autograd.graph.get_gradient_edge(output)]
        else:
            tapped[:] = [output, None]

    modes = [(m, m.training) for m in model.modules()]
    handles = [module.register_forward_hook(hook)] if module is not None else []
    if tapped_module is not None:
        handles.append(tapped_module.register_forward_hook(tap))
    try:
        model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().requires_grad_()  # a fresh leaf: the caller's tensor is untouched
            try:
                with forward_errors(model, x), _ReluRule(rule) if rule != "gradient" else nullcontext():
                    out = model(x)
            except _Stop:
                out = captured[0]
            if module is not None and not captured:
                raise InputError(f"layer {layer!r} did not run during the forward pass")
            out = _check_output(out, len(x), layer)
            if tapped_module is None:
                (grad,) = torch.autograd.grad(out, x, grad_outputs=seed(out.detach()), allow_unused=True)
                return torch.zeros_like(x) if grad is None else grad.detach()  # (N, C, H, W)
            value, edge = _tapped(tapped, at, len(x))
            (grad,) = torch.autograd.grad(out, [edge], grad_outputs=seed(out.detach()), allow_unused=True)
            return value, torch.zeros_like(value) if grad is None else grad.detach()  # (N, ...) each
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes:
            m.training = mode


def _tapped(tapped: list, at: str, n: int):
    if not tapped:
        raise InputError(f"layer {at!r} did not run during the forward pass")
    value, edge = tapped
    if not isinstance(value, torch.Tensor) or value.dim() < 2 or value.shape[0] != n:
        got = f"shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ShapeError(f"layer {at!r}'s output must be a tensor ({n}, ...) with one row per image; got {got}")
    if edge is None:
        raise InputError(f"layer {at!r}'s output does not depend on the input (no gradient flows to it)")
    return value, edge


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
    receptive-field size (at most the image's) filled with 0. Returns (C, h, w) tensors, best first, on the CPU.
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
    out = []
    for p, box, pos in zip(proj, top.boxes[layer][r][keep], top.positions[layer][r][keep]):
        t, lf, b, rt = box
        crop = p[:, t:b, lf:rt]                                                # (C, h, w)
        if pad and top.fields.get(layer) is not None:
            crop = top.padded(layer, crop, box, pos, p.shape[1:], 0.0)         # placed as TopPatches.crops does
        out.append(crop)
    return out
