"""Record a model's forward on one image as a graph of torch ops, to re-run parts of it later.

``record(model, x)`` runs ``model(x)`` once under a ``TorchFunctionMode`` and writes down every
torch call (``torch.conv2d``, ``F.relu``, ``Tensor.add``, ``torch.flatten`` ...) with its arguments,
each tensor argument replaced by a :class:`Ref` to the node that produced it. Nodes whose value
depends on ``x`` are *dynamic*; the rest (parameters, buffers, tensors made inside ``forward``) are
constants. Every node keeps its value on ``x`` (``base``): the unoccluded activations that
incremental occlusion (:mod:`.incremental`) patches.

Unlike ``torch.fx.symbolic_trace`` this sees real tensors, so shape checks and Python control flow
on shapes (``if x.shape[1:] != ...``) trace fine. What a recording of one input cannot capture is
refused, leaving ``Graph.problem`` set (callers then fall back to plain forwards):

* control flow on tensor *values* (``bool(t)``, ``t.item()``, ``t.tolist()`` on a dynamic tensor);
* in-place changes to a view, or to a tensor something holds a view of (aliasing the recording
  cannot follow); ``out=`` arguments;
* tensors whose origin it did not see (made outside torch's function layer, e.g. by a TorchScript
  sub-module), since they could depend on the input without it knowing.

In-place ops (``nn.ReLU(inplace=True)``, ``x.relu_()``) are recorded with the value each node had
*before* the change (the recorder snapshots it), and are replayed on a copy.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import chain
from typing import Any, Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

# Calls on a dynamic tensor that return facts about its shape, not its values: safe to use in Python.
METADATA = {
    "dim", "size", "stride", "numel", "nelement", "ndimension", "is_floating_point", "is_complex", "is_contiguous",
    "element_size", "data_ptr", "storage_offset", "get_device", "__len__", "is_signed", "has_names", "__hash__",
    "shape.__get__", "dtype.__get__", "device.__get__", "ndim.__get__", "requires_grad.__get__", "is_cuda.__get__",
    "is_meta.__get__", "layout.__get__", "names.__get__", "is_leaf.__get__", "grad_fn.__get__", "itemsize.__get__",
    "nbytes.__get__", "is_sparse.__get__", "is_quantized.__get__", "is_mkldnn.__get__", "is_nested.__get__",
}
# Ops whose later tensor arguments give only a dtype/device (``x.to(y)``): the value comes from the first.
VALUE_FROM_FIRST = {"to", "type_as"}
# Ops whose result does not depend on any tensor argument's values.
VALUE_FREE = {"zeros_like", "ones_like", "empty_like", "full_like", "new_zeros", "new_ones", "new_empty", "new_full"}
INPLACE_DUNDER = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__ifloordiv__", "__imod__", "__ipow__",
                  "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__setitem__"}


@dataclass(frozen=True)
class Ref:
    """A recorded tensor inside an op's arguments: the node that holds it."""

    node: int


@dataclass
class Node:
    index: int
    op: int | None              # the op that made it (None: the input, or a tensor from outside)
    base: torch.Tensor          # its value on the recorded (unoccluded) image, batch 1
    dynamic: bool               # depends on the input image


@dataclass
class Op:
    func: Callable
    name: str                   # e.g. "conv2d", "relu", "add", "shape.__get__"
    leaves: list                # flattened (args, kwargs); tensors replaced by Ref (constants kept as values)
    spec: Any                   # pytree spec to rebuild (args, kwargs)
    outputs: list[int]          # nodes of the tensor leaves of the result, in order
    inplace: bool               # mutates its first argument (replay on a copy)
    dynamic: bool

    def refs(self) -> list[tuple[int, int]]:
        """(leaf position, node) of every Ref argument."""
        return [(i, leaf.node) for i, leaf in enumerate(self.leaves) if isinstance(leaf, Ref)]


@dataclass
class Graph:
    nodes: list[Node]
    ops: list[Op]
    input: int
    output: int | None          # node of the model's output (None: not one recorded tensor)
    layer: int | None           # node of the requested layer's output (its last call)
    problem: str | None = None  # why this recording cannot be replayed (None: it can)
    batch_coupled: bool = False  # some op mixes images of a batch (batch norm with batch statistics)


def op_name(func) -> str:
    name = getattr(func, "__name__", "") or ""
    if name in ("__get__", "__set__"):
        owner = getattr(getattr(func, "__self__", None), "__name__", "")
        return f"{owner}.{name}" if owner else name
    return name


_SIGNATURES: dict[int, inspect.Signature | None] = {}


def _signature(func) -> inspect.Signature | None:
    if id(func) not in _SIGNATURES:
        try:
            _SIGNATURES[id(func)] = inspect.signature(func)
        except (TypeError, ValueError):
            _SIGNATURES[id(func)] = None
    return _SIGNATURES[id(func)]


def _bound(func, args, kwargs) -> inspect.BoundArguments | None:
    """The call's arguments bound to ``func``'s signature, for a function that takes ``inplace`` (else None)."""
    sig = _signature(func)
    if sig is None or "inplace" not in sig.parameters:
        return None
    try:
        return sig.bind(*args, **kwargs)
    except TypeError:
        return None


def _inplace_flag(func, args, kwargs) -> bool:
    """``inplace=True`` given by keyword or by position (``F.relu(x, True)``)."""
    if kwargs.get("inplace") is True:
        return True
    bound = _bound(func, args, kwargs)
    return bound is not None and bound.arguments.get("inplace") is True


def as_inplace(func, args, kwargs) -> tuple | None:
    """``(args, kwargs)`` with ``inplace=True`` for a function that takes ``inplace`` (``F.relu``,
    ``F.hardtanh``); None for one that does not."""
    bound = _bound(func, args, kwargs)
    if bound is None:
        return None
    bound.arguments["inplace"] = True
    return bound.args, bound.kwargs


def is_inplace(func, name: str, args, kwargs) -> bool:
    return (name in INPLACE_DUNDER or (name.endswith("_") and not name.startswith("_"))
            or _inplace_flag(func, args, kwargs))


class Recorder(TorchFunctionMode):
    """Writes down every torch call while the model runs (see the module docstring)."""

    def __init__(self, known: set[int]):
        super().__init__()
        self.nodes: list[Node] = []
        self.ops: list[Op] = []
        self.ids: dict[int, int] = {}          # id(tensor) -> node holding its current value
        self.owners: dict[int, list[int]] = {}  # id(tensor) -> every node whose base is that object
        self.alive: list[torch.Tensor] = []    # keeps recorded tensors alive, so ids stay unique
        self.known = known                     # ids of parameters, buffers and tensor attributes
        self.viewed: set[int] = set()          # ids of tensors that some recorded view aliases
        self.problem: str | None = None
        self.batch_coupled = False

    def add(self, t: torch.Tensor, op: int | None, dynamic: bool) -> int:
        i = len(self.nodes)
        self.nodes.append(Node(i, op, t, dynamic))
        self.ids[id(t)] = i
        self.owners.setdefault(id(t), []).append(i)
        self.alive.append(t)
        if t._is_view() and t._base is not None:
            self.viewed.add(id(t._base))
        return i

    def refuse(self, why: str) -> None:
        if self.problem is None:
            self.problem = why

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.problem is not None:
            return func(*args, **kwargs)
        name = op_name(func)
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [(i, t) for i, t in enumerate(leaves) if isinstance(t, torch.Tensor)]
        dyn = [i for i, t in tensors if id(t) in self.ids and self.nodes[self.ids[id(t)]].dynamic]
        if name in VALUE_FREE:
            dyn = []
        elif name in VALUE_FROM_FIRST:
            dyn = [i for i in dyn if i == 0]
        if name in METADATA:
            return func(*args, **kwargs)
        inplace = is_inplace(func, name, args, kwargs) and bool(tensors) and tensors[0][0] == 0
        target = leaves[0] if inplace else None
        if dyn and "out" in kwargs:
            self.refuse(f"{name} writes into an out= tensor")
        if target is not None and (dyn or id(target) in self.ids):
            if target._is_view() or id(target) in self.viewed:
                self.refuse(f"in-place {name} on a tensor that shares memory with another (a view)")
            for n in self.owners.get(id(target), []):  # keep each node's value from before the change
                if self.nodes[n].base is target:
                    self.nodes[n].base = target.detach().clone()
        versions = [t._version for _, t in tensors]
        out = func(*args, **kwargs)
        for (i, t), v in zip(tensors, versions):
            if t._version != v and t is not target and (dyn or id(t) in self.ids):
                self.refuse(f"{name} changed one of its inputs in place in a way convlens cannot follow")
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        if inplace and not outs:
            outs = [target]                     # __setitem__ returns None; its result is the target
        if dyn and not outs:
            self.refuse(f"the forward reads tensor values in Python ({name}): control flow that depends on the "
                        "image cannot be recorded once and replayed")
            return out
        if name == "batch_norm" and _arg(args, kwargs, 5, "training") is True:
            self.batch_coupled = True
        stored = []
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, torch.Tensor):
                n = self.ids.get(id(leaf))
                if n is not None:
                    stored.append(Ref(n) if i in dyn or not self.nodes[n].dynamic else self.nodes[n].base)
                else:
                    if id(leaf) not in self.known and dyn:
                        self.refuse(f"{name} received a tensor made outside torch's function layer")
                    stored.append(leaf)
            else:
                stored.append(leaf)
        index = len(self.ops)
        op = Op(func, name, stored, spec, [], inplace, bool(dyn))
        self.ops.append(op)
        op.outputs = [self.add(t, index, bool(dyn)) for t in outs]
        return out


def _arg(args, kwargs, position: int, name: str):
    return args[position] if len(args) > position else kwargs.get(name)


def known_tensors(model: nn.Module) -> set[int]:
    """ids of the tensors a model owns: parameters, buffers, and tensors kept as plain attributes."""
    ids = {id(t) for t in chain(model.parameters(), model.buffers())}
    for m in model.modules():
        ids.update(id(v) for v in vars(m).values() if isinstance(v, torch.Tensor))
    return ids


def record(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> Graph:
    """One forward of ``x`` (1, C, H, W) through ``model``, recorded (no grad; the caller sets eval mode).

    ``layer``: a sub-module whose output node is wanted (its last call). Exceptions of the model's own
    forward propagate.
    """
    rec = Recorder(known_tensors(model))
    rec.add(x, None, True)
    found: dict[str, int | None] = {"layer": None}

    def hook(module, args, output):
        t = next((v for v in tree_flatten(output)[0] if isinstance(v, torch.Tensor)), None)
        found["layer"] = rec.ids.get(id(t)) if t is not None else None

    handle = layer.register_forward_hook(hook) if layer is not None else None
    try:
        with torch.no_grad(), rec:
            out = model(x)
    finally:
        if handle is not None:
            handle.remove()
    output = rec.ids.get(id(out)) if isinstance(out, torch.Tensor) else None
    graph = Graph(rec.nodes, rec.ops, 0, output, found["layer"], rec.problem, rec.batch_coupled)
    if graph.problem is None and isinstance(out, torch.Tensor) and output is None:
        graph.problem = "the model's output was made outside torch's function layer"
    if graph.problem is None and layer is not None and found["layer"] is None:
        graph.problem = "the layer's output was made outside torch's function layer"
    return graph
