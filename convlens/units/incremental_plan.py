"""The plan of incremental occlusion (:mod:`.incremental`): which box of every layer each occluder
position changes, and how each op of the recorded forward (:mod:`.opgraph`) is re-run.

Planned once for all positions, op by op: a convolution or pooling layer changes only the output
units whose window touches the changed box of its input (the box grows by the kernel and shrinks by
the stride): a ``"window"`` step, re-run on windows with the op's zero / -inf padding made explicit.
A constant ``F.pad`` (TensorFlow's ``SAME`` padding, as ``TFSameConv2d`` pads before its convolution)
is a window of one tap whose padding is its own widths, so it shifts the box and keeps it local.
An element-wise op (ReLU, eval-mode BatchNorm, a residual add, concatenation along channels)
changes the union of its inputs' boxes: a ``"pointwise"`` step; an eval-mode ``F.batch_norm`` of a
convolution's output that nothing else reads is folded into the convolution (an ``"alias"`` step).
Any other op, and every op after a box covers ``rho`` of its map, is a ``"generic"`` step on whole
maps. A box has one size per layer for all positions (a box near the border is moved inward).

Approximate mode (Krypton's projective-field threshold ``tau``): a layer's box may grow beyond what
the stride alone gives only up to ``tau`` of the map (per axis), centred on the true box; changes
outside it are dropped (taken as unoccluded). Smaller ``tau`` is faster and less exact.
``Incremental.kept`` (P,) says how much each position kept: per cut box, the share of the units the
position may change that lie inside it, multiplied over the layers; 1 means nothing was dropped, so
that position is exact. The caller verifies the others (:mod:`.occlusion`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_unflatten

from .opgraph import Graph, Op, Ref

POINTWISE = {
    "relu", "relu_", "relu6", "relu6_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_",
    "gelu", "silu", "mish", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "softplus", "softsign", "logsigmoid", "threshold", "threshold_", "clamp", "clamp_", "clip", "clip_", "clamp_min",
    "clamp_min_", "clamp_max", "clamp_max_", "abs", "abs_", "neg", "neg_", "exp", "exp_", "log", "log_", "sqrt",
    "sqrt_", "rsqrt", "square",
    "pow", "pow_", "sign", "erf", "expm1", "log1p", "reciprocal", "add", "add_", "sub", "sub_", "mul", "mul_", "div",
    "div_", "true_divide", "maximum", "minimum", "where", "gt", "lt", "ge", "le", "eq", "ne",
    "__add__", "__radd__", "__iadd__", "__sub__", "__rsub__", "__isub__", "__mul__", "__rmul__", "__imul__",
    "__truediv__", "__rtruediv__", "__itruediv__", "__neg__", "__pow__", "__rpow__", "__abs__", "__gt__", "__lt__",
    "__ge__", "__le__", "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as",
}
CHANNELWISE = {"batch_norm", "local_response_norm"}  # per-channel constants; spatially point-wise
DROPOUTS = {"dropout", "dropout_", "dropout2d", "alpha_dropout", "feature_alpha_dropout"}
CATS = {"cat", "concat", "concatenate"}


@dataclass
class Region:
    """The box of a map each position may change: ``lo`` (P, 2) top-left (row, col), one ``size`` for all."""

    lo: np.ndarray
    size: tuple[int, int]
    hw: tuple[int, int]

    @property
    def full(self) -> bool:
        return self.size == self.hw

    @classmethod
    def whole(cls, hw, n: int) -> "Region":
        return cls(np.zeros((n, 2), dtype=np.int64), tuple(hw), tuple(hw))


@dataclass
class Window:
    """A convolution or pooling re-run on windows: kernel, stride, dilation per axis, explicit padding."""

    k: tuple[int, int]
    s: tuple[int, int]
    d: tuple[int, int]
    pad: tuple[int, int, int, int]  # top, bottom, left, right
    fill: float
    run: Callable                   # (B, C, h', w') window -> (B, C', h, w)
    full: Callable | None = None    # a convolution on whole maps, with its own padding (None: the op itself)
    conv: tuple | None = None       # a convolution's (weight, bias, stride, padding, dilation, groups)


@dataclass
class Step:
    op: int
    kind: str                       # "window", "pointwise", "generic" or "alias" (a batch norm folded away)
    window: Window | None = None
    crop: tuple[int, ...] = ()      # leaf positions of constant full-size maps to crop to the region
    source: int | None = None       # "alias": the node whose value is this op's output


def _conv(w, b, s, p, d, groups) -> Callable:
    """A convolution fed channels-last maps (oneDNN's depthwise and dense CPU kernels run 1.3-1.7x faster so)."""
    return lambda t: torch.conv2d(t.contiguous(memory_format=torch.channels_last), w, b, s, p, d, groups)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _bind(args, kwargs, names, defaults) -> list:
    values = dict(zip(names, args))
    values.update(kwargs)
    return [values.get(n, defaults.get(n)) for n in names]


class Plan:
    """Which box of every layer each occluder position changes, and how each op is re-run (module docstring)."""

    def __init__(self, graph: Graph, positions: np.ndarray, window: int, *, rho: float = 0.75,
                 tau: float | None = None):
        self.g, self.nodes = graph, graph.nodes
        self.positions, self.rho, self.tau = np.asarray(positions, dtype=np.int64), rho, tau
        hw = tuple(self.nodes[graph.input].base.shape[-2:])
        self.box = (min(window, hw[0]), min(window, hw[1]))
        self.kept = np.ones(len(self.positions))  # (P,) share of its changed units each position keeps (tau)
        self.regions: dict[int, Region] = {graph.input: self._threshold(Region(self.positions.copy(), self.box, hw))}
        self.steps = [self._plan(i, op) for i, op in enumerate(graph.ops) if op.dynamic]
        self._fold_batch_norms()
        self.last_use: dict[int, int] = {}  # node -> the last step that reads it (the runner then drops it)
        for j, step in enumerate(self.steps):
            for _, node in graph.ops[step.op].refs():
                self.last_use[node] = j

    @property
    def local_ops(self) -> int:
        return sum(s.kind != "generic" and not self.regions[self.g.ops[s.op].outputs[0]].full for s in self.steps)

    # ---- planning ---------------------------------------------------------------------------------
    def _fold_batch_norms(self) -> None:
        """An eval-mode ``F.batch_norm`` of a convolution's output that nothing else reads is folded into the
        convolution (weight x gamma / sqrt(var + eps), the bias shifted to match), and its step passes the
        convolution's patches on (``"alias"``): otherwise it costs a pass over every patch, as a ReLU does."""
        made, readers = {}, Counter()
        for j, step in enumerate(self.steps):
            op = self.g.ops[step.op]
            readers.update({n for _, n in op.refs()})
            made.update((n, j) for n in op.outputs)
        for j, step in enumerate(self.steps):
            op = self.g.ops[step.op]
            if step.kind != "pointwise" or op.func is not F.batch_norm:
                continue
            args, kwargs = tree_unflatten(op.leaves, op.spec)
            x, mean, var, gamma, beta, _, _, eps = _bind(
                args, kwargs, ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps"),
                {"weight": None, "bias": None, "momentum": 0.1, "eps": 1e-5})
            if not isinstance(x, Ref) or x.node in (self.g.layer, self.g.output) or readers[x.node] != 1 \
                    or any(self.dynamic(v) for v in (mean, var, gamma, beta)):
                continue
            win = self.steps[made[x.node]].window if x.node in made else None
            if win is None or win.conv is None:
                continue
            w, b, s, p, d, groups = win.conv
            scale = 1.0 / torch.sqrt(self.value(var).double() + eps)
            if gamma is not None:
                scale = scale * self.value(gamma).double()
            shift = -self.value(mean).double() * scale
            if beta is not None:
                shift = shift + self.value(beta).double()
            if b is not None:
                shift = shift + b.double() * scale
            w, b = (w.double() * scale.view(-1, 1, 1, 1)).to(w.dtype), shift.to(w.dtype)
            win.conv = (w, b, s, p, d, groups)
            win.run, win.full = _conv(w, b, s, 0, d, groups), _conv(*win.conv)
            self.steps[j] = Step(step.op, "alias", source=x.node)

    def _threshold(self, r: Region) -> Region:
        if r.full or r.size[0] * r.size[1] >= self.rho * r.hw[0] * r.hw[1]:
            return Region.whole(r.hw, len(r.lo))
        return r

    def dynamic(self, leaf) -> bool:
        """Does ``leaf`` (an argument of an op) depend on the image?"""
        return isinstance(leaf, Ref) and self.nodes[leaf.node].dynamic

    def value(self, leaf):
        """``leaf``'s unoccluded value (the recorded one for a node of the graph)."""
        return self.nodes[leaf.node].base if isinstance(leaf, Ref) else leaf

    def _spatial(self, leaf) -> bool:
        """A dynamic 4-D map of one image (patches apply)."""
        return self.dynamic(leaf) and self.nodes[leaf.node].base.dim() == 4 and len(self.nodes[leaf.node].base) == 1

    def _plan(self, index: int, op: Op) -> Step:
        step = None
        if len(op.outputs) == 1:
            out = self.nodes[op.outputs[0]].base
            if out.dim() == 4 and out.shape[0] == 1:
                args, kwargs = tree_unflatten(op.leaves, op.spec)
                step = self._plan_window(index, op, args, kwargs, out) or self._plan_pointwise(index, op, out)
        return step or Step(index, "generic")

    def _plan_window(self, index, op, args, kwargs, out) -> Step | None:
        name, x, conv = op.name, (args[0] if args else kwargs.get("input")), None
        if not self._spatial(x):
            return None
        if any(self.dynamic(leaf) for leaf in op.leaves if leaf is not x):
            return None
        n_in, n_out = tuple(self.nodes[x.node].base.shape[-2:]), tuple(out.shape[-2:])
        if name == "conv2d":
            _, w, b, s, p, d, groups = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation",
                                                            "groups"), {"stride": 1, "padding": 0, "dilation": 1,
                                                                        "groups": 1})
            w, b, k, s, d = self.value(w), self.value(b), tuple(self.value(w).shape[-2:]), _pair(s), _pair(d)
            conv = (w, b, s, p, d, groups)  # the padding as given, for whole maps
            if isinstance(p, str):
                total = [d[i] * (k[i] - 1) if p == "same" else 0 for i in range(2)]
                p = (total[0] // 2, total[1] // 2)
            p = _pair(p)
            run = _conv(w, b, s, 0, d, groups)
            fill = 0.0
        elif name in ("max_pool2d", "_max_pool2d", "max_pool2d_with_indices"):
            _, k, s, p, d, _, ret = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding", "dilation",
                                                         "ceil_mode", "return_indices"),
                                          {"padding": 0, "dilation": 1, "return_indices": False})
            if ret:
                return None
            k, p, d = _pair(k), _pair(p), _pair(d)
            s = k if s is None or (not isinstance(s, int) and len(s) == 0) else _pair(s)
            run = lambda t, k=k, s=s, d=d: F.max_pool2d(t, k, s, 0, d)  # noqa: E731
            fill = -math.inf
        elif name == "avg_pool2d":
            _, k, s, p, _, include, divisor = _bind(args, kwargs, ("input", "kernel_size", "stride", "padding",
                                                                   "ceil_mode", "count_include_pad",
                                                                   "divisor_override"),
                                                    {"padding": 0, "count_include_pad": True})
            k, p = _pair(k), _pair(p)
            s = k if s is None or (not isinstance(s, int) and len(s) == 0) else _pair(s)
            overhang = any((n_out[i] - 1) * s[i] + k[i] > n_in[i] + 2 * p[i] for i in range(2))
            if overhang or (max(p) > 0 and not include and divisor is None):
                return None  # divisors at the border that an explicit window cannot reproduce
            run = lambda t, k=k, s=s, dv=divisor: F.avg_pool2d(t, k, s, 0, False, True, dv)  # noqa: E731
            fill, d = 0.0, (1, 1)
        elif name == "adaptive_avg_pool2d":
            if any(n_in[i] % n_out[i] for i in range(2)):
                return None  # windows of varying size
            k = s = (n_in[0] // n_out[0], n_in[1] // n_out[1])
            run = lambda t, k=k: F.adaptive_avg_pool2d(t, (t.shape[-2] // k[0], t.shape[-1] // k[1]))  # noqa: E731
            p, d, fill = (0, 0), (1, 1), 0.0
        elif name == "pad":  # constant padding (TensorFlow's SAME before a convolution): a 1-tap window
            _, widths, mode, value = _bind(args, kwargs, ("input", "pad", "mode", "value"),
                                           {"mode": "constant", "value": None})
            widths = [int(v) for v in widths]
            if mode != "constant" or len(widths) not in (2, 4) or min(widths) < 0:
                return None  # reflect/replicate/circular padding copies pixels; a negative width crops
            left, right, top, bottom = widths + [0] * (4 - len(widths))
            k = s = d = (1, 1)
            p, fill = (top, left), 0.0 if value is None else float(value)
            run = lambda t: t  # noqa: E731  (the window, gathered with the fill around it, is the output)
        else:
            return None
        pad = []
        for i in range(2):
            need = (n_out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1  # padded rows the op reads
            pad += [p[i], max(0, need - n_in[i] - p[i])]
        win = Window(k, s, d, (pad[0], pad[1], pad[2], pad[3]), fill, run)
        if conv is not None:
            win.conv, win.full = conv, _conv(*conv)
        self.regions[op.outputs[0]] = self._window_region(self.regions.get(x.node), win, n_out)
        return Step(index, "window", win)

    def _window_region(self, r: Region | None, win: Window, n_out) -> Region:
        n = len(self.positions)
        if r is None or r.full:
            return Region.whole(n_out, n)
        los, size, kept = [], [], np.ones(n)
        for i in range(2):
            k, s, d, p = win.k[i], win.s[i], win.d[i], win.pad[2 * i]
            a, span = r.lo[:, i], r.size[i]
            first = np.maximum(0, -(-(a + p - (k - 1) * d) // s))       # ceil division
            last = np.minimum(n_out[i] - 1, (a + span - 1 + p) // s)
            m = max(1, int((last - first + 1).max()))
            if self.tau is not None:
                cap = max(math.ceil(self.tau * n_out[i]), math.ceil(span / s))
                if m > cap:  # the units [first, last] may change; those outside [lo, lo + cap) are dropped
                    lo = np.clip((first + last + 1) // 2 - cap // 2, 0, n_out[i] - cap)
                    changed = np.maximum(last + 1 - first, 0)
                    inside = np.clip(np.minimum(last + 1, lo + cap) - np.maximum(first, lo), 0, changed)
                    kept *= np.where(changed > 0, inside / np.maximum(changed, 1), 1.0)
                    first, m = lo, cap
            m = min(m, n_out[i])
            los.append(np.clip(first, 0, n_out[i] - m))
            size.append(m)
        region = self._threshold(Region(np.stack(los, axis=1), (size[0], size[1]), tuple(n_out)))
        if not region.full:  # (a whole map drops nothing)
            self.kept *= kept
        return region

    def _plan_pointwise(self, index, op, out) -> Step | None:
        name = op.name
        if name not in POINTWISE | CHANNELWISE | DROPOUTS | CATS:
            return None
        args, kwargs = tree_unflatten(op.leaves, op.spec)
        if name in DROPOUTS and _bind(args, kwargs, ("input", "p", "training"), {"training": True})[2] is not False \
                and kwargs.get("train", True) is not False:
            return None
        if name == "batch_norm" and _bind(args, kwargs, ("input", "a", "b", "c", "d", "training"), {})[5] is not False:
            return None
        if name in CATS and _bind(args, kwargs, ("tensors", "dim"), {"dim": 0})[1] not in (1, -3):
            return None
        hw, crop, regs = tuple(out.shape[-2:]), [], []
        for pos, leaf in enumerate(op.leaves):
            if self.dynamic(leaf):
                if not self._spatial(leaf) or tuple(self.nodes[leaf.node].base.shape[-2:]) != hw:
                    return None
                regs.append(self.regions.get(leaf.node))
            elif isinstance(leaf, (torch.Tensor, Ref)) and name not in CHANNELWISE:
                t = self.value(leaf)
                if t.dim() == 4 and t.shape[0] == 1 and tuple(t.shape[-2:]) == hw and hw != (1, 1):
                    crop.append(pos)
                elif (t.dim() >= 1 and t.shape[-1] != 1) or (t.dim() >= 2 and t.shape[-2] != 1):
                    return None  # broadcasts along a spatial axis in a way patches do not follow
        n = len(self.positions)
        if not regs or any(r is None or r.full for r in regs):
            region = Region.whole(hw, n)
        elif all(r is regs[0] for r in regs):
            region = regs[0]
        else:
            lo = np.minimum.reduce([r.lo for r in regs])                                    # (P, 2)
            hi = np.maximum.reduce([r.lo + np.array(r.size) for r in regs])
            size = tuple(int(v) for v in (hi - lo).max(axis=0))
            region = self._threshold(Region(np.clip(lo, 0, np.array(hw) - np.array(size)), size, hw))
        self.regions[op.outputs[0]] = region
        return Step(index, "pointwise", crop=tuple(crop))
