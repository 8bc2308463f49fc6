"""A trained model, on disk and in memory: ``load_run(path) -> Run``.

A run directory (written by ``convlens.train``) holds::

    run.json                 manifest: arch spec, input shape, normalization, class names, data,
                             hyper-parameters, per-epoch history, library versions
    weights.safetensors      the model's state_dict (the last completed epoch's weights)
    checkpoint.safetensors   weights + optimizer state + epoch, for resuming (see checkpoint.py)

``load_run`` is the one model resolver: besides a run directory it takes any model source that
``sources.py`` knows (a ``.pt2`` program, TorchScript, a weight file with ``arch=``, your own
``file.py:factory``, a zoo name or grammar spec); ``wrap.py`` writes a run directory for such a model.
Nets take *normalized* input; ``run.pixel_model()`` takes images in [0, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..arch.grammar import parse
from ..errors import ConvLensError, InputError, RunError, expect
from ..io import load_tensors
from ..layers import lecture_names
from ..models.weights import load_weights, read_state_dict  # noqa: F401  (read_state_dict: the public name)
from .checkpoint import read_json

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
    finds ``net.features.conv1``. ``wraps`` names the attribute holding the user's module, so that
    layer lookup (``layers.resolve``) and error messages can speak of the user's model and its own
    module paths, without the ``net.`` prefix.
    """

    wraps = "net"

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
        a = self.manifest.get("arch") or {}
        source = a.get("source") or {}
        arch = a.get("spec") or a.get("class") or type(self.model).__name__
        if source.get("kind") in ("factory", "export", "torchscript", "instance", "pretrained"):
            arch += f" ({source['kind']}: {source.get('ref') or source.get('original') or source.get('file') or source.get('name') or source.get('class')})"
        count = len(self.class_names) if self.class_names else a.get("num_classes") or "?"
        lines = [f"Run({str(where)!r}, status={self.status!r})", f"  arch         {arch}",
                 f"  input_shape  {self.input_shape}", f"  classes      {count}"]
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

def load_run(source, *, arch: str | nn.Module | None = None, weights: str | Path | None = None,
             input_shape: Sequence[int] | None = None, class_names: Sequence[str] | int | None = None,
             mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             device: str | torch.device | None = None) -> Run:
    """The one model resolver: a run directory, or any model source (``sources.py``) -> a Run.

    ``source``: a run directory; a ``.pt2`` file (``torch.export.save``); a TorchScript file; a weight
    file (``.safetensors``, ``.pt``/``.pth`` loaded with ``weights_only=True``) with ``arch``;
    ``path/to/file.py:factory`` or ``package.module:factory`` (imports and runs your code); a zoo name or
    a grammar spec; an ``nn.Module``. ``weights``: a state_dict file loaded strictly into the model.
    For anything but a run directory: ``input_shape`` (C, H, W) defaults to the model's own
    (``model.input_shape``, a .pt2's example input, a zoo entry's); ``mean``/``std`` to no
    normalization; ``class_names`` (names, or a count) to unknown (``evaluate`` then takes the data's).
    With an ``nn.Module`` (as ``source`` or ``arch``) the module is used in place and stays on its device
    unless ``device`` is given; everything else is loaded onto ``device`` (default CPU).
    """
    if isinstance(source, Run):
        return source
    if not isinstance(source, (str, Path, nn.Module)):
        raise expect("source", "a run directory, a model file or reference, or an nn.Module", type(source).__name__)
    p = Path(source) if isinstance(source, (str, Path)) else None
    if p is not None and p.is_dir():
        if weights is not None:
            raise InputError(f"weights must be None for a run directory (it holds its own); got {weights}")
        return _load_dir(p, device, arch=arch)
    from .sources import model_label, resolve_source

    net, record, facts = resolve_source(source, arch=arch, input_shape=input_shape, device=device)
    if weights is not None:
        from ..models.weights import load_weights, read_state_dict

        wp = Path(weights)
        if not wp.is_file():
            raise RunError(f"{wp}: no such file; expected the weights (.safetensors, .pt, .pth) for {source}")
        load_weights(net, read_state_dict(wp), source=wp, label=model_label(net))
    keep_device = isinstance(source, nn.Module) or isinstance(arch, nn.Module)
    if device is not None or not keep_device:
        net = net.to(device or "cpu")
    shape = _input_shape(input_shape, net, facts)
    names, count = class_name_list(class_names)
    m, s = _norm(mean, std, shape[0] if shape else None)
    manifest = {"format": RUN_FORMAT, "status": "loaded", "source_file": str(source) if p is not None else None,
                "arch": {"source": record, "spec": record.get("spec"), "input_shape": list(shape) if shape else None,
                         "num_classes": count, "class": model_label(net)}}
    run = Run(net.eval(), names, m, s, shape, manifest, dir=None, path=p)
    if count is not None:
        check_outputs(run, count)
    return run


def _input_shape(given, net: nn.Module, facts: dict) -> tuple[int, int, int] | None:
    shape = given if given is not None else getattr(net, "input_shape", None)
    if shape is None and facts.get("example_shape") and len(facts["example_shape"]) == 4:
        shape = facts["example_shape"][1:]
    if shape is None:
        return None
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise expect("input_shape", "(C, H, W) with positive sizes", shape)
    return shape


def class_name_list(class_names) -> tuple[list[str] | None, int | None]:
    """(names or None, count or None) from names, a count, or None."""
    if class_names is None:
        return None, None
    if isinstance(class_names, int) and not isinstance(class_names, bool):
        if class_names < 1:
            raise expect("class_names", "names, or a positive count", class_names)
        return None, class_names
    names = [str(c) for c in class_names]
    if not names:
        raise expect("class_names", "a non-empty list of names (or a count)", names)
    if len(set(names)) != len(names):
        dup = next(c for c in names if names.count(c) > 1)
        raise InputError(f"class_names must be distinct; got {dup!r} twice")
    return names, len(names)


@torch.no_grad()
def output_count(run: Run) -> int:
    """Scores per image of the run's model: one forward of two grey images of its input shape (eval mode,
    restored); InputError naming the model when it cannot take them or returns no (N, K) scores."""
    label = run.manifest.get("arch", {}).get("class") or type(run.model).__name__
    c, h, w = run.input_shape
    ref = next(iter(run.model.parameters()), None)
    x = torch.full((2, c, h, w), 0.5, device=ref.device if ref is not None else "cpu")
    was = run.model.training
    run.model.eval()
    try:
        out = run.pixel_model()(x)
    except ConvLensError:
        raise
    except Exception as err:
        raise InputError(f"{label} cannot take input {h}x{w}x{c} (H x W x C; from --input or the model): "
                         f"{type(err).__name__}: {str(err)[:300]}") from None
    finally:
        run.model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        raise InputError(f"{label} must return class scores (N, K); on input {h}x{w}x{c} it returned "
                         f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return int(out.shape[1])


def check_outputs(run: Run, count: int) -> None:
    """InputError unless the run's model gives ``count`` scores per image (nothing to check without an input shape)."""
    if run.input_shape is None:
        return
    got = output_count(run)
    if got != count:
        label = run.manifest.get("arch", {}).get("class") or type(run.model).__name__
        raise InputError(f"the class names must number as many as the model's outputs: {label} gives {got} scores "
                         f"per image; got {count} class names")


def _load_dir(d: Path, device, *, arch=None) -> Run:
    mpath = d / MANIFEST
    if not mpath.exists():
        raise RunError(f"{d}: no {MANIFEST}; expected a run directory written by convlens.train or convlens wrap")
    manifest = read_json(mpath, what=_MANIFEST_WHAT)
    try:
        a = manifest["arch"]
        shape = tuple(int(v) for v in a["input_shape"])
        names = manifest.get("class_names")
        names = [str(c) for c in names] if names is not None else None
        mean, std = manifest["normalization"]["mean"], manifest["normalization"]["std"]
        kind = (a.get("source") or {}).get("kind", "grammar")
        if arch is not None and kind != "instance":
            raise InputError(f"arch must be None for a run directory (its manifest names the arch); got {arch!r}")
        if kind != "grammar":
            from .sources import rebuild

            net = rebuild(a["source"], d, arch_entry=a, arch=arch, device=device)
        else:
            net = build_net(a)
    except InputError:
        raise
    except ConvLensError as err:
        raise RunError(f"{mpath}: its model cannot be rebuilt: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise RunError(f"{mpath}: missing or malformed entry {err}; expected {_MANIFEST_WHAT}") from None
    wpath = d / (manifest.get("files") or {}).get("weights", WEIGHTS)
    if not wpath.exists():
        raise RunError(f"{wpath}: no such file; expected the run's weights (has training finished an epoch?)")
    state, _ = load_tensors(wpath, what="the run's weights")
    from .sources import model_label

    load_weights(net, state, source=wpath, label=model_label(net))
    m, s = _norm(mean, std, shape[0])
    keep_device = isinstance(arch, nn.Module) and device is None
    return Run((net if keep_device else net.to(device or "cpu")).eval(), names, m, s, shape, manifest, dir=d, path=d)


def build_net(arch: dict) -> nn.Module:
    """The GrammarNet a manifest's ``arch`` entry describes (random weights, global RNG untouched)."""
    dtype = getattr(torch, str(arch.get("dtype", "float32")), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"'dtype' {arch.get('dtype')!r}")
    with torch.random.fork_rng(devices=[]):
        net = parse(arch["spec"], input_shape=tuple(arch["input_shape"]), num_classes=int(arch["num_classes"]),
                    naming=arch.get("naming", "caffe"), layout=arch.get("layout", "named"))
    return net.to(dtype)


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
