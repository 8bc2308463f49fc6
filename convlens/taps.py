"""Layer taps: record what named layers output (and the gradients w.r.t. those outputs).

``capture(model, layers)`` is a context manager built on forward hooks::

    with capture(model, ["conv1", "fc6"]) as acts:
        model(x)
    acts["conv1"]                      # (N, C, H, W), detached, on the model's device

    with capture(model, ["conv5"], grads=True) as acts:
        model(x)[:, 3].sum().backward()
    acts.grads["conv5"]                # d(score) / d(conv5 output), same shape as acts["conv5"]

Guarantees (DESIGN.md, "leave the model as found"):

- names are lecture names (``conv3``) or ``named_modules()`` paths, resolved by
  ``convlens.layers.resolve`` *before* any hook is set (unknown name -> LayerNotFoundError with
  suggestions). For a run's PixelModel these are the user's net's own names (``layer2``; the
  ``net.layer2`` form works too), and ``acts.paths`` gives each layer's path as the user writes it;
- ``model`` may be a ``Run``: its pixel model is tapped (normalization, then the net), so the images
  fed to ``acts.forward`` are in [0, 1], as for every method given a run;
- the recorded value is the layer's true output: it is copied inside the hook, before a following
  in-place op (``nn.ReLU(inplace=True)``, ``x.relu_()``) can overwrite it. Gradients come from a
  tensor hook on the output itself, which PyTorch fires with the gradient w.r.t. the value *before*
  any later in-place change;
- every hook is removed in ``finally``; each module's train/eval mode and each parameter's
  ``requires_grad`` are restored, even when the forward raises.

Modules called more than once per forward (shared weights): ``calls="last"`` (default) keeps the
last call; ``calls="all"`` keeps a list with one tensor per call, in call order. Records start
afresh at each forward of ``model`` itself, so after the block they describe the last forward.

``stop_at_last=True`` skips the rest of the forward once every requested layer has run: the hook
raises a private exception right after the last one. Call ``acts.forward(x)`` (which swallows it
and returns None) inside the block; a plain ``model(x)`` also works, but then the exception leaves
the block early and the ``with`` swallows it, so make that call the block's last statement.
Feature extraction over early layers uses this to skip the later (often largest) layers. A
module that would run again later in the forward (shared weights) then holds its first call only.

``transform`` (a callable on the detached output, e.g. spatial pooling) runs inside the hook and
its result is stored instead of a copy: a reduction needs no copy of the full map. A dict maps
layer names to their own callables (names missing from it get a plain copy).

Dataset-wide methods share three helpers here: ``BatchSource`` (batches from an ImageDataset, a
tensor or an ``(images, labels)`` pair), ``eval_mode`` (a context restoring every module's mode)
and ``model_device`` (the device and dtype inputs must follow). ``scripted_path`` finds a TorchScript
module, which no hook and no ``TorchFunctionMode`` sees into; ``torchscript_error`` is the one message
refusing it, and ``resolve_hookable`` resolves a layer name refusing a TorchScript layer.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from typing import Callable, Iterable, Sequence

import numpy as np

import torch
from torch import nn

from .errors import InputError, expect
from .layers import is_run, resolve, user_path

__all__ = ["capture", "Activations", "activations", "as_module", "BatchSource", "eval_mode", "model_device",
           "scripted_path", "resolve_hookable", "torchscript_error", "no_layer_error"]


def as_module(model_or_run) -> nn.Module:
    """The module to hook and feed: a Run's pixel model (images in [0, 1]), an nn.Module as it is."""
    if is_run(model_or_run):
        return model_or_run.pixel_model()
    if not isinstance(model_or_run, nn.Module):
        raise expect("model", "a torch.nn.Module or a Run", type(model_or_run).__name__)
    return model_or_run


class _StopForward(Exception):
    """Raised from a hook after the last requested layer when ``stop_at_last=True``."""


class Activations(dict):
    """Name -> recorded output (a tensor, or a list of tensors with ``calls="all"``).

    ``grads`` maps the same names to gradients (filled by ``.backward()`` when ``grads=True``);
    ``paths`` maps each requested name to its module path as the user writes it (without a run's
    ``net.`` prefix). ``model`` is the module the hooks are on (a Run's pixel model). A name whose layer
    did not run raises KeyError naming it.
    """

    def __init__(self, model: nn.Module, names: Sequence[str], paths: dict[str, str]):
        super().__init__()
        self.model = model
        self.names = list(names)
        self.paths = dict(paths)
        self.grads: dict[str, torch.Tensor | list[torch.Tensor]] = {}
        self.stopped = False  # True when the last forward was cut short by stop_at_last

    def __missing__(self, name):
        if name in self.paths:
            raise KeyError(f"layer {name!r} ({self.paths[name]}) did not run during the forward pass")
        raise KeyError(f"{name!r} was not captured; captured layers: {', '.join(self.names)}")

    def forward(self, *args, **kwargs):
        """``model(*args, **kwargs)``; returns None when ``stop_at_last`` cut the forward short."""
        try:
            return self.model(*args, **kwargs)
        except _StopForward:
            return None

    def __repr__(self) -> str:
        parts = []
        for name in self.names:
            v = dict.get(self, name)
            shape = ("-" if v is None else
                     [tuple(t.shape) for t in v] if isinstance(v, list) else tuple(getattr(v, "shape", ())))
            parts.append(f"{name}: {shape}")
        return "Activations(" + ", ".join(parts) + ")"


def _names(layers: str | Iterable[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    try:
        names = list(dict.fromkeys(layers))
    except TypeError:
        raise expect("layers", "a layer name or a list of layer names", layers) from None
    if not names or not all(isinstance(n, str) for n in names):
        raise expect("layers", "a non-empty list of layer names (str)", layers)
    return names


def _copy(value, transform):
    """Detached copy of a module output (tensors inside tuples/lists/dicts too)."""
    if isinstance(value, torch.Tensor):
        return transform(value.detach()) if transform is not None else value.detach().clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_copy(v, transform) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v, transform) for k, v in value.items()}
    return value


class capture:  # noqa: N801 - used like a function: ``with capture(model, layers) as acts``
    """Record the outputs (and optionally gradients) of named layers; see the module docstring.

    ``capture(model_or_run, layers, *, grads=False, calls="last", stop_at_last=False, transform=None)``;
    a Run is tapped through its pixel model (feed it images in [0, 1]).
    """

    def __init__(self, model: nn.Module, layers: str | Iterable[str], *, grads: bool = False,
                 calls: str = "last", stop_at_last: bool = False,
                 transform: Callable[[torch.Tensor], torch.Tensor] | dict[str, Callable] | None = None):
        model = as_module(model)
        if calls not in ("last", "all"):
            raise expect("calls", "'last' or 'all'", calls)
        if stop_at_last and grads:
            raise InputError("stop_at_last must be False with grads=True (a cut forward has no output to "
                             "differentiate); got True")
        names = _names(layers)
        self.model = model
        self.modules = {}
        paths = {}
        for name in names:  # resolve everything before any hook is set
            path, self.modules[name] = resolve_hookable(model, name)
            paths[name] = user_path(model, path)
        self.grads, self.calls, self.stop_at_last, self.transform = bool(grads), calls, bool(stop_at_last), transform
        self.acts = Activations(model, names, paths)
        self._handles: list = []
        self._seen: set[str] = set()

    # ---- hooks -----------------------------------------------------------------------------------
    def _reset(self, module, args):
        self._seen.clear()
        self.acts.stopped = False
        dict.clear(self.acts)
        self.acts.grads.clear()

    def _hook_for(self, name: str):
        def hook(module, args, output):
            if self.grads:
                self._watch_grad(name, output)
            value = _copy(output, self.transform.get(name) if isinstance(self.transform, dict) else self.transform)
            if self.calls == "all":
                self.acts.setdefault(name, []).append(value)
            else:
                self.acts[name] = value
            self._seen.add(name)
            if self.stop_at_last and len(self._seen) == len(self.modules):
                self._seen.clear()
                self.acts.stopped = True
                raise _StopForward
        return hook

    def _watch_grad(self, name: str, output) -> None:
        if not isinstance(output, torch.Tensor):
            return  # gradients are recorded for tensor outputs only
        if not output.requires_grad:
            if not torch.is_grad_enabled():
                raise InputError(f"grads=True needs gradient mode for layer {name!r}; got a forward under "
                                 "torch.no_grad() or inference_mode()")
            return
        call = len(self.acts.get(name, [])) if self.calls == "all" else 0
        if self.calls == "all":
            self.acts.grads.setdefault(name, [])

        def on_grad(grad):
            g = grad.detach().clone()
            if self.calls == "all":
                slots = self.acts.grads[name]
                slots.extend([None] * (call + 1 - len(slots)))
                slots[call] = g
            else:
                self.acts.grads[name] = g
        output.register_hook(on_grad)

    def _make_input_require_grad(self, module, args, kwargs):
        """With grads=True, a tensor input that needs no grad is swapped for a leaf that does,
        so every layer output joins the graph even when the parameters are frozen."""
        if not torch.is_grad_enabled():
            return None
        swap = lambda a: (a.detach().requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point()
                          and not a.requires_grad else a)
        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}

    # ---- context ---------------------------------------------------------------------------------
    def __enter__(self) -> Activations:
        self._modes = [(m, m.training) for m in self.model.modules()]
        self._requires = [(p, p.requires_grad) for p in self.model.parameters()]
        try:
            self._handles.append(self.model.register_forward_pre_hook(self._reset))
            if self.grads:
                self._handles.append(self.model.register_forward_pre_hook(self._make_input_require_grad,
                                                                          with_kwargs=True))
            for name, module in self.modules.items():
                self._handles.append(module.register_forward_hook(self._hook_for(name)))
        except BaseException:
            self._restore()
            raise
        return self.acts

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._restore()
        return exc_type is not None and issubclass(exc_type, _StopForward)

    def _restore(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for m, mode in self._modes:
            m.training = mode
        for p, flag in self._requires:
            if p.requires_grad != flag:
                p.requires_grad_(flag)


def activations(model: nn.Module, x: torch.Tensor, layers: str | Iterable[str], *,
                stop_at_last: bool = True, calls: str = "last") -> Activations:
    """One forward of ``x`` through ``model`` (a Run: its pixel model, ``x`` in [0, 1]), returning the
    named layers' outputs (no grad)."""
    with torch.no_grad(), capture(model, layers, stop_at_last=stop_at_last, calls=calls) as acts:
        acts.forward(x)
    return acts


# ---- TorchScript: compiled code that no hook or TorchFunctionMode sees into -------------------------

def scripted_path(model: nn.Module) -> str | None:
    """The path of the first TorchScript module in ``model`` as the user writes it ('' for the model itself,
    also when it is a Run's whole net), or None."""
    from .layers import user_prefix

    model = as_module(model)
    found = next((path for path, m in model.named_modules() if isinstance(m, torch.jit.ScriptModule)), None)
    if found is not None and found + "." == user_prefix(model):
        return ""  # the user's whole model (a Run's net): "the model is TorchScript"
    return None if found is None else user_path(model, found)


def resolve_hookable(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """``resolve(model, name)``, refusing a TorchScript layer (its forward hooks never run)."""
    path, module = resolve(model, name)
    if isinstance(module, torch.jit.ScriptModule):
        raise torchscript_error(name, "TorchScript has no forward hooks to record it with")
    return path, module


def no_layer_error(model: nn.Module, scripted_why: str, message: str) -> InputError:
    """The error when ``model`` has no layer of the kind a method would pick by default: the TorchScript
    refusal (``scripted_why``) when a scripted module may hide such layers, else ``message``."""
    scripted = scripted_path(model)
    return torchscript_error(scripted, scripted_why) if scripted is not None else InputError(message)


def torchscript_error(path: str, why: str) -> InputError:
    """The one TorchScript refusal: ``the model's module 'path' is TorchScript, and <why>; <what to do>``."""
    what = f"the model's module {path!r}" if path else "the model"
    return InputError(f"{what} is TorchScript, and {why}; pass the model's eager nn.Module instead, export it "
                      "with torch.export.save (a .pt2 works with every method), or load the weights into its Python "
                      "class (convlens.load_run(weights_file, arch=YourModel()); a scripted model's state_dict() fits "
                      "its class)")


# ---- feeding a model: shared by dataset-wide methods (features, health) ---------------------------

def model_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where inputs go: the device and floating dtype of the model's first float tensor (CPU float32)."""
    model = as_module(model)
    ref = next((t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()), None)
    return (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)


@contextmanager
def eval_mode(model: nn.Module):
    """Eval mode inside the block; every module's own mode restored after (a Run: its pixel model's)."""
    model = as_module(model)
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


class BatchSource:
    """Batches of images from an ImageDataset (lazy ones read item by item), an (N, C, H, W)
    tensor or array, or an ``(images, labels)`` pair; ``labels`` (N,) int64 or None."""

    def __init__(self, data):
        labels, names = None, None
        if isinstance(data, np.ndarray):
            data = torch.from_numpy(data)
        if isinstance(data, (tuple, list)) and len(data) == 2:
            data, labels = data
        elif hasattr(data, "labels") and (hasattr(data, "files") or hasattr(data, "images")):  # never read
            # ``images`` of a lazy folder first: that would load every file
            labels, names = data.labels, getattr(data, "class_names", None)
        self.lazy = hasattr(data, "files") and getattr(data, "_cache", None) is None
        images = data if isinstance(data, torch.Tensor) or self.lazy else getattr(data, "images", None)
        if not self.lazy and (not isinstance(images, torch.Tensor) or images.ndim != 4):
            got = f"tensor {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(data).__name__
            raise expect("data", "an ImageDataset, an (N, C, H, W) tensor or an (images, labels) pair", got)
        self.data, self.images = data, images
        self.n = len(data) if self.lazy else len(images)
        if self.n == 0:
            raise expect("data", "at least one image", "0 images")
        if labels is not None:
            labels = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.int64).reshape(-1)
            if len(labels) != self.n:
                raise expect("labels", f"{self.n} labels, one per image", len(labels))
        self.labels, self.class_names = labels, list(names) if names is not None else None

    def batch(self, lo: int, hi: int) -> torch.Tensor:
        """Images ``lo:hi``, (B, C, H, W)."""
        if self.lazy:
            return torch.stack([self.data[i][0] for i in range(lo, hi)])
        return self.images[lo:hi]

    def take(self, rows: Sequence[int]) -> torch.Tensor:
        """The images at ``rows``, (B, C, H, W)."""
        if self.lazy:
            return torch.stack([self.data[int(i)][0] for i in rows])
        return self.images[torch.as_tensor(np.asarray(rows, dtype=np.int64))]

    def key(self) -> str:
        """A cheap fingerprint of the data (size, a strided sample of images, labels) for resuming."""
        h = hashlib.sha256(str(self.n).encode())
        if self.lazy:
            h.update("\n".join(map(str, self.data.files)).encode())
        else:
            step = max(1, self.n // 64)
            h.update(str((tuple(self.images.shape), str(self.images.dtype))).encode())
            h.update(self.images[::step].detach().cpu().contiguous().numpy().tobytes())
        if self.labels is not None:
            h.update(self.labels.tobytes())
        return h.hexdigest()[:16]
