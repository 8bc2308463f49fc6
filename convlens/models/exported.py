"""A ``torch.export`` program (``.pt2``, written by ``torch.export.save``) as an eager-like ``nn.Module``.

No code is needed: the program holds the graph and the weights. ``load_exported(path)`` loads it,
refusing to unpickle anything (``torch.export.load`` falls back to ``torch.load(weights_only=False)``
for objects it cannot read safely; here every such load is made with ``weights_only=True``, and any
other unpickling is refused), and unflattens it (``torch.export.unflatten``), so the module tree and
its names are the original's (``layer1.0.conv1``) and forward hooks on them fire.

Unflattened, every sub-module is an fx ``InterpreterModule`` running aten ops (``aten.conv2d``,
``aten.relu``). Two steps make it look like the eager model to the rest of convlens, each checked
numerically on the program's example input and undone where it does not give the same output:

1. **leaves rebuilt**: a leaf whose recorded type is one of torch.nn's layers (``Conv2d``, ``Linear``,
   ``BatchNorm1d/2d``, ``ReLU``, ``ReLU6``, ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Flatten``,
   ``Dropout``, ``Sigmoid``, ``Tanh``, ``Identity``) becomes that real layer, sharing the program's
   parameters and buffers, so filters, summaries, receptive fields and the layer listings see a ``Conv2d``;
2. **ops named as in eager code**: the aten calls left in the containers' graphs (a functional
   ``F.relu``, a residual ``+``, ``x.mean((2, 3))``) call the torch function of the same name
   (``torch.relu``, ``torch.add``), which is what deconvnet / guided backprop's ReLU rules and the
   occlusion recorder intercept.

The program keeps the input shapes it was exported for: a dimension exported as static (the batch,
unless ``dynamic_shapes`` made it dynamic) refuses other sizes, with an error that says how to export
with a dynamic batch.
"""
from __future__ import annotations

import contextlib
import operator
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.export.unflatten import UnflattenedModule

from ..errors import RunError, ShapeError

__all__ = ["is_exported", "load_exported", "EXPORT_HINT"]

EXPORT_HINT = ("export with a dynamic batch: torch.export.export(model, (x,), "
               "dynamic_shapes={'x': {0: torch.export.Dim('batch')}}) with x of shape (2, C, H, W)")


def is_exported(p: Path) -> bool:
    """A ``torch.export.save`` archive: a zip holding the serialized program (``…/models/…json``)."""
    if p.suffix == ".pt2":
        return True
    if p.suffix == ".safetensors" or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        names = z.namelist()
    return any("/archive_format" in n or n.endswith("archive_format") for n in names) or \
        any("/models/" in n and n.endswith(".json") for n in names)


@contextlib.contextmanager
def _no_code_unpickling():
    """While the program loads: ``torch.load`` only with ``weights_only=True``; ``pickle.loads`` and
    TorchScript object unpickling refused. Nothing in the archive can run code."""
    real_load, real_loads = torch.load, pickle.loads
    real_obj = getattr(torch._C, "_pickle_load_obj", None)

    def safe_load(*args, **kwargs):
        kwargs["weights_only"] = True
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise pickle.UnpicklingError("convlens refuses to unpickle Python objects from a .pt2 archive")

    torch.load, pickle.loads = safe_load, refuse
    if real_obj is not None:
        torch._C._pickle_load_obj = refuse
    try:
        yield
    finally:
        torch.load, pickle.loads = real_load, real_loads
        if real_obj is not None:
            torch._C._pickle_load_obj = real_obj


def load_exported(path: str | Path, *, device=None) -> tuple[nn.Module, dict]:
    """(the unflattened, eager-like module, facts: example input shape, which leaves were rebuilt, the
    original class name) of a ``.pt2`` file."""
    p = Path(path)
    try:
        with _no_code_unpickling(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecation notes while it loads
            program = torch.export.load(str(p))
    except pickle.UnpicklingError as err:
        raise RunError(f"{p}: holds pickled Python objects that convlens will not unpickle ({err}); re-export "
                       "the model with plain tensors as weights and constants") from None
    except Exception as err:
        raise RunError(f"{p}: not a loadable torch.export program ({type(err).__name__}: {str(err)[:300]})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch's own pytree deprecation notes
        module = torch.export.unflatten(program)
    _drop_fake_values(module)
    example = _example_input(program)
    rebuilt = _rebuild_leaves(module, example)
    renamed = _eager_ops(module, example)
    if device is not None:
        module = module.to(device)
    facts = {"example_shape": list(example.shape) if example is not None else None,
             "static_dims": _static_dims(program), "class": getattr(module, "_ty", None) or "",
             "rebuilt": rebuilt, "eager_ops": renamed}
    module.__class__ = ExportedProgram
    module.shape_check = _shape_check(p, facts)
    return module.eval(), facts


class ExportedProgram(UnflattenedModule):
    """An unflattened program whose forward first checks the input against the shapes it was exported
    for (a clear ShapeError instead of a guard failure deep in the graph; no hook is registered)."""

    def __deepcopy__(self, memo):
        """As ``copy.deepcopy`` does for any module, without torch's pytree deprecation notes on stderr."""
        import copy

        new = type(self).__new__(type(self))
        memo[id(self)] = new
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            for key, value in self.__dict__.items():
                new.__dict__[key] = copy.deepcopy(value, memo)
        return new

    def forward(self, *args, **kwargs):
        check = self.__dict__.get("shape_check")
        if check is not None:
            check(args)
        return super().forward(*args, **kwargs)


def _drop_fake_values(module: nn.Module) -> None:
    """Remove the fake tensors export leaves in each node's metadata: the interpreter never reads them, and
    they make ``copy.deepcopy`` of the module fail (symbolic sizes)."""
    for m in module.modules():
        graph = getattr(m, "graph", None)
        if isinstance(graph, torch.fx.Graph):
            for node in graph.nodes:
                for key in ("val", "example_value", "tensor_meta", "unbacked_bindings"):
                    node.meta.pop(key, None)


# ---- the example input and the shapes the program accepts --------------------------------------------

def _user_placeholders(program):
    sig = program.graph_signature
    users = set(sig.user_inputs)
    return [n for n in program.graph.nodes if n.op == "placeholder" and n.name in users]


def _example_input(program) -> torch.Tensor | None:
    """A random tensor shaped like the program's (first) example input, on the weights' device."""
    shape, dtype = None, torch.float32
    ex = getattr(program, "example_inputs", None)
    if ex and ex[0] and isinstance(ex[0][0], torch.Tensor):
        shape, dtype = tuple(ex[0][0].shape), ex[0][0].dtype
    else:
        nodes = _user_placeholders(program)
        val = nodes[0].meta.get("val") if nodes else None
        if val is not None:
            shape = tuple(int(d) if isinstance(d, int) else 2 for d in val.shape)
            dtype = val.dtype
    if shape is None or not dtype.is_floating_point:
        return None
    ref = next(iter(program.state_dict.values()), None)
    device = ref.device if isinstance(ref, torch.Tensor) else "cpu"
    gen = torch.Generator().manual_seed(0)
    return torch.rand(shape, generator=gen, dtype=dtype).to(device)


def _static_dims(program) -> list[int | None] | None:
    """Per dimension of the (first) input: the size it must have, or None where it is dynamic."""
    nodes = _user_placeholders(program)
    val = nodes[0].meta.get("val") if nodes else None
    if val is None:
        return None
    return [int(d) if isinstance(d, int) else None for d in val.shape]


def _shape_check(p: Path, facts: dict):
    dims = facts["static_dims"]

    def check(args):
        if dims is None or not args or not isinstance(args[0], torch.Tensor):
            return None
        shape = tuple(args[0].shape)
        if len(shape) != len(dims) or any(d is not None and d != s for d, s in zip(dims, shape)):
            want = "x".join("N" if d is None else str(d) for d in dims)
            hint = f"; {EXPORT_HINT}" if dims and dims[0] is not None and len(shape) == len(dims) and \
                all(d is None or d == s for d, s in zip(dims[1:], shape[1:])) else ""
            raise ShapeError(f"{p.name} was exported for input {want}; got {'x'.join(map(str, shape))}{hint}")
        return None

    return check


# ---- 1. leaves back to torch.nn layers ----------------------------------------------------------------

def _compute_node(graph):
    """The one op of a leaf's graph (None when there is not exactly one)."""
    ops = [n for n in graph.nodes if n.op == "call_function" and n.target is not operator.getitem]
    return ops[0] if len(ops) == 1 else None


def _arg(node, i: int, name: str, default):
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(name, default)


def _tensor(mod, a):
    """A get_attr argument -> the module's tensor (None stays None)."""
    if a is None:
        return None
    if getattr(a, "op", None) != "get_attr":
        raise ValueError("not a parameter")
    return getattr(mod, a.target)


def _pair(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _build_leaf(kind: str, mod) -> nn.Module | None:
    node = _compute_node(mod.graph)
    if node is None:
        return nn.Identity() if kind == "Identity" else None
    op = str(node.target)
    aten = torch.ops.aten
    if kind == "Conv2d" and node.target in (aten.conv2d.default, aten.conv2d.padding):
        w, b = _tensor(mod, node.args[1]), _tensor(mod, _arg(node, 2, "bias", None))
        stride, dilation = _pair(_arg(node, 3, "stride", 1)), _pair(_arg(node, 5, "dilation", 1))
        padding = _arg(node, 4, "padding", 0)
        padding = padding if isinstance(padding, str) else _pair(padding)
        groups = _arg(node, 6, "groups", 1)
        new = nn.Conv2d(w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
                        dilation=dilation, groups=groups, bias=b is not None, device="meta")
        new.weight = w
        if b is not None:
            new.bias = b
        return new
    if kind == "Linear" and node.target == aten.linear.default:
        w, b = _tensor(mod, node.args[1]), _tensor(mod, _arg(node, 2, "bias", None))
        new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")
        new.weight = w
        if b is not None:
            new.bias = b
        return new
    if kind in ("BatchNorm2d", "BatchNorm1d") and node.target == aten.batch_norm.default:
        w, b = _tensor(mod, node.args[1]), _tensor(mod, node.args[2])
        rm, rv = _tensor(mod, node.args[3]), _tensor(mod, node.args[4])
        if rm is None or _arg(node, 5, "training", False):
            return None
        cls = nn.BatchNorm2d if kind == "BatchNorm2d" else nn.BatchNorm1d
        new = cls(len(rm), eps=float(node.args[7]), momentum=float(node.args[6]), affine=w is not None,
                  device="meta")
        if w is not None:
            new.weight, new.bias = w, b
        new.running_mean, new.running_var = rm, rv
        new.num_batches_tracked = getattr(mod, "num_batches_tracked", torch.tensor(0, dtype=torch.long))
        return new
    simple = {("ReLU", "aten.relu.default"): nn.ReLU, ("ReLU", "aten.relu_.default"): nn.ReLU,
              ("Sigmoid", "aten.sigmoid.default"): nn.Sigmoid, ("Tanh", "aten.tanh.default"): nn.Tanh}
    if (kind, op) in simple:
        return simple[(kind, op)]()
    if kind in ("ReLU6", "Hardtanh") and node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        lo, hi = float(_arg(node, 1, "min_val", -1.0)), float(_arg(node, 2, "max_val", 1.0))
        return nn.ReLU6() if kind == "ReLU6" and (lo, hi) == (0.0, 6.0) else nn.Hardtanh(lo, hi)
    if kind == "MaxPool2d" and node.target == aten.max_pool2d.default:
        k = _pair(node.args[1])
        s = _arg(node, 2, "stride", [])
        return nn.MaxPool2d(k, _pair(s) if s else k, _pair(_arg(node, 3, "padding", 0)),
                            _pair(_arg(node, 4, "dilation", 1)), ceil_mode=bool(_arg(node, 5, "ceil_mode", False)))
    if kind == "AvgPool2d" and node.target == aten.avg_pool2d.default:
        k = _pair(node.args[1])
        s = _arg(node, 2, "stride", [])
        return nn.AvgPool2d(k, _pair(s) if s else k, _pair(_arg(node, 3, "padding", 0)),
                            ceil_mode=bool(_arg(node, 4, "ceil_mode", False)),
                            count_include_pad=bool(_arg(node, 5, "count_include_pad", True)),
                            divisor_override=_arg(node, 6, "divisor_override", None))
    if kind == "AdaptiveAvgPool2d" and node.target == aten.adaptive_avg_pool2d.default:
        return nn.AdaptiveAvgPool2d(tuple(node.args[1]))
    if kind == "Flatten" and node.target == aten.flatten.using_ints:
        return nn.Flatten(int(_arg(node, 1, "start_dim", 0)), int(_arg(node, 2, "end_dim", -1)))
    if kind == "Dropout" and node.target in (aten.dropout.default, aten.clone.default):
        return nn.Dropout(float(_arg(node, 1, "p", 0.5))) if node.target == aten.dropout.default else nn.Dropout()
    return None


def _leaves(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(path, m) for path, m in module.named_modules()
            if path and not any(True for _ in m.children()) and hasattr(m, "graph")]


def _set(module: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(module.get_submodule(parent) if parent else module, name, new)


@torch.no_grad()
def _rebuild_leaves(module: nn.Module, example: torch.Tensor | None) -> list[str]:
    """Swap leaves for real torch.nn layers where each gives the leaf's output on what the leaf sees."""
    candidates = {}
    for path, leaf in _leaves(module):
        ty = getattr(leaf, "_ty", None) or ""
        if not ty.startswith("torch.nn.modules."):
            continue
        try:
            new = _build_leaf(ty.rsplit(".", 1)[-1], leaf)
        except (ValueError, TypeError, AttributeError, IndexError):
            new = None
        if new is not None:
            candidates[path] = (leaf, new)
    if not candidates or example is None:
        return []
    seen: dict[str, tuple] = {}

    def keep(path):
        def hook(m, args, out):
            if path not in seen:  # copies: a later in-place op (relu_) must not change what is compared
                seen[path] = (tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args),
                              out.clone() if isinstance(out, torch.Tensor) else out)
        return hook

    hooks = [leaf.register_forward_hook(keep(path)) for path, (leaf, _) in candidates.items()]
    try:
        module(example)
    finally:
        for h in hooks:
            h.remove()
    done = []
    for path, (leaf, new) in candidates.items():
        if path not in seen:
            continue
        args, out = seen[path]
        new.train(False)
        try:
            got = new(*args)
        except Exception:
            continue
        if isinstance(out, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape == out.shape and \
                torch.allclose(got, out, rtol=1e-5, atol=1e-6):
            _set(module, path, new)
            done.append(path)
    return done


# ---- 2. aten calls as the torch functions eager code calls ---------------------------------------------

def _eager_function(target):
    """``aten.relu.default`` -> ``torch.relu`` (else ``F.relu``, else ``Tensor.relu``); None if none."""
    if not isinstance(target, torch._ops.OpOverload) or target.namespace != "aten":
        return None
    name = target.overloadpacket.__name__
    if name.startswith("_"):
        return None
    for owner in (torch, F, torch.Tensor):
        fn = getattr(owner, name, None)
        if callable(fn) and not isinstance(fn, type):
            return fn
    return None


@torch.no_grad()
def _eager_ops(module: nn.Module, example: torch.Tensor | None) -> int:
    """Rename the aten calls of every graph to eager torch functions; undone unless the output is equal."""
    if example is None:
        return 0
    before = module(example)
    changed = []
    for _, m in module.named_modules():
        graph = getattr(m, "graph", None)
        if not isinstance(graph, torch.fx.Graph):
            continue
        for node in graph.nodes:
            if node.op == "call_function":
                fn = _eager_function(node.target)
                if fn is not None:
                    changed.append((node, node.target))
                    node.target = fn
    try:
        after = module(example)
        same = _same(before, after)
    except Exception:
        same = False
    if not same:
        for node, target in changed:
            node.target = target
        return 0
    return len(changed)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b
