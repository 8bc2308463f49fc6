"""Per-layer summary of any ``nn.Module``: shapes, activation memory, parameters, mult-adds, receptive fields.

``summary("vgg16")`` reproduces the lecture's VGG-16 table (INPUT 224x224x3 ... FC 1x1x1000, memory
and params per row, 138M parameters) without allocating a single activation: the forward runs on
the meta device (see :mod:`convlens.arch.tracing`). The result's ``repr`` is the table.

Counting rules (see ``docs/summary.md``):

* one row per call of a leaf module, plus a first ``input`` row; a module called twice gives
  ``name`` and ``name (2)``, and its parameters are counted on the first row only;
* **activations** are counted for the input and every row output, except outputs that are the
  input itself or a view of it (in-place ops, ``Flatten``, ``Identity``) and except element-wise
  activation functions and dropout, which deployed nets (Caffe, torchvision) run in place. This
  reproduces the lecture's memory column;
* **mult-adds** follow torchinfo: a convolution costs (weights + biases) x output positions, a
  recurrent layer (RNN, LSTM, GRU) its parameters x time steps, a linear layer (weights + biases) x
  positions (tokens of a sequence), any other layer with parameters its parameter count;
* **receptive fields** (``rf``, ``jump``, ``start``: first pixel of unit 0's field, not its centre;
  ``lo``/``hi``: the first/last image pixel any unit sees) come from op-by-op geometry, so residual
  and concatenating graphs are handled, and each unit's box is exact (see :mod:`convlens.arch.geometry`).

A forward that runs only on real tensors is traced by one real forward of a batch of one instead,
and ``Summary.note`` says so (see :mod:`convlens.arch.tracing`).
"""
from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from math import prod

import torch
from torch import nn

from ..errors import InputError, expect
from ..io import atomic_write_text
from ..layers import display_names, is_run, model_label
from .geometry import Axis, Geometry
from .grammar import check_input_shape
from .tracing import Call, trace

SCHEMA = "convlens.summary/1"
IN_PLACE_KINDS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Tanh, nn.Sigmoid, nn.LogSigmoid, nn.Softplus, nn.Softsign,
    nn.Tanhshrink, nn.Threshold, nn.Hardshrink, nn.Softshrink, nn.modules.dropout._DropoutNd, nn.Identity,
)


@dataclass(frozen=True)
class SummaryRow:
    """One call of one leaf module (or the input). Counts are per image."""

    name: str
    path: str
    type: str
    output_shape: tuple[int, ...]   # (H, W, C) as the lecture writes it; (1, 1, F) for vectors
    activations: int                # values in the output, per image
    counted: bool                   # whether the activations count toward the memory total
    bytes: int                      # activations x element size, per image
    weights: int
    biases: int
    macs: int                       # multiply-adds per image (torchinfo's rule)
    geometry: Geometry | None       # receptive-field geometry of the output; None when unknown
    call: int = 1

    @property
    def params(self) -> int:
        return self.weights + self.biases

    @property
    def rf(self):
        return _square(self.geometry.rf) if self.geometry else None

    @property
    def jump(self):
        return _square(self.geometry.jump) if self.geometry else None

    @property
    def start(self):
        return _square(self.geometry.start) if self.geometry else None

    def _bound(self, key: str):
        return _square((getattr(self.geometry.h, key), getattr(self.geometry.w, key))) if self.geometry else None

    def to_dict(self) -> dict:
        d = {"name": self.name, "path": self.path, "type": self.type, "output_shape": list(self.output_shape),
             "activations": self.activations, "counted": self.counted, "bytes": self.bytes,
             "weights": self.weights, "biases": self.biases, "params": self.params, "macs": self.macs,
             "rf": _json(self.rf), "jump": _json(self.jump), "start": _json(self.start),
             "lo": _json(self._bound("lo")), "hi": _json(self._bound("hi")), "call": self.call}
        axes = (self.geometry.h, self.geometry.w) if self.geometry else ()
        if any(a != Axis.affine(a.rf, a.jump, a.start, a.lo, a.hi, len(a.first)) for a in axes):
            d["edges"] = [[list(a.first), list(a.last)] for a in axes]  # exact per-unit bounds, where not affine
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SummaryRow":
        geo = None
        if d.get("edges"):
            rf, jump, start = (_pair(d[k]) for k in ("rf", "jump", "start"))
            geo = Geometry(*(Axis(rf[i], jump[i], start[i], tuple(first), tuple(last))
                             for i, (first, last) in enumerate(d["edges"])))
        elif d.get("rf") is not None:
            rf, jump, start, lo, hi = (_pair(d[k]) for k in ("rf", "jump", "start", "lo", "hi"))
            units = [d["output_shape"][i] if jump[i] else 1 for i in range(2)]
            geo = Geometry(*(Axis.affine(rf[i], jump[i], start[i], lo[i], hi[i], units[i]) for i in range(2)))
        return cls(d["name"], d.get("path", ""), d["type"], tuple(d["output_shape"]), d["activations"],
                   d.get("counted", True), d.get("bytes", 0), d["weights"], d["biases"], d["macs"], geo,
                   d.get("call", 1))


@dataclass(frozen=True, repr=False)
class Summary:
    """The per-layer table and its totals; ``repr`` prints the table, ``to_dict``/``save`` give JSON."""

    model: str
    input_size: tuple[int, int, int]    # (C, H, W)
    batch_size: int
    dtype: str
    bytes_per_value: int
    rows: tuple[SummaryRow, ...]
    total_params: int
    total_weights: int                  # parameters without biases (the lecture's count)
    trainable_params: int
    param_bytes: int
    note: str = ""                      # how the forward was traced, when not on the meta device

    @property
    def total_biases(self) -> int:
        return self.total_params - self.total_weights

    @property
    def total_activations(self) -> int:
        """Values kept per image by the forward pass (the lecture's "TOTAL memory")."""
        return sum(r.activations for r in self.rows if r.counted)

    @property
    def total_macs(self) -> int:
        return sum(r.macs for r in self.rows)

    @property
    def forward_bytes(self) -> int:
        """Activation bytes of one forward pass of the whole batch."""
        return sum(r.bytes for r in self.rows if r.counted) * self.batch_size

    @property
    def backward_bytes(self) -> int:
        """One gradient per kept activation: as much again, so forward + backward is ~2x forward."""
        return self.forward_bytes

    def __getitem__(self, key: int | str) -> SummaryRow:
        """A row by position, shown name (``"conv5_3"``, ``"fc (2)"``) or module path (first call)."""
        if isinstance(key, int):
            return self.rows[key]
        for r in self.rows:
            if r.name == key or (r.path == key and r.call == 1):
                return r
        from ..errors import LayerNotFoundError, suggest

        names = [r.name for r in self.rows]
        raise LayerNotFoundError(f"'{key}' is not a row of this summary.{suggest(str(key), names)} "
                                 f"Rows: {', '.join(names[:12])}{' …' if len(names) > 12 else ''}")

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "input_size": list(self.input_size),
                "batch_size": self.batch_size, "dtype": self.dtype, "bytes_per_value": self.bytes_per_value,
                "layers": [r.to_dict() for r in self.rows],
                "total_params": self.total_params, "total_weights": self.total_weights,
                "total_biases": self.total_biases, "trainable_params": self.trainable_params,
                "param_bytes": self.param_bytes, "total_activations": self.total_activations,
                "total_macs": self.total_macs, "forward_bytes": self.forward_bytes,
                "backward_bytes": self.backward_bytes, "note": self.note}

    def to_json(self, indent: int | None = 2) -> str:
        """JSON text; with ``indent``, one line per layer (readable and diffable)."""
        d = self.to_dict()
        if indent is None:
            return json.dumps(d)
        layers = d.pop("layers")
        pad = " " * indent
        rows = ",\n".join(pad * 2 + json.dumps(r) for r in layers)
        return json.dumps(d, indent=indent)[:-2] + f',\n{pad}"layers": [\n{rows}\n{pad}]\n}}'


    def save(self, path: str | os.PathLike) -> None:
        """Write the JSON atomically (a temporary file in the same folder, then ``os.replace``)."""
        atomic_write_text(path, self.to_json())

    @classmethod
    def from_dict(cls, d: dict) -> "Summary":
        if d.get("schema", SCHEMA) != SCHEMA:
            raise InputError(f"a summary file must have schema {SCHEMA!r}; got {d.get('schema')!r}")
        return cls(d["model"], tuple(d["input_size"]), d["batch_size"], d["dtype"], d["bytes_per_value"],
                   tuple(SummaryRow.from_dict(r) for r in d["layers"]), d["total_params"], d["total_weights"],
                   d["trainable_params"], d["param_bytes"], d.get("note", ""))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Summary":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def __repr__(self) -> str:
        from .summary_table import render

        return render(self)

    def _repr_html_(self) -> str:
        return f"<pre>{html.escape(repr(self))}</pre>"


def summary(model: nn.Module | str, input_size: tuple[int, int, int] | None = None, *, batch_size: int = 1,
            dtype: torch.dtype | None = None) -> Summary:
    """Summarize ``model`` (an ``nn.Module``, a ``Run``, a zoo name such as ``"vgg16"``, or a grammar spec).

    A Run is summarized as its net (``run.model``, the layers as you wrote them, without the
    normalization in front) at the run's input shape. ``input_size`` is (C, H, W); it defaults to the
    run's or the model's ``input_shape`` (grammar and zoo models).
    ``dtype`` (default: the model's floating dtype) sets the bytes per value. Nothing is allocated
    beyond meta tensors, except for a forward that runs only on real tensors: then one real forward of
    a batch of one runs instead, and ``note`` says so. The model is left as found (mode, hooks,
    parameters, devices).
    """
    if input_size is not None:
        input_size = _check_size(input_size)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise expect("batch_size", "a positive int", batch_size)
    model, label, input_size = _model_and_size(model, input_size, "e.g. summary(model, (3, 224, 224))")
    dtype = _dtype(model, dtype)
    if any(isinstance(p, nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise InputError(f"{label} has uninitialized (lazy) parameters; run one forward pass first")
    traced = trace(model, input_size, batch_size=batch_size, dtype=dtype)
    return Summary(label, input_size, batch_size, str(dtype).replace("torch.", ""), dtype.itemsize,
                   tuple(_rows(model, traced.input, traced.calls, dtype.itemsize)), *_totals(model), traced.note)


# -- helpers -----------------------------------------------------------------------------------------------
def _rows(model: nn.Module, x: torch.Tensor, calls: list[Call], itemsize: int) -> list[SummaryRow]:
    """The input row, then one row per call; ``itemsize`` bytes per floating value."""
    shown = display_names(model)
    batch, c, h, w = x.shape
    rows = [SummaryRow("input", "", "Input", (h, w, c), c * h * w, True, c * h * w * itemsize, 0, 0, 0,
                       Geometry(Axis.image(h), Axis.image(w)))]
    seen: set[int] = set()
    for call in calls:
        module, out = call.module, call.output
        weights = biases = 0
        for name, p in module.named_parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                biases += p.numel() if name.endswith("bias") else 0
                weights += 0 if name.endswith("bias") else p.numel()
        name = (shown.get(call.path) or type(module).__name__) + (f" ({call.call})" if call.call > 1 else "")
        n = out.numel() // batch if out is not None else 0
        counted = out is not None and not _aliases(out, call.inputs) and not isinstance(module, IN_PLACE_KINDS)
        size = 0 if out is None else itemsize if out.is_floating_point() else out.element_size()
        rows.append(SummaryRow(name, call.path, type(module).__name__, _hwc(out), n, counted, n * size, weights,
                               biases, _macs(module, out, batch), call.geometry, call.call))
    return rows


def _totals(model: nn.Module) -> tuple[int, int, int, int]:
    named = list(model.named_parameters())
    total = sum(p.numel() for _, p in named)
    biases = sum(p.numel() for n, p in named if n.endswith("bias"))
    trainable = sum(p.numel() for _, p in named if p.requires_grad)
    return total, total - biases, trainable, sum(p.numel() * p.element_size() for _, p in named)


def _macs(module: nn.Module, out: torch.Tensor | None, batch: int) -> int:
    """Multiply-adds per image, as torchinfo counts them (ModelStatistics / LayerInfo.calculate_macs)."""
    n = sum(p.numel() for p in module.parameters(recurse=False))
    if not n or out is None:
        return 0
    if "Conv" in type(module).__name__:
        return n * prod(out.shape[2:])                      # every output position applies the kernel
    if isinstance(module, nn.RNNBase):                      # every time step applies every weight
        return n * out.shape[1 if module.batch_first and out.dim() == 3 else 0]
    if isinstance(module, nn.Linear):
        return n * (out.numel() // (batch * out.shape[-1]))  # tokens for (N, T, F) inputs; 1 for (N, F)
    return n


def _aliases(out: torch.Tensor, inputs: list[torch.Tensor]) -> bool:
    """True when ``out`` is one of the inputs or a view sharing its storage (in place, flatten)."""
    base = out._base if out._base is not None else out
    return any(out is t or base is t or (t._base is not None and base is t._base) for t in inputs)


def _hwc(t: torch.Tensor | None) -> tuple[int, int, int]:
    """(N, C, H, W) -> (H, W, C) as the lecture writes it; (N, F) -> (1, 1, F); (N, C, L) -> (1, L, C)."""
    if t is None:
        return 0, 0, 0
    c, *spatial = tuple(t.shape[1:]) or (1,)
    spatial = [1] * max(0, 2 - len(spatial)) + spatial
    return spatial[-2], spatial[-1], c * prod(spatial[:-2])  # extra leading dims (e.g. depth) fold into C


def _model_and_size(model, input_size, example: str) -> tuple[nn.Module, str, tuple[int, int, int]]:
    """(the module to trace, its label, the input size (C, H, W)) of a model, a Run, a zoo name or a spec;
    ``input_size`` None: the run's or the model's ``input_shape``."""
    shape = model.input_shape if is_run(model) else None
    module, label = _resolve_model(model, input_size)
    if input_size is None:
        shape = shape if shape is not None else getattr(module, "input_shape", None)
        if shape is None:
            raise InputError(f"input_size is required for a {label}: pass (C, H, W), {example}")
        input_size = _check_size(shape)
    return module, label, input_size


def _resolve_model(model, input_size) -> tuple[nn.Module, str]:
    from . import zoo

    if is_run(model):
        model = model.model  # a Run: its net, as the user wrote it
    if isinstance(model, nn.Module):
        return model, model_label(model)
    if not isinstance(model, str):
        raise expect("model", "an nn.Module, a Run, a zoo name such as 'vgg16' or a grammar spec",
                     type(model).__name__)
    with torch.device("meta"):  # parameters without storage: a summary of VGG-16 allocates nothing
        return zoo.build(model, input_shape=input_size), model.lower() if zoo.is_zoo_name(model) else model


def _check_size(size) -> tuple[int, int, int]:
    return check_input_shape(size, "input_size")


def _dtype(model: nn.Module, dtype) -> torch.dtype:
    if dtype is None:
        return next((t.dtype for t in model.parameters() if t.is_floating_point()), torch.get_default_dtype())
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise expect("dtype", "a floating torch.dtype such as torch.float32", dtype)
    return dtype


def _square(v: tuple[int, int]):
    return v[0] if v[0] == v[1] else v


def _json(v):
    return list(v) if isinstance(v, tuple) else v


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])
