"""A trained model, on disk and in memory: ``load_run(path) -> Run``.

A run directory (written by ``convlens.train``) holds::

    run.json                 manifest: arch spec, input shape, normalization, class names, data,
                             hyper-parameters, per-epoch history, library versions
    weights.safetensors      the model's state_dict (the last completed epoch's weights)
    checkpoint.safetensors   weights + optimizer state + epoch, for resuming (see checkpoint.py)

``load_run`` also reads a bare state_dict (``.safetensors``; ``.pt``/``.pth`` through
``torch.load(weights_only=True)``, never unpickling code) together with ``arch=`` (a zoo name, a
grammar spec, or your own ``nn.Module`` to fill), and a TorchScript file (``torch.jit.load``).
Nets take *normalized* input; ``run.pixel_model()`` takes images in [0, 1].
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..arch.grammar import describe, parse
from ..arch.zoo import build, get_entry, is_zoo_name
from ..errors import ConvLensError, InputError, RunError, expect
from ..layers import lecture_names
from .checkpoint import load_tensors, read_json

MANIFEST = "run.json"
WEIGHTS = "weights.safetensors"
CHECKPOINT = "checkpoint.safetensors"
RUN_FORMAT = "convlens-run"
_MANIFEST_WHAT = "a convlens run manifest (written by convlens.train)"


class Normalize(nn.Module):
    """(x - mean) / std per channel; mean and std are buffers, so they follow ``.to(device)``."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).reshape(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).reshape(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)  # (N, C, H, W); follows x if the net moved alone


class PixelModel(nn.Module):
    """``Normalize`` then the net: takes images in [0, 1]. Shares the net (no copy).

    ``lecture_names`` are the net's, re-prefixed with ``net.`` so that ``resolve(pm, "conv1")``
    finds ``net.features.conv1``.
    """

    def __init__(self, net: nn.Module, mean: torch.Tensor, std: torch.Tensor, *,
                 class_names: Sequence[str] | None = None, input_shape: tuple[int, int, int] | None = None):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.net = net
        self.lecture_names = {name: f"net.{path}" for name, path in lecture_names(net).items()}
        self.class_names = list(class_names) if class_names is not None else None
        self.input_shape = input_shape if input_shape is not None else getattr(net, "input_shape", None)
        ref = next(iter(net.parameters()), None)
        if ref is not None:
            self.normalize.to(device=ref.device, dtype=ref.dtype)
        self.train(net.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ref = next(self.net.parameters(), None)
        if ref is not None and x.dtype != ref.dtype:
            x = x.to(ref.dtype)  # pixels arrive as float32; a float64/float16 net gets its own dtype
        return self.net(self.normalize(x))


@dataclass(eq=False)
class Run:
    """A trained model with everything needed to feed it: normalization, class names, shape.

    ``model`` is the bare net (eval mode) taking normalized input; ``pixel_model()`` wraps it to
    take [0, 1] pixels. ``dir`` is the run directory (None for a model loaded from one file).
    """

    model: nn.Module
    class_names: list[str] | None  # None: a weight file that does not name its classes
    mean: torch.Tensor  # (C,) or (1,) for identity normalization
    std: torch.Tensor
    input_shape: tuple[int, int, int] | None
    manifest: dict = field(default_factory=dict)
    dir: Path | None = None
    path: Path | None = None
    already_done: bool = False  # set by train() when the run was complete and nothing was trained
    _pixel: PixelModel | None = field(default=None, repr=False)

    @property
    def history(self) -> list[dict]:
        return list(self.manifest.get("history", []))

    @property
    def status(self) -> str:
        return self.manifest.get("status", "loaded")

    @property
    def device(self) -> torch.device:
        ref = next(iter(self.model.parameters()), None)
        return ref.device if ref is not None else torch.device("cpu")

    def preprocess(self, images01: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (N, C, H, W) or (C, H, W) -> normalized, on the images' device/dtype."""
        mean = self.mean.to(images01.device, images01.dtype)
        std = self.std.to(images01.device, images01.dtype)
        shape = (-1, 1, 1)
        return (images01 - mean.reshape(shape)) / std.reshape(shape)

    def pixel_model(self) -> PixelModel:
        """The net behind its normalization: an nn.Module taking [0, 1] pixels (shares the net)."""
        if self._pixel is None or self._pixel.net is not self.model:
            self._pixel = PixelModel(self.model, self.mean, self.std, class_names=self.class_names,
                                     input_shape=self.input_shape)
        return self._pixel

    def __repr__(self) -> str:
        where = self.dir or self.path or "memory"
        arch = (self.manifest.get("arch") or {}).get("spec") or type(self.model).__name__
        lines = [f"Run({str(where)!r}, status={self.status!r})", f"  arch         {arch}",
                 f"  input_shape  {self.input_shape}",
                 f"  classes      {len(self.class_names) if self.class_names else '?'}"]
        hist = self.history
        if hist:
            last = hist[-1]
            test = f", test acc {last['test_acc']:.4f}" if last.get("test_acc") is not None else ""
            lines.append(f"  epochs       {len(hist)}: train acc {last['train_acc']:.4f}{test}")
        return "\n".join(lines)


def model_and_run(model_or_run) -> tuple[nn.Module, "Run | None"]:
    """(the model to feed [0, 1] pixels, the Run or None) for a Run, a run path or an nn.Module."""
    if isinstance(model_or_run, (str, Path)):
        model_or_run = load_run(model_or_run)
    if isinstance(model_or_run, Run):
        return model_or_run.pixel_model(), model_or_run
    if not isinstance(model_or_run, nn.Module):
        raise expect("model_or_run", "a Run, a run directory or an nn.Module", type(model_or_run).__name__)
    return model_or_run, None


# ---- loading -------------------------------------------------------------------------------------

def load_run(path: str | Path, *, arch: str | nn.Module | None = None,
             input_shape: tuple[int, int, int] | None = None, class_names: Sequence[str] | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             device: str | torch.device | None = None) -> Run:
    """Load a run directory, a state_dict file (with ``arch``) or a TorchScript file.

    For a file, ``mean``/``std`` default to no normalization and ``class_names`` to None (unknown:
    ``evaluate`` then takes the data's);
    ``input_shape`` defaults to the zoo entry's (required for a grammar spec). With ``arch`` an
    ``nn.Module``, the weights are loaded into it in place (it stays on its device unless
    ``device`` is given); everything else is loaded onto ``device`` (default CPU).
    """
    p = Path(path)
    if not p.exists():
        raise RunError(f"{p}: no such file or directory; expected a run directory (holding {MANIFEST}) "
                       "or a weight file (.safetensors, .pt, .pth, TorchScript)")
    if p.is_dir():
        if arch is not None:
            raise InputError(f"arch must be None for a run directory (its manifest names the arch); got {arch!r}")
        return _load_dir(p, device)
    if _is_torchscript(p):
        return _load_script(p, input_shape, class_names, mean, std, device)
    if arch is None:
        raise RunError(f"{p}: a bare weight file needs arch= (a zoo name, a grammar spec or an nn.Module) "
                       "to know which network the weights belong to")
    state = read_state_dict(p)
    net, shape = _build_for_file(arch, state, input_shape, class_names)
    load_weights(net, state, source=p)
    names = list(class_names) if class_names is not None else None
    channels = shape[0] if shape else None
    m, s = _norm(mean, std, channels)
    manifest = {"format": RUN_FORMAT, "status": "loaded", "source_file": str(p),
                "arch": {"spec": _spec_of(net), "input_shape": list(shape) if shape else None}}
    if device is not None or not isinstance(arch, nn.Module):
        net = net.to(device or "cpu")
    return Run(net.eval(), names, m, s, shape, manifest, dir=None, path=p)


def _load_dir(d: Path, device) -> Run:
    mpath = d / MANIFEST
    if not mpath.exists():
        raise RunError(f"{d}: no {MANIFEST}; expected a run directory written by convlens.train")
    manifest = read_json(mpath, what=_MANIFEST_WHAT)
    try:
        a = manifest["arch"]
        shape = tuple(int(v) for v in a["input_shape"])
        names = [str(c) for c in manifest["class_names"]]
        mean, std = manifest["normalization"]["mean"], manifest["normalization"]["std"]
        net = build_net(a)
    except ConvLensError as err:
        raise RunError(f"{mpath}: its arch cannot be rebuilt: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{mpath}: missing or malformed entry {err}; expected {_MANIFEST_WHAT}") from None
    wpath = d / WEIGHTS
    if not wpath.exists():
        raise RunError(f"{wpath}: no such file; expected the run's weights (has training finished an epoch?)")
    state, _ = load_tensors(wpath, what="the run's weights")
    load_weights(net, state, source=wpath)
    m, s = _norm(mean, std, shape[0])
    return Run(net.to(device or "cpu").eval(), names, m, s, shape, manifest, dir=d, path=d)


def build_net(arch: dict) -> nn.Module:
    """The GrammarNet a manifest's ``arch`` entry describes (random weights, global RNG untouched)."""
    dtype = getattr(torch, str(arch.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"'dtype' {arch.get('dtype')!r}")
    with torch.random.fork_rng(devices=[]):
        net = parse(arch["spec"], input_shape=tuple(arch["input_shape"]), num_classes=int(arch["num_classes"]),
                    naming=arch.get("naming", "caffe"), layout=arch.get("layout", "named"))
    return net.to(dtype)


def load_weights(net: nn.Module, state: dict[str, torch.Tensor], *, source: Path) -> None:
    """``net.load_state_dict(state)``, or RunError listing (briefly) what does not match."""
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (net wants {tuple(own[k].shape)})"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    problems = [f"{what}: {_brief(keys)}" for what, keys in
                (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", shapes)) if keys]
    if problems:
        raise RunError(f"{source}: weights do not match the {type(net).__name__}; " + "; ".join(problems))
    net.load_state_dict(state)


def _brief(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", … ({len(items)} in all)" if len(items) > n else "")


def read_state_dict(p: Path) -> dict[str, torch.Tensor]:
    """A state_dict from .safetensors, or from a torch.save file with ``weights_only=True``."""
    if p.suffix == ".safetensors":
        state, _ = load_tensors(p, what="a state_dict in safetensors format")
        return _strip_prefix(state)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise RunError(f"{p}: holds pickled Python objects that torch.load(weights_only=True) refuses; convlens "
                       "never unpickles code. Re-save the weights with torch.save(model.state_dict(), path) "
                       "or safetensors.torch.save_file") from None
    except Exception as err:  # truncated zip, not a torch file at all, ...
        raise RunError(f"{p}: not a readable PyTorch weight file ({type(err).__name__}: {str(err)[:200]})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise RunError(f"{p}: expected a state_dict (a dict of tensor names to tensors); got {type(obj).__name__}")
    return _strip_prefix(obj)


def _strip_prefix(state: dict) -> dict:
    """Drop the ``module.`` prefix that DataParallel/DistributedDataParallel add to every key."""
    if state and all(k.startswith("module.") for k in state):
        return {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def _head(net: nn.Module) -> tuple[str, int] | None:
    """(state_dict key, output width) of the net's last Linear (else last Conv2d): its class count."""
    last = None
    for kind in (nn.Linear, nn.Conv2d):
        for path, m in net.named_modules():
            if isinstance(m, kind):
                last = (f"{path}.weight" if path else "weight", m.weight.shape[0])
        if last is not None:
            return last
    return None


def _build_for_file(arch, state, input_shape, class_names) -> tuple[nn.Module, tuple | None]:
    """The net to load ``state`` into, sized to the state's class count (or to ``class_names``)."""
    if isinstance(arch, nn.Module):
        shape = input_shape or getattr(arch, "input_shape", None)
        return arch, (tuple(shape) if shape else None)
    if not isinstance(arch, str):
        raise InputError(f"arch must be a zoo name, a grammar spec or an nn.Module; got {type(arch).__name__}")
    if is_zoo_name(arch):
        shape = tuple(input_shape or get_entry(arch).input_shape)
    elif input_shape is None:
        raise InputError(f"input_shape must be given as (C, H, W) to build the grammar spec {arch!r}; got None")
    else:
        shape = tuple(input_shape)
    with torch.random.fork_rng(devices=[]):
        net = _make(arch, shape, None)
        head = _head(net)
        n_out = int(state[head[0]].shape[0]) if head and head[0] in state and state[head[0]].dim() else None
        if class_names is not None and n_out is not None and len(class_names) != n_out:
            raise InputError(f"class_names must have one name per output ({n_out}); got {len(class_names)} names")
        if n_out is not None and head and n_out != head[1]:
            net = _make(arch, shape, n_out)
    return net, shape


def _make(arch: str, shape: tuple[int, int, int], num_classes: int | None) -> nn.Module:
    return build(arch, input_shape=shape, num_classes=num_classes)


def _spec_of(net: nn.Module) -> str | None:
    try:
        return describe(net)
    except ConvLensError:
        return None


def _norm(mean, std, channels: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if mean is None and std is None:
        return torch.zeros(1), torch.ones(1)
    m = torch.as_tensor(mean if mean is not None else [0.0], dtype=torch.float32).reshape(-1)
    s = torch.as_tensor(std if std is not None else [1.0], dtype=torch.float32).reshape(-1)
    for name, t in (("mean", m), ("std", s)):
        if channels is not None and len(t) not in (1, channels):
            raise InputError(f"{name} must have 1 or {channels} values (one per channel); got {t.tolist()}")
    if (s <= 0).any():
        raise InputError(f"std must be positive; got {s.tolist()}")
    return m, s


# ---- TorchScript -----------------------------------------------------------------------------------

def _is_torchscript(p: Path) -> bool:
    """A TorchScript archive is a zip with a ``code/`` folder (a torch.save zip has none)."""
    if p.suffix == ".safetensors" or not zipfile.is_zipfile(p):
        return False
    with zipfile.ZipFile(p) as z:
        return any("/code/" in name or name.startswith("code/") for name in z.namelist())


def _load_script(p: Path, input_shape, class_names, mean, std, device) -> Run:
    try:
        net = torch.jit.load(str(p), map_location=device or "cpu")
    except Exception as err:
        raise RunError(f"{p}: not a loadable TorchScript file ({type(err).__name__}: {str(err)[:200]})") from None
    shape = tuple(int(v) for v in input_shape) if input_shape is not None else None
    names = list(class_names) if class_names is not None else None
    m, s = _norm(mean, std, shape[0] if shape else None)
    manifest: dict[str, Any] = {"format": RUN_FORMAT, "status": "loaded", "source_file": str(p),
                                "arch": {"spec": None, "input_shape": list(shape) if shape else None}}
    return Run(net.eval(), names, m, s, shape, manifest, dir=None, path=p)
