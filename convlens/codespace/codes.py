"""CNN codes: the vector a network hands to its classifier, for every image of a dataset.

The lecture's "Check the (image) code space": "A CNN transforms the image to 4096 numbers that are
then linearly classified" -- the "CNN code" (AlexNet's fc7 output after its ReLU; Krizhevsky et al.,
NIPS 2012, whose Fig. 4 shows nearest neighbours in this space). ``codes(model_or_run, data, layer)``
returns them as one (N, D) float32 array (:class:`Codes`), or any layer's pooled activations.

Extraction is ``convlens.features`` (one implementation): streamed in batches under ``no_grad``,
resumable and shardable (``rank``/``world_size``), cached with ``out=`` as ``.npy`` memmaps plus a
JSON manifest (``features.json``; ``codes.json`` beside it says which layer was read), reloaded by
``Codes.load(out)`` without copying.

**The default layer** is the input of the classifier: the last ``nn.Linear`` to run in a forward of
a few sample images. Its input is compared with every module's output (recorded when the module
returns, before a later in-place op can change it; a (N, C, H, W) output counts flattened):

* a grammar net's conv/fc layer whose post-ReLU output matches -> that name (``fc7``, read after
  its ReLU), as ``convlens.probe`` names layers;
* else the last module to finish whose output matches (``gap4``, ``classifier.3``, a pooling layer
  whose output the forward flattens);
* else, when the forward computes the vector itself (``fc(x.mean((2, 3)))``, ``fc(x.relu_())``),
  ``"<classifier>:input"``: a forward pre-hook on the classifier reads exactly what it receives.

Any layer can be named ``"<layer>:input"`` to read what that module receives. ``pool``: for the
default layer ``"flat"`` (the classifier's input exactly), for a named layer ``"avg"`` (per-channel
spatial mean; ``"max"`` and ``"flat"`` as in ``convlens.features``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DataError, InputError, expect
from ..layers import model_label
from ..inputs import as_images
from ..io import atomic_write_json, read_json

INPUT_SUFFIX = ":input"
META = "codes.json"
_TAP = "code"  # the Identity of _InputOf whose output is a module's input

__all__ = ["Codes", "codes", "code_layer", "pixel_codes", "thumbnails"]


@dataclass(eq=False)
class Codes:
    """(N, D) float32 codes of N images (``vectors``; a read-only memmap when loaded from disk).

    ``layer`` is the name shown (``fc7``, ``gap4``, ``fc:input``), ``tapped`` what was read (``relu7``
    for ``fc7`` of a grammar net; pass it as ``layer=`` to encode more images the same way);
    ``indices`` (N,) the rows of the source data, ``labels`` (N,) int64 or None, ``shape`` the
    per-image output shape before pooling. ``data`` (not saved) serves thumbnails (``images``).
    """

    vectors: np.ndarray
    indices: np.ndarray
    labels: np.ndarray | None
    layer: str
    tapped: str
    pool: str
    shape: tuple[int, ...] = ()
    class_names: list[str] | None = None
    model: str = ""
    data_label: str = ""
    data_spec: dict | None = None
    data: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def dims(self) -> int:
        return int(self.vectors.shape[1]) if self.vectors.ndim == 2 else 0

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.vectors, dtype=dtype)

    def __repr__(self) -> str:
        read = f" (read at {self.tapped})" if self.tapped != self.layer else ""
        where = f" from {tuple(self.shape)}" if self.shape else ""
        return (f"Codes({len(self)} x {self.dims} of {self.layer}{read}, pool={self.pool!r}{where}; "
                f"model {self.model or '?'}, data {self.data_label or '?'})")

    def subset(self, rows: Sequence[int] | np.ndarray) -> "Codes":
        """The codes at ``rows`` (positions in this object), same metadata."""
        rows = np.asarray(rows, dtype=np.int64)
        return Codes(np.asarray(self.vectors[rows]), self.indices[rows],
                     None if self.labels is None else self.labels[rows], self.layer, self.tapped, self.pool,
                     self.shape, self.class_names, self.model, self.data_label, self.data_spec, self.data)

    def images(self, rows: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """(B, C, H, W) source images of ``rows`` (positions in this object; default all), e.g. thumbnails.

        Needs the source data: kept from ``codes(...)``, or rebuilt from its ``datasets.load`` spec."""
        from ..taps import BatchSource

        if self.data is None and self.data_spec:
            from .. import datasets

            self.data = datasets.load(**self.data_spec)
        if self.data is None:
            raise InputError("these codes keep no source data to draw images from; pass data= to Codes.load "
                             "(the images the codes were computed from); got None")
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        return BatchSource(self.data).take(self.indices[rows])

    def to_dict(self) -> dict:
        """Everything but the arrays."""
        return {"format": "convlens-codes", "layer": self.layer, "tapped": self.tapped, "pool": self.pool,
                "n": len(self), "dims": self.dims, "shape": list(self.shape), "class_names": self.class_names,
                "model": self.model, "data": self.data_label, "data_spec": self.data_spec}

    def save(self, path: str | os.PathLike) -> Path:
        """The ``convlens.features`` folder layout plus ``codes.json``; ``Codes.load`` reads it back."""
        from ..insight.features import Features

        folder = Features({self.tapped: np.asarray(self.vectors, dtype=np.float32)}, self.indices, self.labels,
                          self.pool, {self.tapped: self.tapped}, {self.tapped: tuple(self.shape)},
                          self.class_names).save(path)
        atomic_write_json(folder / META, self.to_dict())
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike, *, data=None, mmap: bool = True) -> "Codes":
        """Codes saved by ``save`` or ``codes(out=...)`` (arrays memory-mapped with ``mmap``)."""
        from ..insight.features import Features

        folder = Path(path)
        if not (folder / META).is_file():
            raise DataError(f"{folder}: no {META}; expected a folder written by convlens.codes(out=...) or "
                            "Codes.save")
        meta = read_json(folder / META)
        feats = Features.load(folder, mmap=mmap)
        name = feats.layers[0]
        return cls(feats[name], feats.indices, feats.labels, meta["layer"], meta["tapped"], meta["pool"],
                   tuple(meta.get("shape") or feats.shapes.get(name, ())), meta.get("class_names"),
                   meta.get("model", ""), meta.get("data", ""), meta.get("data_spec"), data)


# ---- the default layer -----------------------------------------------------------------------------------

def code_layer(model: nn.Module, sample: torch.Tensor) -> tuple[str, str]:
    """(name shown, name to read) of the classifier's input for ``model`` (see the module docstring).

    ``sample``: (B, C, H, W) images as the model takes them (one or a few suffice)."""
    from ..layers import display_names, user_path
    from ..taps import eval_mode, no_layer_error

    linears = {m: p for p, m in model.named_modules() if isinstance(m, nn.Linear) and p}
    if not linears:
        raise no_layer_error(model, "TorchScript has no forward hooks to find its CNN code with",
                             f"layer must be given: this {model_label(model)} has no nn.Linear classifier whose "
                             "input would be the CNN code; got None")
    sizes = {m.in_features for m in linears}
    ran: list[tuple[str, torch.Tensor]] = []     # (path of the Linear, its input), in call order
    outputs: list[tuple[str, torch.Tensor]] = []  # (path, output flattened per image), in finishing order
    handles = []

    def pre(module, args):
        if args and isinstance(args[0], torch.Tensor):
            ran.append((linears[module], args[0].detach().reshape(len(args[0]), -1).clone()))

    def post(path):
        def hook(module, args, out):
            if isinstance(out, torch.Tensor) and out.ndim >= 2 and out[0].numel() in sizes:
                outputs.append((path, out.detach().reshape(len(out), -1).clone()))
        return hook

    try:
        for m, p in linears.items():
            handles.append(m.register_forward_pre_hook(pre))
        for p, m in model.named_modules():
            if p and not isinstance(m, torch.jit.ScriptModule):  # TorchScript runs no hooks
                handles.append(m.register_forward_hook(post(p)))
        with eval_mode(model), torch.no_grad():
            model(sample)
    finally:
        for h in handles:
            h.remove()
    if not ran:
        raise InputError(f"layer must be given: no nn.Linear of this {model_label(model)} ran in its forward; "
                         "got None")
    fc_path, x = ran[-1]
    matches = [p for p, out in outputs if out.shape == x.shape and torch.equal(out, x)]
    if not matches:
        return _shown(model, fc_path) + INPUT_SUFFIX, user_path(model, fc_path) + INPUT_SUFFIX
    groups = _groups(model)  # grammar conv/fc name -> its post-ReLU layer path
    for name, out_path in groups.items():
        if out_path in matches:
            return name, _shown(model, out_path)
    leaves = {p for p, m in model.named_modules() if p and not any(True for _ in m.children())}
    best = next((p for p in reversed(matches) if p in leaves), matches[-1])
    shown = display_names(model).get(best, best)
    return shown, shown


def _shown(model: nn.Module, path: str) -> str:
    from ..layers import display_names

    return display_names(model).get(path, path)


def _groups(model: nn.Module) -> dict[str, str]:
    """Grammar net conv/fc name -> module path of its output (after its ReLU); {} for other models."""
    from ..arch.grammar import GrammarNet
    from ..insight.rewiring import layer_groups
    from ..layers import resolve

    net = getattr(model, "net", model)
    if not isinstance(net, GrammarNet):
        return {}
    return {g.name: resolve(model, g.output)[0] for g in layer_groups(net)}


class _InputOf(nn.Module):
    """``model`` with a child ``code`` (an Identity) whose output is what ``model``'s module at ``path``
    receives, so ``features(wrapper, data, "code")`` reads it. The forward pre-hook that routes the input
    through ``code`` lives only for the duration of each forward (removed in ``finally``)."""

    def __init__(self, model: nn.Module, path: str):
        super().__init__()
        self.model = model
        self.code = nn.Identity()
        self.path = path

    def forward(self, x):
        target = self.model.get_submodule(self.path)
        handle = target.register_forward_pre_hook(lambda m, args: (self.code(args[0]), *args[1:]))
        try:
            return self.model(x)
        finally:
            handle.remove()


def _reader(model: nn.Module, tapped: str) -> tuple[nn.Module, str]:
    """(module to run, layer name to hand to ``features``) for a tapped name."""
    from ..layers import resolve

    if tapped.endswith(INPUT_SUFFIX):
        path, _ = resolve(model, tapped[: -len(INPUT_SUFFIX)])
        return _InputOf(model, path), _TAP
    return model, tapped


# ---- extraction -------------------------------------------------------------------------------------------

def codes(model_or_run, data=None, layer: str | None = None, *, pool: str | None = None, batch_size: int = 128,
          out: str | os.PathLike | None = None, progress: bool = True, rank: int = 0,
          world_size: int = 1) -> Codes:
    """CNN codes of ``layer`` (default: the classifier's input) for every image of ``data``.

    ``model_or_run``: a Run or run directory (images in [0, 1] through its normalization) or an
    ``nn.Module``. ``data``: an ImageDataset, an (N, C, H, W) tensor, an ``(images, labels)`` pair,
    a dataset name or path (its test split), or None for a run's test split. ``out``: a folder to
    cache (and resume) them in; ``rank``/``world_size`` shard the work as ``convlens.features`` does.
    """
    from ..insight.features import POOLS, features
    from ..insight.probes import choose_layers
    from ..taps import BatchSource
    from ..training.runs import model_and_run

    if pool is not None and pool not in POOLS:
        raise expect("pool", "one of " + ", ".join(repr(p) for p in POOLS), pool)
    if layer is not None and (not isinstance(layer, str) or not layer.strip()):
        raise expect("layer", "a layer name (str) or None for the classifier's input", layer)
    model, run = model_and_run(model_or_run)
    data = _data(data, run)
    first = as_images(BatchSource(data).batch(0, 2), model, name="data")  # the one image check; (<=2, C, H, W)
    if layer is None:
        shown, tapped = code_layer(model, first)
        pool = pool or "flat"
    elif layer.endswith(INPUT_SUFFIX):
        shown = tapped = layer
        pool = pool or "avg"
    else:
        names, taps = choose_layers(model, [layer])
        shown, tapped, pool = names[0], taps[0], pool or "avg"
    module, name = _reader(model, tapped)
    feats = features(module, data, [name], pool=pool, batch_size=batch_size, progress=progress, out=out,
                     rank=rank, world_size=world_size)
    names = feats.class_names or (list(run.class_names) if run is not None and run.class_names else None)  # labels' own
    result = Codes(feats[name], feats.indices, feats.labels, shown, tapped, pool, tuple(feats.shapes.get(name, ())),
                   names, _model_label(model, run), _data_label(data), _data_spec(data), data)
    if out is not None:
        atomic_write_json(Path(out) / META, result.to_dict())
    return result


def pixel_codes(data, *, size: int | tuple[int, int] | None = None) -> Codes:
    """Raw pixels as codes (the lecture's contrast to CNN codes): each image flattened, optionally
    resized first (bilinear, antialiased) to ``size``."""
    import torch.nn.functional as F

    from ..taps import BatchSource

    src = BatchSource(data)
    images = src.batch(0, src.n).float()  # (N, C, H, W)
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        images = F.interpolate(images, size=hw, mode="bilinear", align_corners=False, antialias=True)
    vectors = images.reshape(len(images), -1).cpu().numpy()  # (N, C*H*W)
    return Codes(vectors, np.arange(src.n, dtype=np.int64), src.labels, "pixels", "pixels", "flat",
                 tuple(images.shape[1:]), src.class_names, "", _data_label(data), _data_spec(data), data)


def thumbnails(images, size: int | None = None) -> np.ndarray:
    """(N, h, w, 3) uint8 thumbnails of ``images``: (N, C, H, W) float in [0, 1] (tensor or array) or
    (N, H, W, C) uint8 (C = 1 or 3). ``size``: the height in px (width keeps the aspect ratio;
    bilinear, antialiased); None keeps the size. Gray becomes RGB."""
    import torch.nn.functional as F

    if isinstance(images, np.ndarray) and images.dtype == np.uint8:
        if images.ndim != 4 or images.shape[3] not in (1, 3):
            raise expect("images", "uint8 (N, H, W, C) with C = 1 or 3", tuple(images.shape))
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255  # (N, C, H, W)
    else:
        x = images.detach() if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
        if x.ndim != 4 or x.shape[1] not in (1, 3) or not x.is_floating_point():
            raise expect("images", "float (N, C, H, W) in [0, 1] with C = 1 or 3, or uint8 (N, H, W, C)",
                         f"{x.dtype} {tuple(x.shape)}")
        x = x.cpu().float()
    if size is not None:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
            raise expect("size", "a positive int (px) or None", size)
        h, w = x.shape[2:]
        hw = (int(size), max(1, round(size * w / h)))
        if hw != (h, w) and len(x):
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False, antialias=True)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()  # (N, h, w, 3)


def _data(data, run):
    from .. import datasets
    from ..training.evaluate import run_test_data

    if data is None:
        if run is None:
            raise InputError("data must be given for a bare model (an ImageDataset, images or a dataset name); "
                             "got None")
        return run_test_data(run)
    if isinstance(data, (str, Path)):
        return datasets.load(str(data), split="test")
    return data


def _model_label(model, run) -> str:
    if run is not None:
        return (run.manifest.get("arch") or {}).get("name") or str(run.dir or "run")
    return model_label(model)


def _data_label(data) -> str:
    if isinstance(data, torch.Tensor) or isinstance(data, (tuple, list)):
        return "images"
    return str(getattr(data, "source", "") or getattr(data, "name", "") or "data")


def _data_spec(data) -> dict | None:
    spec = getattr(data, "spec", None)
    if not spec or (getattr(data, "info", None) or {}).get("subset_of"):
        return None
    return dict(spec)
