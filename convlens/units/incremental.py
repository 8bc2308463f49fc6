"""Incremental re-inference for occlusion: re-run only what an occluder can change.

Krypton (Nakandala, Kumar & Papakonstantinou, "Incremental and Approximate Inference for Faster
Occlusion-based Deep CNN Explanations", SIGMOD 2019, https://arxiv.org/abs/1905.00125): an occluder
changes one box of the input; a convolution or pooling layer then changes only the output units
whose window touches the changed box of its input (the box grows by the kernel and shrinks by the
stride), and an element-wise op (ReLU, eval-mode BatchNorm, a residual add, concatenation along
channels) changes the union of its inputs' boxes. So for each position of the occluder and each such
*local* op, convlens runs the op on a small window only: the changed patch of its input pasted into
the unoccluded activations (recorded once, :mod:`.opgraph`) plus the context the kernel needs, with
the op's zero / -inf padding made explicit. Patches have one size per layer for all positions (a
box near the border is moved inward, computing a few unchanged units again), so a batch of positions
is one call per layer.

At the first op that is not local (flatten, linear, global or uneven adaptive pooling, anything
unknown), or once a layer's box covers ``rho`` of its map (Krypton's threshold: a patch that large
saves nothing), the patches are pasted into full maps and the rest runs normally, batched over
positions with ``torch.func.vmap`` (each position's computation has the recorded batch-1 shapes, so
``x.view(1, -1)``-style code stays right). The result equals plain forwards of the occluded images up
to float rounding (checked against a naive loop in the tests).

Approximate mode (Krypton's projective-field threshold ``tau``): a layer's box may grow beyond what
the stride alone gives only up to ``tau`` of the map (per axis), centred on the true box; changes
outside it are dropped (taken as unoccluded). Smaller ``tau`` is faster and less exact.
``Incremental.kept`` (P,) says how much each position kept: per cut box, the share of the units the
position may change that lie inside it, multiplied over the layers; 1 means nothing was dropped, so
that position is exact. The caller verifies the others (:mod:`.occlusion`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .opgraph import Graph, Op, Ref

POINTWISE = {
    "relu", "relu_", "relu6", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu", "celu_", "gelu",
    "silu", "mish", "hardtanh", "hardtanh_", "hardswish", "hardsigmoid", "sigmoid", "sigmoid_", "tanh", "tanh_",
    "softplus", "softsign", "logsigmoid", "threshold", "threshold_", "clamp", "clamp_", "clip", "clip_", "clamp_min",
    "clamp_max", "abs", "abs_", "neg", "neg_", "exp", "exp_", "log", "log_", "sqrt", "sqrt_", "rsqrt", "square",
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


@dataclass
class Step:
    op: int
    kind: str                       # "window", "pointwise" or "generic"
    window: Window | None = None
    crop: tuple[int, ...] = ()      # leaf positions of constant full-size maps to crop to the region


@dataclass
class Patch:
    value: torch.Tensor             # (B, C, h, w)
    lo: np.ndarray                  # (B, 2)
    full: bool


@dataclass
class Batched:
    value: torch.Tensor             # (B, *recorded shape)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _bind(args, kwargs, names, defaults) -> list:
    values = dict(zip(names, args))
    values.update(kwargs)
    return [values.get(n, defaults.get(n)) for n in names]


class Incremental:
    """Plans once which box of every layer each occluder position changes, then runs batches of positions."""

    def __init__(self, graph: Graph, positions: np.ndarray, window: int, *, rho: float = 0.75,
                 tau: float | None = None):
        self.g, self.nodes = graph, graph.nodes
        self.positions, self.rho, self.tau = np.asarray(positions, dtype=np.int64), rho, tau
        hw = tuple(self.nodes[graph.input].base.shape[-2:])
        self.box = (min(window, hw[0]), min(window, hw[1]))
        self.kept = np.ones(len(self.positions))  # (P,) share of its changed units each position keeps (tau)
        self.regions: dict[int, Region] = {graph.input: self._threshold(Region(self.positions.copy(), self.box, hw))}
        self.steps = [self._plan(i, op) for i, op in enumerate(graph.ops) if op.dynamic]
        self.last_use: dict[int, int] = {}
        for j, step in enumerate(self.steps):
            for _, node in graph.ops[step.op].refs():
                self.last_use[node] = j
        self._padded: dict[tuple, torch.Tensor] = {}

    @property
    def local_ops(self) -> int:
        return sum(s.kind != "generic" and not self.regions[self.g.ops[s.op].outputs[0]].full for s in self.steps)

    # ---- planning ---------------------------------------------------------------------------------
    def _threshold(self, r: Region) -> Region:
        if r.full or r.size[0] * r.size[1] >= self.rho * r.hw[0] * r.hw[1]:
            return Region.whole(r.hw, len(r.lo))
        return r

    def _dynamic(self, leaf) -> bool:
        return isinstance(leaf, Ref) and self.nodes[leaf.node].dynamic

    def _value(self, leaf):
        return self.nodes[leaf.node].base if isinstance(leaf, Ref) else leaf

    def _spatial(self, leaf) -> bool:
        """A dynamic 4-D map of one image (patches apply)."""
        return self._dynamic(leaf) and self.nodes[leaf.node].base.dim() == 4 and len(self.nodes[leaf.node].base) == 1

    def _plan(self, index: int, op: Op) -> Step:
        step = None
        if len(op.outputs) == 1:
            out = self.nodes[op.outputs[0]].base
            if out.dim() == 4 and out.shape[0] == 1:
                args, kwargs = tree_unflatten(op.leaves, op.spec)
                step = self._plan_window(index, op, args, kwargs, out) or self._plan_pointwise(index, op, out)
        return step or Step(index, "generic")

    def _plan_window(self, index, op, args, kwargs, out) -> Step | None:
        name, x = op.name, (args[0] if args else kwargs.get("input"))
        if not self._spatial(x):
            return None
        if any(self._dynamic(leaf) for leaf in op.leaves if leaf is not x):
            return None
        n_in, n_out = tuple(self.nodes[x.node].base.shape[-2:]), tuple(out.shape[-2:])
        if name == "conv2d":
            _, w, b, s, p, d, groups = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation",
                                                            "groups"), {"stride": 1, "padding": 0, "dilation": 1,
                                                                        "groups": 1})
            w, b, k, s, d = self._value(w), self._value(b), tuple(self._value(w).shape[-2:]), _pair(s), _pair(d)
            if isinstance(p, str):
                total = [d[i] * (k[i] - 1) if p == "same" else 0 for i in range(2)]
                p = (total[0] // 2, total[1] // 2)
            p = _pair(p)
            run = lambda t, w=w, b=b, s=s, d=d, g=groups: torch.conv2d(t, w, b, s, 0, d, g)  # noqa: E731
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
        else:
            return None
        pad = []
        for i in range(2):
            need = (n_out[i] - 1) * s[i] + (k[i] - 1) * d[i] + 1  # padded rows the op reads
            pad += [p[i], max(0, need - n_in[i] - p[i])]
        win = Window(k, s, d, (pad[0], pad[1], pad[2], pad[3]), fill, run)
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
            if self._dynamic(leaf):
                if not self._spatial(leaf) or tuple(self.nodes[leaf.node].base.shape[-2:]) != hw:
                    return None
                regs.append(self.regions.get(leaf.node))
            elif isinstance(leaf, (torch.Tensor, Ref)) and name not in CHANNELWISE:
                t = self._value(leaf)
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

    # ---- running a batch of positions -----------------------------------------------------------------
    def run(self, rows: np.ndarray, patch: torch.Tensor, unit: int | None = None):
        """Model outputs (B, ...) and the layer's total activation of ``unit`` (B,) float64 (or None)
        for the positions ``rows`` (indices into ``positions``); ``patch`` (1, C, 1, 1) fills the box."""
        g, b = self.g, len(rows)
        box = Patch(patch.expand(b, -1, *self.box), self.positions[rows], False)         # (B, C, window, window)
        env: dict = {g.input: box}
        if self.regions[g.input].full:
            env[g.input] = Patch(self.full_values(g.input, box), np.zeros((b, 2), np.int64), True)
        act = self._activation(g.layer, env.get(g.layer), rows, unit) if g.layer is not None else None
        for j, step in enumerate(self.steps):
            op = g.ops[step.op]
            if step.kind == "generic":
                results = self._generic(op, env)
            else:
                region = self.regions[op.outputs[0]]
                lo = region.lo[rows]
                value = self._window(op, step, env, lo, region) if step.kind == "window" else \
                    self._pointwise(op, step, env, lo, region)
                results = [Patch(value, lo, region.full)]
            for node, value in zip(op.outputs, results):
                env[node] = value
                if node == g.layer:
                    act = self._activation(node, value, rows, unit)
            for _, node in op.refs():
                if self.last_use.get(node) == j and node != g.output:
                    env.pop(node, None)
        out = env.get(g.output)
        if out is None:  # the output does not depend on the image
            base = self.nodes[g.output].base
            return base.expand(b, *base.shape[1:]), act
        return self.batched(g.output, out)[:, 0], act

    def _window(self, op, step, env, lo, region) -> torch.Tensor:
        (pos, node), = [(p, n) for p, n in op.refs() if self.nodes[n].dynamic]
        leaves = [self._value(leaf) for leaf in op.leaves]
        if region.full:
            leaves[pos] = self.full_values(node, env[node])
            args, kwargs = tree_unflatten(leaves, op.spec)
            return op.func(*args, **kwargs)
        w = step.window
        starts = lo * np.array(w.s)                                                        # (B, 2) padded
        size = tuple((region.size[i] - 1) * w.s[i] + (w.k[i] - 1) * w.d[i] + 1 for i in range(2))
        return w.run(self.gather(node, env[node], starts, size, w.pad, w.fill))

    def _pointwise(self, op, step, env, lo, region) -> torch.Tensor:
        leaves = list(op.leaves)
        for pos, leaf in enumerate(op.leaves):
            if self._dynamic(leaf):
                val = env[leaf.node]
                if isinstance(val, Patch) and val.full == region.full and val.value.shape[-2:] == region.size \
                        and np.array_equal(val.lo, lo):
                    leaves[pos] = val.value
                elif region.full:
                    leaves[pos] = self.full_values(leaf.node, val)
                else:
                    leaves[pos] = self.gather(leaf.node, val, lo, region.size, (0, 0, 0, 0), 0.0)
            elif isinstance(leaf, Ref):
                leaves[pos] = self._value(leaf)
        if not region.full:
            for pos in step.crop:
                t = leaves[pos]
                leaves[pos] = torch.stack([t[0, :, r:r + region.size[0], c:c + region.size[1]] for r, c in lo])
        if op.inplace and isinstance(leaves[0], torch.Tensor):
            leaves[0] = leaves[0].clone()
        args, kwargs = tree_unflatten(leaves, op.spec)
        out = op.func(*args, **kwargs)
        return leaves[0] if out is None else out

    def _generic(self, op, env) -> list:
        leaves, where, values = list(op.leaves), [], []
        for pos, leaf in enumerate(op.leaves):
            if self._dynamic(leaf):
                where.append(pos)
                values.append(self.batched(leaf.node, env[leaf.node]))
            elif isinstance(leaf, Ref):
                leaves[pos] = self._value(leaf)
        b = len(values[0])
        if op.inplace and isinstance(leaves[0], torch.Tensor) and 0 not in where:
            where.insert(0, 0)  # an image-dependent value written into a constant: make the constant per-position
            values.insert(0, leaves[0].expand(b, *leaves[0].shape))

        def call(*vals):
            ls = list(leaves)
            for pos, v in zip(where, vals):
                ls[pos] = v
            if op.inplace:
                ls[0] = ls[0].clone()
            args, kwargs = tree_unflatten(ls, op.spec)
            out = op.func(*args, **kwargs)
            return ls[0] if out is None else out

        outs = [t for t in tree_flatten(vmap(call)(*values))[0] if isinstance(t, torch.Tensor)]
        if len(outs) != len(op.outputs):
            raise RuntimeError(f"{op.name} returned {len(outs)} tensors on replay; {len(op.outputs)} when recorded")
        return [Batched(t) for t in outs]

    # ---- moving between patches and full maps ----------------------------------------------------------
    def padded(self, node: int, pad, fill: float) -> torch.Tensor:
        """The unoccluded map of ``node`` (C, H + top + bottom, W + left + right), padded with ``fill``."""
        key = (node, pad, fill)
        if key not in self._padded:
            base = self.nodes[node].base[0]
            t, bt, lf, rt = pad
            self._padded[key] = F.pad(base, (lf, rt, t, bt), value=fill) if any(pad) else base
        return self._padded[key]

    def gather(self, node: int, val, starts: np.ndarray, size, pad, fill: float) -> torch.Tensor:
        """(B, C, h, w): the current map of ``node`` (unoccluded map + patch) at windows starting at
        ``starts`` (B, 2) in padded coordinates."""
        base, (h, w) = self.padded(node, pad, fill), size
        out = torch.stack([base[:, r:r + h, c:c + w] for r, c in starts])
        if isinstance(val, Batched):
            val = Patch(val.value[:, 0], np.zeros((len(starts), 2), np.int64), True)
        self.paste(out, val, starts - np.array([pad[0], pad[2]]))
        return out

    def full_values(self, node: int, val) -> torch.Tensor:
        """(B, C, H, W): the whole current map of ``node``."""
        if isinstance(val, Batched):
            return val.value[:, 0]
        if val.full:
            return val.value
        base = self.nodes[node].base
        out = base.expand(len(val.lo), *base.shape[1:]).clone()
        self.paste(out, val, np.zeros_like(val.lo))
        return out

    def batched(self, node: int, val) -> torch.Tensor:
        """(B, *recorded shape)."""
        return val.value if isinstance(val, Batched) else self.full_values(node, val).unsqueeze(1)

    @staticmethod
    def paste(out: torch.Tensor, patch: Patch, origin: np.ndarray) -> None:
        """Write ``patch`` into ``out`` (B, C, h, w) whose (0, 0) lies at ``origin`` (B, 2); clipped."""
        h, w = out.shape[-2:]
        ph, pw = patch.value.shape[-2:]
        for i, ((y, x), (oy, ox)) in enumerate(zip(patch.lo, origin)):
            y, x = int(y - oy), int(x - ox)
            ya, yb, xa, xb = max(0, y), min(h, y + ph), max(0, x), min(w, x + pw)
            if ya < yb and xa < xb:
                out[i, :, ya:yb, xa:xb] = patch.value[i, :, ya - y:yb - y, xa - x:xb - x]

    def _activation(self, node: int, val, rows: np.ndarray, unit: int) -> torch.Tensor:
        """(B,) float64: the total of channel ``unit`` of the layer's map (its value for a vector)."""
        base = self.nodes[node].base
        if val is None:  # the layer does not depend on the image
            v = base[0, unit].double()
            return (v.sum() if v.dim() else v).expand(len(rows))
        if isinstance(val, Batched):
            v = val.value[:, 0, unit].double()
            return v.flatten(1).sum(1) if v.dim() > 1 else v
        if val.full:
            return val.value[:, unit].double().sum((1, 2))
        h, w = val.value.shape[-2:]
        under = torch.stack([base[0, unit, r:r + h, c:c + w] for r, c in val.lo]).double()     # (B, h, w)
        return base[0, unit].double().sum() + (val.value[:, unit].double() - under).sum((1, 2))
