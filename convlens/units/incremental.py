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

Speed: patches are kept channels-last (oneDNN's depthwise and dense convolutions run 1.3-1.7x faster
on them on the CPU); an eval-mode batch norm right after a convolution is folded into the
convolution's weights (:mod:`.incremental_plan`); an activation whose input patch nothing else reads
runs in place (a fresh output costs about ten times the op itself in page faults).

At the first op that is not local (flatten, linear, global or uneven adaptive pooling, anything
unknown), or once a layer's box covers ``rho`` of its map (Krypton's threshold: a patch that large
saves nothing), the patches are pasted into full maps and the rest runs normally, batched over
positions with ``torch.func.vmap`` (each position's computation has the recorded batch-1 shapes, so
``x.view(1, -1)``-style code stays right). The result equals plain forwards of the occluded images up
to float rounding (checked against a naive loop in the tests).

Approximate mode (``tau``) drops the changes far from the true box; ``Incremental.kept`` (P,) says how
much each position kept, 1 where it is exact (:mod:`.incremental_plan`). The caller verifies the
others (:mod:`.occlusion`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_unflatten

from .incremental_plan import Plan
from .opgraph import Graph, Ref, as_inplace


@dataclass
class Patch:
    value: torch.Tensor             # (B, C, h, w)
    lo: np.ndarray                  # (B, 2)
    full: bool


@dataclass
class Batched:
    value: torch.Tensor             # (B, *recorded shape)


class Incremental:
    """Runs batches of occluder positions through the :class:`~.incremental_plan.Plan` of a recorded forward."""

    def __init__(self, graph: Graph, positions: np.ndarray, window: int, *, rho: float = 0.75,
                 tau: float | None = None):
        self.plan = Plan(graph, positions, window, rho=rho, tau=tau)
        self.g, self.nodes, self.positions = graph, graph.nodes, self.plan.positions
        self._padded: dict[tuple, torch.Tensor] = {}

    @property
    def kept(self) -> np.ndarray:
        """(P,) share of the units each position may change that it kept (1: exact; below 1 only with ``tau``)."""
        return self.plan.kept

    @property
    def local_ops(self) -> int:
        """How many ops run on patches rather than whole maps."""
        return self.plan.local_ops

    # ---- running a batch of positions -----------------------------------------------------------------
    def run(self, rows: np.ndarray, patch: torch.Tensor, unit: int | None = None):
        """Model outputs (B, ...) and the layer's total activation of ``unit`` (B,) float64 (or None)
        for the positions ``rows`` (indices into ``positions``); ``patch`` (1, C, 1, 1) fills the box."""
        g, b = self.g, len(rows)
        box = Patch(patch.expand(b, -1, *self.plan.box), self.positions[rows], False)    # (B, C, window, window)
        env: dict = {g.input: box}
        if self.plan.regions[g.input].full:
            env[g.input] = Patch(self.full_values(g.input, box), np.zeros((b, 2), np.int64), True)
        act = self._activation(g.layer, env.get(g.layer), rows, unit) if g.layer is not None else None
        for j, step in enumerate(self.plan.steps):
            op = g.ops[step.op]
            if step.kind == "generic":
                results = self._generic(op, env)
            elif step.kind == "alias":
                results = [env[step.source]]
            else:
                region = self.plan.regions[op.outputs[0]]
                lo = region.lo[rows]
                value = self._window(op, step, env, lo, region) if step.kind == "window" else \
                    self._pointwise(op, step, env, lo, region, j)
                results = [Patch(value, lo, region.full)]
            for node, value in zip(op.outputs, results):
                env[node] = value
                if node == g.layer:
                    act = self._activation(node, value, rows, unit)
            for _, node in op.refs():
                if self.plan.last_use.get(node) == j and node != g.output:
                    env.pop(node, None)
        out = env.get(g.output)
        if out is None:  # the output does not depend on the image
            base = self.nodes[g.output].base
            return base.expand(b, *base.shape[1:]), act
        return self.batched(g.output, out)[:, 0], act

    def _window(self, op, step, env, lo, region) -> torch.Tensor:
        (pos, node), = [(p, n) for p, n in op.refs() if self.nodes[n].dynamic]
        leaves = [self.plan.value(leaf) for leaf in op.leaves]
        if region.full:
            if step.window.full is not None:
                return step.window.full(self.full_values(node, env[node]))
            leaves[pos] = self.full_values(node, env[node])
            args, kwargs = tree_unflatten(leaves, op.spec)
            return op.func(*args, **kwargs)
        w = step.window
        starts = lo * np.array(w.s)                                                        # (B, 2) padded
        size = tuple((region.size[i] - 1) * w.s[i] + (w.k[i] - 1) * w.d[i] + 1 for i in range(2))
        return w.run(self.gather(node, env[node], starts, size, w.pad, w.fill))

    def _pointwise(self, op, step, env, lo, region, j) -> torch.Tensor:
        leaves, own = list(op.leaves), False  # own: the first argument is a copy, or a patch that dies here
        for pos, leaf in enumerate(op.leaves):
            if self.plan.dynamic(leaf):
                val = env[leaf.node]
                if isinstance(val, Patch) and val.full == region.full and val.value.shape[-2:] == region.size \
                        and np.array_equal(val.lo, lo):
                    leaves[pos] = val.value
                    own = own or (pos == 0 and self._dies(leaf.node, j, env))
                elif region.full:
                    leaves[pos] = self.full_values(leaf.node, val)
                    own = own or (pos == 0 and isinstance(val, Patch))  # (a Batched value's map is a view)
                else:
                    leaves[pos] = self.gather(leaf.node, val, lo, region.size, (0, 0, 0, 0), 0.0)
                    own = own or pos == 0
            elif isinstance(leaf, Ref):
                leaves[pos] = self.plan.value(leaf)
        if not region.full:
            for pos in step.crop:
                t = leaves[pos]
                leaves[pos] = torch.stack([t[0, :, r:r + region.size[0], c:c + region.size[1]] for r, c in lo])
        args, kwargs = tree_unflatten(leaves, op.spec)
        if op.inplace and isinstance(leaves[0], torch.Tensor) and not own:
            leaves[0] = leaves[0].clone()
            args, kwargs = tree_unflatten(leaves, op.spec)
        elif own and not op.inplace:
            # an activation whose input dies here runs in place: a fresh output costs ~10x the op (page faults)
            args, kwargs = as_inplace(op.func, args, kwargs) or (args, kwargs)
        out = op.func(*args, **kwargs)
        return leaves[0] if out is None else out

    def _dies(self, node: int, j: int, env) -> bool:
        """May step ``j`` write into ``node``'s patch? Only if no later step reads it and no other live value
        shares its memory (``contiguous()`` and the like return their input)."""
        if node in (self.g.input, self.g.output) or self.plan.last_use.get(node) != j:
            return False
        ptr = env[node].value.untyped_storage().data_ptr()
        return not any(isinstance(v, (Patch, Batched)) and v.value.untyped_storage().data_ptr() == ptr
                       for n, v in env.items() if n != node)

    def _generic(self, op, env) -> list:
        leaves, where, values = list(op.leaves), [], []
        for pos, leaf in enumerate(op.leaves):
            if self.plan.dynamic(leaf):
                where.append(pos)
                values.append(self.batched(leaf.node, env[leaf.node]))
            elif isinstance(leaf, Ref):
                leaves[pos] = self.plan.value(leaf)
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
        """The unoccluded map of ``node``, padded with ``fill``, channels last: (H + top + bottom, W + left +
        right, C)."""
        key = (node, pad, fill)
        if key not in self._padded:
            base = self.nodes[node].base[0]
            t, bt, lf, rt = pad
            base = F.pad(base, (lf, rt, t, bt), value=fill) if any(pad) else base
            self._padded[key] = base.permute(1, 2, 0).contiguous()
        return self._padded[key]

    def gather(self, node: int, val, starts: np.ndarray, size, pad, fill: float) -> torch.Tensor:
        """(B, C, h, w), channels last: the current map of ``node`` (unoccluded map + patch) at windows
        starting at ``starts`` (B, 2) in padded coordinates."""
        base, (h, w) = self.padded(node, pad, fill), size
        out = torch.stack([base[r:r + h, c:c + w] for r, c in starts]).permute(0, 3, 1, 2)
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
        out = base.expand(len(val.lo), *base.shape[1:]).clone(memory_format=torch.channels_last)  # never base itself
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
