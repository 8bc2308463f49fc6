"""Receptive fields: which input pixels can change one unit of a layer.

``receptive_field(model, "conv5_3", (0, 0))`` returns a :class:`~convlens.arch.geometry.Box`
(half-open, clipped to the image). Two methods that must agree:

* ``"analytic"`` -- the summary's op-by-op geometry (Araujo et al. 2019), which carries each unit's first
  and last pixel per axis, so border units are exact too (see :mod:`.geometry`);
* ``"probe"`` -- backpropagate the unit to the input and take the bounding box of the gradient's
  support: exact for any graph. A plain gradient would miss pixels (a max-pool routes it to one
  argmax per window, dead ReLUs drop it), so the probe linearizes the network first: parameters
  become positive constants (weights 1/fan-in, biases 0, BatchNorm statistics mean 0 / variance 1)
  through ``torch.func.functional_call`` -- the user's model is not modified -- and a
  ``TorchFunctionMode`` turns ReLU-like functions into the identity, max pooling into mean pooling
  of the same geometry (padding and ceil mode included), dropout off, softmax/normalizations into
  positive mixing, and subtraction/division into addition. Convolutions with the constant weights
  reduce to a channel sum and one box filter, which makes the probe cheap. After every op that can
  shrink a gradient it is reset to 0/1, so faint paths (the corners of a deep field) cannot underflow.
  The probe runs on the model's device in its dtype (float32 for half precision; CPU for a model on
  the meta device).

Both refuse a model with a TorchScript module: no hook and no ``TorchFunctionMode`` sees into compiled
code, so neither the trace nor the linearization could reach it.

For many units of one layer (top-9 patch cropping) use :func:`receptive_boxes` with a summary row.
"""
from __future__ import annotations

import re
from itertools import chain

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..errors import ConvLensError, InputError, ShapeError, expect
from ..layers import resolve
from ..taps import scripted_path, torchscript_error
from .geometry import Box, receptive_boxes  # noqa: F401  (receptive_boxes re-exported)
from .tracing import _bind, _pair, module_state, trace

METHODS = ("probe", "analytic")


def receptive_field(model: nn.Module | str, layer: str, unit_position: tuple[int, int],
                    input_size: tuple[int, int, int] | None = None, *, method: str = "probe") -> Box:
    """The input box that unit ``(row, col)`` of ``layer``'s output map sees, clipped to the image.

    ``model``: an ``nn.Module``, a zoo name or grammar spec, or a ``Run`` (its net, at the run's input
    shape: the normalization in front changes no receptive field). ``layer`` is a lecture name or module
    path (``"conv5_3"``, ``"features.28"``), or the class name of a bare layer (``"Conv2d"``); append
    ``" (2)"`` for the second call of a module called twice. ``input_size`` (C, H, W) defaults to the
    run's or the model's.
    """
    from .summary import _check_size, _model_and_size, summary

    if method not in METHODS:
        raise expect("method", f"one of {METHODS}", method)
    if input_size is not None:
        input_size = _check_size(input_size)
    model, _, input_size = _model_and_size(model, input_size,
                                           "e.g. receptive_field(model, layer, (0, 0), (3, 224, 224))")
    m = re.fullmatch(r"(.*) \((\d+)\)", str(layer))
    name, call = (m.group(1), int(m.group(2))) if m else (str(layer), 1)
    if name == type(model).__name__ and next(model.children(), None) is None:
        path, module = "", model  # a bare layer: its own row
    else:
        path, module = resolve(model, name)
    if method == "analytic":
        rows = [r for r in summary(model, input_size).rows[1:] if r.path == path and r.call == call]
        if not rows:
            raise InputError(f"layer {layer} is not called {call} time(s) in the forward pass")
        row = rows[0]
        _check_position(unit_position, layer, row.output_shape[:2])
        if row.geometry is None:
            raise ShapeError(f"the receptive field of layer {layer} cannot be computed analytically (an op such as "
                             "interpolate, flip or a transposed convolution lies on its path, or a sum of branches "
                             "one of which has units that see nothing); use method='probe'")
        return row.geometry.box(*unit_position, input_size[1:])
    return _probe(model, module, call, str(layer), unit_position, input_size)


def _check_position(pos, layer: str, hw) -> tuple[int, int]:
    h, w = int(hw[0]), int(hw[1])
    ok = (isinstance(pos, (tuple, list)) and len(pos) == 2
          and all(isinstance(v, int) and not isinstance(v, bool) for v in pos)
          and 0 <= pos[0] < h and 0 <= pos[1] < w)
    if not ok:
        raise expect("unit_position", f"a (row, col) inside {layer}'s {h}x{w} output map "
                                      f"(rows 0-{h - 1}, cols 0-{w - 1})", pos)
    return pos[0], pos[1]


# -- the probe ---------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the capture hook: nothing after the probed layer needs to run."""


def _probe(model: nn.Module, module: nn.Module, call: int, layer: str, pos, input_size) -> Box:
    scripted = scripted_path(model)
    if scripted is not None:
        raise torchscript_error(scripted, "the probe's linearization (ReLU as the identity, max pooling as mean "
                                          "pooling) cannot reach into compiled code, so its box could miss pixels")
    ref = next(chain(model.parameters(), model.buffers()), None)
    device = ref.device if ref is not None and not ref.is_meta else torch.device("cpu")
    dtype = ref.dtype if ref is not None and ref.dtype in (torch.float32, torch.float64) else torch.float32
    state = _positive_state(model, device, dtype)
    x = torch.ones(1, *input_size, device=device, dtype=dtype, requires_grad=True)  # (1, C, H, W)
    seen: list[torch.Tensor] = []

    def hook(_module, _args, output):
        seen.append(next(t for t in tree_leaves(output) if isinstance(t, torch.Tensor)))
        if len(seen) == call:
            raise _Stop

    modes = {m: m.training for m in model.modules()}
    handle = module.register_forward_hook(hook)
    failure = None
    try:
        model.eval()
        with torch.enable_grad(), _Linearize():
            torch.func.functional_call(model, state, (x,), tie_weights=False)
    except _Stop:
        pass
    except ConvLensError:
        raise
    except Exception as err:  # noqa: BLE001  (named below)
        failure = err
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.train(mode)
    if failure is not None:
        trace(model, input_size)  # a forward that does not fit the input: the trace names the layer
        raise failure
    if len(seen) < call:
        raise InputError(f"layer {layer} is called {len(seen)} time(s) in the forward pass, not {call}")
    out = seen[call - 1]
    hw = (out.shape[2], out.shape[3]) if out.dim() == 4 else (1, out.shape[2] if out.dim() == 3 else 1)
    r, c = _check_position(pos, layer, hw)
    unit = out[0, :, r, c] if out.dim() == 4 else out[0, :, c] if out.dim() == 3 else out[0]
    if not unit.requires_grad:
        return Box(0, 0, 0, 0)  # the unit does not depend on the input at all
    (grad,) = torch.autograd.grad(unit.sum(), x, allow_unused=True)
    if grad is None:
        return Box(0, 0, 0, 0)
    support = grad[0].ne(0).any(0)                                 # (H, W)
    rows, cols = support.any(1).nonzero().flatten(), support.any(0).nonzero().flatten()
    if rows.numel() == 0:
        return Box(0, 0, 0, 0)
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


def _positive_state(model: nn.Module, device, dtype) -> dict[str, torch.Tensor]:
    """Positive stand-ins for every parameter and BN statistic, as stride-0 views (no full copy)."""
    def const(value, shape):
        return torch.full((), value, device=device, dtype=dtype).expand(shape)

    def stand_in(name: str, t: torch.Tensor):
        leaf = name.rsplit(".", 1)[-1]
        if isinstance(t, nn.Parameter):
            return const(0.0 if leaf.endswith("bias") else 1.0 / max(t.shape[1:].numel(), 1) if t.dim() >= 2 else 1.0,
                         t.shape)
        if leaf in ("running_mean", "running_var"):
            return const(0.0 if leaf == "running_mean" else 1.0, t.shape)
        if t.is_meta:
            return torch.zeros(t.shape, device=device, dtype=t.dtype if not t.is_floating_point() else dtype)
        return None

    return module_state(model, stand_in)


def _binarize(grad: torch.Tensor) -> torch.Tensor:
    """Gradient hook: pass on only *where* the gradient is non-zero (as 0/1), so nothing underflows."""
    return grad.sign()  # every derivative of the linearized net is >= 0, so sign() is 0 or 1


IDENTITY = {
    "relu", "relu6", "leaky_relu", "rrelu", "elu", "selu", "celu", "gelu", "silu", "mish", "hardswish",
    "hardsigmoid", "hardtanh", "sigmoid", "tanh", "softplus", "softsign", "tanhshrink", "threshold", "logsigmoid",
    "prelu", "clamp", "clip", "clamp_min", "clamp_max", "dropout", "dropout1d", "dropout2d", "dropout3d",
    "alpha_dropout", "feature_alpha_dropout", "local_response_norm", "neg", "negative",
}
# ops that cannot shrink a gradient: no need to renormalize after them
PASS_THROUGH = IDENTITY | {
    "add", "iadd", "radd", "cat", "concat", "concatenate", "stack", "view", "view_as", "reshape", "flatten",
    "unflatten", "contiguous", "clone", "getitem", "permute", "transpose", "squeeze", "unsqueeze", "expand",
    "expand_as", "narrow", "split", "chunk", "to", "float", "detach", "pad",
}
CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
# op -> which argument gets a negative derivative (made an addition when it carries the probe)
NEGATIVE_ARG = {"sub": 1, "subtract": 1, "isub": 1, "rsub": 0, "div": 1, "divide": 1, "true_divide": 1,
                "truediv": 1, "itruediv": 1, "rtruediv": 0, "rdiv": 0}


class _Linearize(TorchFunctionMode):
    """Replace each op by a linear one with non-negative derivatives and the same connectivity."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        raw = getattr(func, "__name__", "")
        out = self.replace(raw, raw.strip("_"), func, args, kwargs)
        if out is NotImplemented:
            out = func(*args, **kwargs)
        if (isinstance(out, torch.Tensor) and out.requires_grad and out.is_floating_point()
                and raw.strip("_") not in PASS_THROUGH):
            out.register_hook(_binarize)
        return out

    def replace(self, raw: str, name: str, func, args, kwargs):
        x = args[0] if args else kwargs.get("input")
        if not isinstance(x, torch.Tensor):
            return NotImplemented
        in_place = raw.endswith("_") and not raw.startswith("__") or kwargs.get("inplace") is True
        if name in IDENTITY:
            return x if in_place else x.clone()
        if name in NEGATIVE_ARG:
            other = args[1] if len(args) > 1 else kwargs.get("other")
            neg = (x, other)[NEGATIVE_ARG[name]]
            if isinstance(neg, torch.Tensor) and neg.requires_grad:
                return x.add_(other) if in_place or name.startswith("i") else x + other
            return NotImplemented
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if name == "conv2d" and _constant(weight):
            _, _, _, s, p, d, g = _bind(args, kwargs, CONV_ARGS, {"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
            return _constant_conv(x, weight, s, p, d, g)
        if name == "linear" and _constant(weight):
            return _constant_linear(x, weight)
        if name in ("max_pool2d", "max_pool2d_with_indices"):
            _, k, s, p, d, ceil, ret = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation",
                                                            "ceil_mode", "return_indices"),
                                             {"padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False})
            k = _pair(k)
            s = k if s is None or (not isinstance(s, int) and len(s) == 0) else _pair(s)
            pooled = _box(x, k, s, _pair(p), _pair(d), bool(ceil))
            if ret or name == "max_pool2d_with_indices":
                with torch.no_grad():
                    return pooled, func(*args, **kwargs)[1]
            return pooled
        if name in ("adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
            _, size, ret = _bind(args, kwargs, ("input", "output_size", "return_indices"), {"return_indices": False})
            pooled = F.adaptive_avg_pool2d(x, size)
            if ret or name.endswith("with_indices"):
                with torch.no_grad():
                    return pooled, func(*args, **kwargs)[1]
            return pooled
        if name in ("amax", "amin"):
            _, dim, keepdim = _bind(args, kwargs, ("input", "dim", "keepdim"), {"dim": (), "keepdim": False})
            dims = tuple(range(x.dim())) if dim in ((), [], None) else dim
            return x.mean(dims, keepdim=bool(keepdim))
        if name in ("max", "min"):
            other = args[1] if len(args) > 1 else kwargs.get("other", kwargs.get("dim"))
            if isinstance(other, torch.Tensor):
                return x + other
            if other is None:
                return x.mean()
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            with torch.no_grad():
                found = func(*args, **kwargs)                         # (values, indices)
            return type(found)((x.mean(other, keepdim=keepdim), found[1]))
        if name in ("softmax", "log_softmax", "normalize"):
            dim = args[1] if len(args) > 1 and isinstance(args[1], int) else kwargs.get("dim", 1)
            return x + x.mean(dim, keepdim=True)
        if name == "layer_norm":
            shape = args[1] if len(args) > 1 else kwargs["normalized_shape"]
            n = 1 if isinstance(shape, int) else len(shape)
            return x + x.mean(tuple(range(-n, 0)), keepdim=True)
        if name == "group_norm":
            groups = args[1] if len(args) > 1 else kwargs["num_groups"]
            g = x.reshape(x.shape[0], groups, -1).mean(-1)          # (N, G)
            g = g.repeat_interleave(x.shape[1] // groups, 1)        # (N, C)
            return x + g.reshape(*g.shape, *([1] * (x.dim() - 2)))
        if name == "instance_norm":
            return x + x.mean(tuple(range(2, x.dim())), keepdim=True)
        if name == "batch_norm":
            training = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias", "training"),
                             {"training": False})[5]
            if training:
                return x + x.mean((0, *range(2, x.dim())), keepdim=True)
        return NotImplemented


def _constant(w) -> bool:
    """A stand-in weight of ``_positive_state``: one value broadcast over the whole shape."""
    return isinstance(w, torch.Tensor) and w.dim() >= 2 and all(st == 0 for st in w.stride())


def _constant_conv(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation, groups) -> torch.Tensor:
    """``conv2d`` with a constant weight, computed cheaply: sum the channels of each group, then one
    box filter per group (the bias, a zero stand-in, is left out). Same connectivity, a fraction of the cost."""
    n, c, h, wd = x.shape
    k, d = tuple(w.shape[-2:]), _pair(dilation)
    if isinstance(padding, str):  # 'same' pads the odd pixel at the end, like PyTorch
        total = [d[i] * (k[i] - 1) if padding == "same" else 0 for i in range(2)]
        x = F.pad(x, (total[1] // 2, total[1] - total[1] // 2, total[0] // 2, total[0] - total[0] // 2))
        padding = 0
    xs = x.reshape(n, groups, c // groups, *x.shape[2:]).sum(2) * float(w[(0,) * w.dim()])  # (N, G, H, W)
    y = _box(xs, k, _pair(stride), _pair(padding), d, False)                  # (N, G, H', W')
    return y.repeat_interleave(w.shape[0] // groups, dim=1)                    # (N, C_out, H', W')


def _constant_linear(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``linear`` with a constant weight: every output is the (scaled) sum of the inputs."""
    y = x.sum(-1, keepdim=True) * float(w[0, 0])                              # (..., 1)
    return y.repeat(*([1] * (x.dim() - 1)), w.shape[0])                       # (..., out_features)


def _box(x: torch.Tensor, k, s, p, d, ceil: bool) -> torch.Tensor:
    """Zero-padded box filter (window mean) with pooling's window rule (kernel, stride, padding,
    dilation, ceil mode): avg_pool2d where it applies (fast), else a depthwise convolution with a
    dilated kernel of ones.  (N, C, H', W')"""
    if d == (1, 1):
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:  # avg_pool2d allows at most half the kernel
            x, p = F.pad(x, (p[1], p[1], p[0], p[0])), (0, 0)
        return F.avg_pool2d(x, k, s, p, ceil_mode=ceil, count_include_pad=True)
    sizes = [_pool_len(x.shape[2 + i], k[i], s[i], p[i], d[i], ceil) for i in range(2)]
    extra = [max(0, (sizes[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - (x.shape[2 + i] + 2 * p[i])) for i in range(2)]
    padded = F.pad(x, (p[1], p[1] + extra[1], p[0], p[0] + extra[0]))       # (N, C, H+.., W+..)
    ones = x.new_full((x.shape[1], 1, *k), 1.0 / (k[0] * k[1]))             # (C, 1, kh, kw) depthwise
    return F.conv2d(padded, ones, stride=s, dilation=d, groups=x.shape[1])[..., :sizes[0], :sizes[1]]


def _pool_len(n: int, k: int, s: int, p: int, d: int, ceil: bool) -> int:
    """PyTorch's pooling output length (``pooling_output_shape``)."""
    span = n + 2 * p - d * (k - 1) - 1
    out = (span + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out

