"""A model evaluated with its piecewise-linear activations made smooth, for second-order analyses.

A network of ReLUs, max pooling, convolutions and affine layers is piecewise linear in its input: its
input Hessian is exactly zero almost everywhere, and a second-order analysis of it (the invariances of
an optimal stimulus, :mod:`convlens.synthesis.invariances`) sees no curvature at all. The documented
remedy is to analyse a copy whose ReLUs are softplus with a large β,

    softplus_β(x) = log(1 + e^{βx}) / β       (≤ ln 2 / β from relu(x); taken equal to it for |βx| > 20)

which keeps the function (within ln 2 / β per unit) and gives it a curvature of width ~1/β at each kink.

``Smoothed(model, beta)`` is that copy without copying anything: it shares the model's modules and
runs its forward under a ``TorchFunctionMode`` that replaces, wherever they are called (``nn.ReLU``,
``F.relu``, ``x.relu_()``, inside ``nn.Sequential`` or in a hand-written ``forward``):

=======================================  ==================================================================
``relu``, ``relu_``                      softplus_β(x)
``relu6``, ``hardtanh(lo, hi)``          the smooth clamp lo + softplus_β(x - lo) - softplus_β(x - hi)
                                         (ReLU6 = clamp to [0, 6]: EfficientNet-Lite, MobileNet)
``clamp``/``clip`` (number bounds)       the same smooth clamp (one-sided: lo + softplus_β(x - lo), or
                                         hi - softplus_β(hi - x))
``leaky_relu(a)``                        a x + (1 - a) softplus_β(x)
=======================================  ==================================================================

``depthwise_shifts=True`` also computes each depthwise convolution (``groups`` = input channels) as a
sum of k² shifted products, the same numbers to rounding: PyTorch's double backward of a grouped
convolution loops over the groups on CPU (13x slower than the shifts on a 672-channel 5x5 layer), and
Hessian-vector products are double backward (EfficientNet, MobileNet). ``beta=None`` then smooths nothing.

In-place forms stay in place (the smooth value is written into the tensor). Max pooling is *not*
smoothed: it selects one input per window, so between the (measure-zero) switches of the max it is
linear and passes on the curvature of the smoothed units below it. ``replaced`` counts the ops replaced
in the last forward (e.g. ``{"relu": 3}``): empty for a model that is smooth already (tanh, softplus,
GELU ...), which is then analysed exactly as it is. TorchScript modules are refused (no mode sees into
compiled code). The weights, modes, hooks and ``requires_grad`` of the model are never touched.
"""
from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import expect

__all__ = ["Smoothed", "BETA", "smooth_relu", "smooth_clamp"]

BETA = 10.0  # softplus_β of the smoothed copy: within ln 2 / 10 ≈ 0.07 of relu, curvature width ~0.1


def smooth_relu(x: torch.Tensor, beta: float) -> torch.Tensor:
    """softplus_β(x) = log(1 + e^{βx}) / β; x where βx > 20, exactly 0 where βx < -20 (there it is below
    e^-20 / β: zero keeps float32 derivatives from sinking into denormal numbers, 100x slower on CPUs)."""
    y = F.softplus(x.clamp_min(-20.0 / beta), beta=beta, threshold=20.0)
    return torch.where(x * beta < -20.0, torch.zeros((), dtype=y.dtype, device=y.device), y)


def smooth_clamp(x: torch.Tensor, lo: float | None, hi: float | None, beta: float) -> torch.Tensor:
    """clamp(x, lo, hi) with smooth corners: lo + softplus_β(x - lo) - softplus_β(x - hi); a bound may be None."""
    if lo is None and hi is None:
        return x.clone()
    if hi is None:
        return lo + smooth_relu(x - lo, beta)
    if lo is None:
        return hi - smooth_relu(hi - x, beta)
    return lo + smooth_relu(x - lo, beta) - smooth_relu(x - hi, beta)


class Smoothed(nn.Module):
    """``model`` evaluated with its ReLU-like ops replaced by smooth ones (see the module docstring; ``beta=None``:
    none). Shares the model (no copy); layer names resolve as in ``model`` (``wraps``)."""

    wraps = "net"

    def __init__(self, net: nn.Module, beta: float | None = BETA, *, depthwise_shifts: bool = False):
        super().__init__()
        if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0):
            raise expect("beta", "a positive number (softplus sharpness)", beta)
        from ..taps import scripted_path, torchscript_error

        scripted = scripted_path(net)
        if scripted is not None:
            raise torchscript_error(scripted, "its ReLUs cannot be smoothed: no TorchFunctionMode sees into "
                                              "compiled code")
        self.net = net
        self.beta = None if beta is None else float(beta)
        self.depthwise_shifts = bool(depthwise_shifts)
        self.input_shape = getattr(net, "input_shape", None)
        self.class_names = getattr(net, "class_names", None)
        self.replaced: Counter = Counter()
        self.training = net.training  # not .train(): that would set every module of the net alike

    def forward(self, *args, **kwargs):
        self.replaced = Counter()
        with _SmoothMode(self.beta, self.replaced, self.depthwise_shifts):
            return self.net(*args, **kwargs)


_RELU = {"relu", "relu_"}
_CLAMP = {"clamp", "clamp_", "clip", "clip_"}
_HARDTANH = {"hardtanh", "hardtanh_", "relu6"}


class _SmoothMode(TorchFunctionMode):
    """Replaces ReLU-like functions by their smooth versions (see the module docstring)."""

    def __init__(self, beta: float | None, counts: Counter, shifts: bool = False):
        super().__init__()
        self.beta, self.counts, self.shifts = beta, counts, shifts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            return func(*args, **kwargs)
        if name == "conv2d" and self.shifts:
            y = _depthwise(*args, **kwargs)
            return func(*args, **kwargs) if y is None else y
        if self.beta is None:
            return func(*args, **kwargs)
        in_place = name.endswith("_") or kwargs.get("inplace") is True
        if name in _RELU:
            y = smooth_relu(x.clone() if in_place else x, self.beta)
        elif name in _HARDTANH:
            lo, hi = (0.0, 6.0) if name == "relu6" else (_arg(args, kwargs, 1, "min_val", -1.0),
                                                         _arg(args, kwargs, 2, "max_val", 1.0))
            y = smooth_clamp(x.clone() if in_place else x, float(lo), float(hi), self.beta)
        elif name in _CLAMP:
            lo, hi = _arg(args, kwargs, 1, "min", None), _arg(args, kwargs, 2, "max", None)
            if isinstance(lo, torch.Tensor) or isinstance(hi, torch.Tensor) or (lo is None and hi is None):
                return func(*args, **kwargs)                                   # tensor bounds: left as they are
            y = smooth_clamp(x.clone() if in_place else x, lo, hi, self.beta)
        elif name in ("leaky_relu", "leaky_relu_"):
            a = float(_arg(args, kwargs, 1, "negative_slope", 0.01))
            z = x.clone() if in_place else x
            y = a * z + (1 - a) * smooth_relu(z, self.beta)
        else:
            return func(*args, **kwargs)
        self.counts[name.rstrip("_") or name] += 1
        return x.copy_(y) if in_place else y


def _depthwise(x, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """A depthwise conv2d (groups = input channels, any channel multiplier) as Σ_ij w[:, 0, i, j] x_shifted;
    None for any other convolution (or a padding given as a string)."""
    if groups == 1 or x.ndim != 4 or groups != x.shape[1] or weight.shape[1] != 1 or isinstance(padding, str):
        return None
    (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (stride, padding, dilation))
    kh, kw = weight.shape[2:]
    m = weight.shape[0] // groups
    if m > 1:
        x = x.repeat_interleave(m, dim=1)                                       # (N, C m, H, W)
    h_out = (x.shape[2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (x.shape[3] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = F.pad(x, (pw, pw, ph, ph))
    out = None
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh:i * dh + sh * (h_out - 1) + 1:sh, j * dw:j * dw + sw * (w_out - 1) + 1:sw]
            term = patch * weight[:, 0, i, j].reshape(1, -1, 1, 1)              # (N, C m, H', W')
            out = term if out is None else out + term
    return out if bias is None else out + bias.reshape(1, -1, 1, 1)


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _arg(args, kwargs, i: int, key: str, default):
    return args[i] if len(args) > i else kwargs.get(key, default)
