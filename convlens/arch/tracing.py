"""Run a model on the meta device: shapes, per-call records of leaf modules, and receptive-field geometry.

``trace(model, (C, H, W))`` calls the model through ``torch.func.functional_call`` with meta copies
of its parameters and buffers, so no activation (or parameter) memory is allocated and the user's
tensors are never touched. Forward hooks record every call of a leaf module (the model itself when
it has no children); a ``TorchFunctionMode`` tags every tensor with its
:class:`~convlens.arch.geometry.Geometry`, op by op, so receptive fields are right for any graph
(``F.relu`` in ``forward``, ``x + shortcut(x)``, concatenation), not only for chains of modules.

Some forwards run only on real tensors: they copy to a device (``x.to("cpu")``), make tensors on the
CPU and combine them with the input (CoordConv's ``torch.linspace``), read values (``.item()``,
``if x.mean() > 0:``) or make shapes from them (``x[x > 0]``). When the meta forward fails for such a
reason (its error names the meta device or a meta kernel), the trace runs one real forward instead,
on a batch of one random image in [0, 1) (seed 0) on the model's device and dtype, in eval mode under
``no_grad``, and says so in ``Trace.note``. A TorchScript module is refused: no hook and no
``TorchFunctionMode`` sees into compiled code.
"""
from __future__ import annotations

from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from ..errors import ConvLensError, ShapeError
from ..layers import model_label
from ..taps import model_device, scripted_path, torchscript_error
from .geometry import Axis, Geometry, union, whole

GEO_ATTR = "_convlens_geometry"
UNKNOWN = "unknown"  # the tag of a tensor whose receptive field cannot be computed

# Ops that move information across positions while keeping the spatial size (or in ways a window
# cannot describe): everything downstream of them has an unknown receptive field.
MIXING = {
    "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv1d", "conv3d", "flip", "fliplr", "flipud",
    "roll", "rot90", "grid_sample", "affine_grid", "unfold", "fold", "interpolate", "upsample", "pixel_shuffle",
    "pixel_unshuffle", "max_unpool2d", "lp_pool2d", "fractional_max_pool2d",
}
# Shape-preserving ops whose meta kernels are Python references that import torch._dynamo (1.5 s on
# first use); on meta inputs their output is just ``empty_like`` (or the input itself when in place).
SAME_SHAPE = {
    "relu", "relu6", "tanh", "gelu", "leaky_relu", "hardtanh", "elu", "selu", "celu", "hardswish", "hardsigmoid",
    "mish", "softplus", "sigmoid", "silu", "threshold", "local_response_norm",
}


@dataclass
class Call:
    """One call of a leaf module during the trace."""

    path: str
    module: nn.Module
    call: int                       # 1 for the module's first call, 2 for its second ...
    inputs: list[torch.Tensor]      # meta tensors
    output: torch.Tensor | None     # the first tensor of the output (meta)

    @property
    def geometry(self) -> Geometry | None:
        return geometry_of(self.output)


class Trace(NamedTuple):
    """What :func:`trace` returns: the input it ran (meta, or real for a fallback), the leaf-module calls
    in execution order, and a note ('' for a meta trace) saying why and how a real forward ran instead."""

    input: torch.Tensor             # (N, C, H, W)
    calls: list[Call]
    note: str


def geometry_of(t) -> Geometry | None:
    g = getattr(t, GEO_ATTR, None) if isinstance(t, torch.Tensor) else None
    return g if isinstance(g, Geometry) else None


def trace(model: nn.Module, input_size: tuple[int, int, int], *, batch_size: int = 1,
          dtype: torch.dtype = torch.float32, containers: bool = False) -> Trace:
    """Trace ``model`` on a meta input of ``(batch_size, *input_size)``, or on a real batch of one where the
    forward needs real tensors (see the module docstring); the model is left exactly as found. With
    ``containers``, the calls of modules that have children are recorded too (each when it returns, so a
    block comes after its layers; its ``output`` is the very tensor object it returned)."""
    scripted = scripted_path(model)
    if scripted is not None:
        raise torchscript_error(scripted, "no hook and no TorchFunctionMode sees into its compiled code, which "
                                          "the summary's rows and receptive fields are traced through")
    state = module_state(model, lambda name, t: _meta(t, dtype))
    x = _tagged(torch.empty(batch_size, *input_size, device="meta", dtype=dtype))  # (N, C, H, W)
    try:
        return Trace(x, _run(model, x, state, containers), "")
    except _Failed as failed:
        if "meta" not in str(failed.__cause__).lower():  # the model's own error: it fails on real tensors too
            raise ShapeError(str(failed)) from failed.__cause__
        return _real_trace(model, input_size, failed, containers)


def _real_trace(model: nn.Module, input_size, meta: _Failed, containers: bool = False) -> Trace:
    """One real forward of a random batch of one, for a forward that failed on the meta device (``meta``)."""
    if any(t.is_meta for t in chain(model.parameters(), model.buffers())):
        raise ShapeError(f"{meta} (the forward needs real tensors, and this model's weights are on the meta "
                         "device: build it with real weights)") from meta.__cause__
    device, dtype = model_device(model)
    noise = torch.rand(1, *input_size, generator=torch.Generator().manual_seed(0))  # (1, C, H, W) in [0, 1)
    x = _tagged(noise.to(device=device, dtype=dtype))
    try:
        calls = _run(model, x, None, containers)
    except _Failed as failed:
        raise ShapeError(str(failed)) from failed.__cause__
    finally:
        for t in chain(model.parameters(), model.buffers()):  # a tag the forward put on a tensor of the model
            if hasattr(t, GEO_ATTR):
                delattr(t, GEO_ATTR)
    return Trace(x, calls, f"{meta.where} cannot run on the meta device ({meta.message}), so this comes from one "
                           f"real forward of a random 1x{'x'.join(map(str, input_size))} input on {device} "
                           "(eval mode, no grad); a forward that branches on values shows the path that input took")


class _Failed(Exception):
    """The user's forward raised: where (a layer or the model), on which input shape, and the first line."""

    def __init__(self, where: str, shape, message: str):
        super().__init__(f"{where} failed on input of shape {shape}: {message}")
        self.where, self.message = where, message


def _run(model: nn.Module, x: torch.Tensor, state: dict | None, containers: bool = False) -> list[Call]:
    """One hooked forward of ``x`` in eval mode under ``no_grad`` (with ``state`` swapped in when given);
    hooks removed and modes restored in every case."""
    calls: list[Call] = []
    stack: list[tuple[str, nn.Module, list]] = []
    counts: dict[int, int] = {}

    def pre_hook(module, args):
        stack.append((paths[id(module)], module, [a for a in tree_leaves(args) if isinstance(a, torch.Tensor)]))

    def post_hook(module, args, output):
        path, _, inputs = stack.pop()
        if containers or not any(True for _ in module.children()):
            counts[id(module)] = counts.get(id(module), 0) + 1
            first = next((t for t in tree_leaves(output) if isinstance(t, torch.Tensor)), None)
            calls.append(Call(path, module, counts[id(module)], inputs, first))

    paths = {id(m): p for p, m in model.named_modules()}
    modes = {m: m.training for m in model.modules()}
    handles = []
    try:
        for m in model.modules():
            handles.append(m.register_forward_pre_hook(pre_hook))
            handles.append(m.register_forward_hook(post_hook))
        model.eval()
        with torch.no_grad(), GeometryMode():
            if state is None:
                model(x)
            else:
                torch.func.functional_call(model, state, (x,), tie_weights=False)
    except ConvLensError:
        raise
    except Exception as err:  # noqa: BLE001  (any failure of the user's forward, named by layer)
        raise _failure(model, stack, x, err) from err
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.train(mode)
    return calls


def module_state(model: nn.Module, stand_in) -> dict[str, torch.Tensor]:
    """Stand-ins for ``functional_call(model, state, args, tie_weights=False)``: every parameter and buffer of
    every module, under the module's first path, as ``stand_in(name, tensor)`` (called once per tensor, so tied
    tensors share one; None keeps the tensor). Each module is listed once: a module reached by two paths
    (called twice) would otherwise be swapped twice and left holding the stand-in."""
    made: dict[int, torch.Tensor | None] = {}
    state = {}
    for path, module in model.named_modules():
        prefix = f"{path}." if path else ""
        for name, t in chain(module.named_parameters(recurse=False, remove_duplicate=False),
                             module.named_buffers(recurse=False, remove_duplicate=False)):
            if id(t) not in made:
                made[id(t)] = stand_in(prefix + name, t)
            if made[id(t)] is not None:
                state[prefix + name] = made[id(t)]
    return state


def _tagged(x: torch.Tensor) -> torch.Tensor:
    setattr(x, GEO_ATTR, Geometry(Axis.image(x.shape[2]), Axis.image(x.shape[3])))
    return x


def _meta(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().to(device="meta", dtype=dtype if t.is_floating_point() else t.dtype)


def _failure(model: nn.Module, stack, x: torch.Tensor, err: Exception) -> _Failed:
    from ..layers import display_names

    message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    inner = [(p, m, ins) for p, m, ins in stack if p]
    if not inner:
        return _Failed(f"the forward of {model_label(model)}", tuple(x.shape), message)
    path, module, inputs = inner[-1]
    name = display_names(model).get(path, path)
    return _Failed(f"layer {name} ({type(module).__name__})", tuple(inputs[0].shape) if inputs else "()", message)


# -- geometry propagation -------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    v = tuple(int(e) for e in v)
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _bind(args, kwargs, names: tuple[str, ...], defaults: dict) -> list:
    values = dict(zip(names, args))
    values.update(kwargs)
    return [values.get(n, defaults.get(n)) for n in names]


def _meta_linear_ok(x, w) -> bool:
    """A meta ``linear`` whose shapes fit (else the real op runs, to raise PyTorch's own error)."""
    return (isinstance(x, torch.Tensor) and isinstance(w, torch.Tensor) and x.is_meta and w.dim() == 2
            and x.dim() >= 1 and x.shape[-1] == w.shape[1] and x.dtype == w.dtype)


# ops whose output values come from their first argument only, or from no tensor at all
DATA_FROM_SELF = frozenset({"to", "type_as", "cpu", "cuda", "double", "float", "half", "bfloat16"})
NO_DATA = frozenset({"new_empty", "new_zeros", "new_ones", "new_full", "new_tensor", "empty_like", "zeros_like",
                     "ones_like", "full_like", "rand_like", "randn_like", "randint_like"})


class GeometryMode(TorchFunctionMode):
    """Tags each op's tensor outputs with the geometry composed from its inputs' tags."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        raw = getattr(func, "__name__", "")
        x = args[0] if args else kwargs.get("input")
        if raw.strip("_") in SAME_SHAPE and isinstance(x, torch.Tensor) and x.is_meta and x.is_floating_point():
            in_place = raw.endswith("_") or kwargs.get("inplace") is True or (len(args) > 1 and args[-1] is True)
            out = x if in_place else torch.empty_like(x)
        elif raw == "linear" and _meta_linear_ok(x, args[1] if len(args) > 1 else kwargs.get("weight")):
            out = x.new_empty((*x.shape[:-1], (args[1] if len(args) > 1 else kwargs["weight"]).shape[0]))
        else:
            out = func(*args, **kwargs)
        if raw in NO_DATA:            # x.new_zeros(...), torch.zeros_like(x): shape only, no pixels
            sources = ()
        elif raw in DATA_FROM_SELF:   # mean.to(x), mean.type_as(x): x gives only a device and dtype
            sources = args[:1]
        else:
            sources = (args, kwargs)
        tagged = [(t, getattr(t, GEO_ATTR)) for t in tree_leaves(sources)
                  if isinstance(t, torch.Tensor) and hasattr(t, GEO_ATTR)]
        outs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if tagged and outs:
            try:
                geo = self.rule(raw.strip("_"), args, kwargs, tagged, outs[0])
            except Exception:  # noqa: BLE001  (an op spelled in a way the rules do not expect)
                geo = UNKNOWN
            for t in outs:
                setattr(t, GEO_ATTR, geo)
        return out

    def rule(self, name: str, args, kwargs, tagged, out: torch.Tensor):
        if any(g == UNKNOWN for _, g in tagged):
            return UNKNOWN
        x = args[0] if args else kwargs.get("input")
        g = getattr(x, GEO_ATTR, None)
        if isinstance(g, Geometry) and x.dim() == 4 and out.dim() == 4:
            if name == "conv2d":
                _, w, _, s, p, d = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation"),
                                         {"stride": 1, "padding": 0, "dilation": 1})
                k, d = tuple(w.shape[-2:]), _pair(d)
                if isinstance(p, str):  # 'valid' or 'same' (PyTorch puts the odd pixel at the end)
                    p = (0, 0) if p == "valid" else tuple(d[i] * (k[i] - 1) // 2 for i in range(2))
                return self.window(g, x, out, k, _pair(s), _pair(p), d)
            if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d"):
                names = ("input", "kernel_size", "stride", "padding") + (("dilation",) if name != "avg_pool2d" else ())
                _, k, s, p, *d = _bind(args, kwargs, names, {"padding": 0, "dilation": 1})
                k = _pair(k)
                s = k if s is None or (not isinstance(s, int) and len(s) == 0) else _pair(s)
                return self.window(g, x, out, k, s, _pair(p), _pair(d[0]) if d else (1, 1))
            if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
                return self.adaptive(g, x.shape[-2:], out.shape[-2:])
            if name == "pad":
                _, pad, mode = _bind(args, kwargs, ("input", "pad", "mode"), {"mode": "constant"})
                if mode != "constant":
                    return UNKNOWN
                if len(pad) % 2 or any(v < 0 for v in pad):  # cropping: not a window rule we track
                    return UNKNOWN
                pad = list(pad) + [0] * (4 - len(pad))
                return self.window(g, x, out, (1, 1), (1, 1), (pad[2], pad[0]), (1, 1))  # a 1-tap window
        if name in MIXING or name.startswith("upsample"):
            return UNKNOWN
        return self.elementwise(tagged, out)

    def window(self, g: Geometry, x: torch.Tensor, out: torch.Tensor, k, s, p, d) -> Geometry:
        (n_h, n_w), (m_h, m_w) = x.shape[-2:], out.shape[-2:]
        return Geometry(g.h.window(k[0], s[0], p[0], d[0], n_h, m_h), g.w.window(k[1], s[1], p[1], d[1], n_w, m_w))

    def adaptive(self, g: Geometry, size_in, size_out):
        axes = []
        for axis, n_in, n_out in zip((g.h, g.w), size_in, size_out):
            if n_out == 1:
                axes.append(whole(axis))
            elif n_in % n_out == 0:
                axes.append(axis.window(n_in // n_out, n_in // n_out, 0, 1, n_in, n_out))
            else:
                return UNKNOWN  # windows of varying size: not one affine rule
        return Geometry(*axes)

    def elementwise(self, tagged, out: torch.Tensor):
        """Ops that keep positions (activations, BN, add, cat on channels); flatten and FC see everything.
        Several inputs of which one has a unit that sees nothing: unknown (see :mod:`.geometry`)."""
        if any(g != tagged[0][1] for _, g in tagged) and any(g.blind for _, g in tagged):
            return UNKNOWN
        if out.dim() != 4:
            fixed = [self.flat(t, g) for t, g in tagged]
            parts = [(a, 1) for a, _ in fixed], [(b, 1) for _, b in fixed]
            return Geometry(union(parts[0], 1), union(parts[1], 1))
        axes = []
        for i in (2, 3):
            n_out, parts = out.shape[i], []
            for t, g in tagged:
                axis = (g.h, g.w)[i - 2]
                if t.dim() != 4:  # its geometry is one fixed box already
                    parts.append((axis, 1))
                elif t.shape[i] == n_out:
                    parts.append((axis, n_out))
                elif t.shape[i] == 1:
                    parts.append((axis, 1))
                elif n_out == 1:  # a reduction over this axis (x.mean((2, 3), keepdim=True))
                    parts.append((whole(axis), 1))
                else:
                    return UNKNOWN
            axis = union(parts, n_out)
            if axis is None:
                return UNKNOWN
            axes.append(axis)
        return Geometry(*axes)

    def flat(self, t: torch.Tensor, g: Geometry) -> tuple[Axis, Axis]:
        """The field of everything in ``t``, as one fixed box per axis."""
        if t.dim() != 4:
            return g.h, g.w
        return whole(g.h), whole(g.w)
