"""The model zoo: classic architectures written in the lecture's grammar, behind a registry.

``create("vgg16")`` builds VGG-16 with torchvision's state_dict keys (``features.0.weight`` ...
``classifier.6.bias``), so a torchvision weight file loads with ``strict=True``;
``list_models("vgg*")`` lists names. Weights are random: nothing is downloaded.

An architecture the grammar cannot write (EfficientNet-Lite0's inverted residual blocks) is
registered with a ``factory`` that builds its ``nn.Module`` instead of a spec;
``convlens.pretrained("efficientnet_lite0")`` gives it ImageNet weights.
"""
from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ..errors import SpecError, UnknownModelError, lookup, suggest
from .efficientnet import efficientnet_lite0
from .grammar import GrammarNet, parse


@dataclass(frozen=True)
class ZooEntry:
    name: str
    spec: str
    input_shape: tuple[int, int, int]
    num_classes: int
    naming: str = "caffe"
    layout: str = "named"
    paper: str = ""
    factory: Callable[..., nn.Module] | None = None  # (num_classes=, input_shape=) -> module; spec unused


_REGISTRY: dict[str, ZooEntry] = {}


def register(entry: ZooEntry) -> ZooEntry:
    _REGISTRY[entry.name] = entry
    return entry


def _vgg(blocks: list[int]) -> str:
    widths = [64, 128, 256, 512, 512]
    convs = ",".join(f"[CONV3-{w}-RELU]x{n},POOL2" for w, n in zip(widths, blocks))
    return convs + ",FC-4096,RELU,DROPOUT,FC-4096,RELU,DROPOUT,FC-1000,SOFTMAX"


register(ZooEntry(
    "lenet", "CONV5-6p0,TANH,AVGPOOL2,CONV5-16p0,TANH,AVGPOOL2,FC-120,TANH,FC-84,TANH,FC-10,SOFTMAX",
    (1, 32, 32), 10, paper="LeCun et al. 1998, Gradient-based learning applied to document recognition (LeNet-5)"))
register(ZooEntry(
    "alexnet",
    "CONV11-96/4p0,RELU,LRN,POOL3/2,CONV5-256g2,RELU,LRN,POOL3/2,CONV3-384,RELU,CONV3-384g2,RELU,"
    "CONV3-256g2,RELU,POOL3/2,FC-4096,RELU,DROPOUT,FC-4096,RELU,DROPOUT,FC-1000,SOFTMAX",
    (3, 227, 227), 1000,
    paper="Krizhevsky, Sutskever & Hinton 2012, ImageNet classification with deep CNNs (two-GPU groups)"))
register(ZooEntry(
    "alexnet_tv",
    "CONV11-64/4p2,RELU,POOL3/2,CONV5-192,RELU,POOL3/2,CONV3-384,RELU,CONV3-256,RELU,CONV3-256,RELU,POOL3/2,"
    "DROPOUT,FC-4096,RELU,DROPOUT,FC-4096,RELU,FC-1000,SOFTMAX",
    (3, 224, 224), 1000, layout="torchvision",
    paper="torchvision's single-tower AlexNet (Krizhevsky 2014, One weird trick)"))
register(ZooEntry(
    "zfnet",
    "CONV7-96/2p1,RELU,POOL3/2c,NORM,CONV5-256/2p0,RELU,POOL3/2c,NORM,CONV3-384,RELU,CONV3-384,RELU,"
    "CONV3-256,RELU,POOL3/2c,FC-4096,RELU,DROPOUT,FC-4096,RELU,DROPOUT,FC-1000,SOFTMAX",
    (3, 224, 224), 1000,
    paper="Zeiler & Fergus 2014, Visualizing and understanding convolutional networks (Figure 3)"))
for _name, _blocks, _cfg in (("vgg11", [1, 1, 2, 2, 2], "A"), ("vgg16", [2, 2, 3, 3, 3], "D"),
                             ("vgg19", [2, 2, 4, 4, 4], "E")):
    register(ZooEntry(_name, _vgg(_blocks), (3, 224, 224), 1000, naming="vgg", layout="torchvision",
                      paper=f"Simonyan & Zisserman 2015, Very deep convolutional networks (configuration {_cfg})"))


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, e.g. ``list_models("vgg*")``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern.lower()))


def get_entry(name: str) -> ZooEntry:
    return lookup(_REGISTRY, name, "is not a zoo model", "Zoo models")


def create(name: str, *, num_classes: int | None = None,
           input_shape: tuple[int, int, int] | None = None) -> GrammarNet | nn.Module:
    """Build zoo model ``name`` with random weights (its paper's input size unless given)."""
    e = get_entry(name)
    if e.factory is not None:
        return e.factory(num_classes=num_classes or e.num_classes, input_shape=input_shape or e.input_shape)
    spec = e.spec if num_classes is None else _resize_last_fc(e.spec, num_classes)
    return parse(spec, input_shape=input_shape or e.input_shape, num_classes=num_classes or e.num_classes,
                 naming=e.naming, layout=e.layout)


def _resize_last_fc(spec: str, num_classes: int) -> str:
    head, _, tail = spec.rpartition("FC-")
    width = "".join(ch for ch in tail if ch.isdigit())
    return f"{head}FC-{num_classes}{tail[len(width):]}"


def is_zoo_name(name: str) -> bool:
    return str(name).lower() in _REGISTRY


def build(name_or_spec: str, *, input_shape: tuple[int, int, int] | None = None,
          num_classes: int | None = None) -> GrammarNet | nn.Module:
    """A zoo model by name, or the network a grammar spec describes (input (3, 224, 224) unless given).

    A bare word close to a zoo name (``vggg16``) raises UnknownModelError with suggestions rather
    than the grammar's SpecError.
    """
    if not isinstance(name_or_spec, str):
        raise SpecError(f"a model must be named by a zoo name or a grammar spec string; got {type(name_or_spec).__name__}")
    if is_zoo_name(name_or_spec):
        return create(name_or_spec, num_classes=num_classes, input_shape=input_shape)
    try:
        return parse(name_or_spec, input_shape=input_shape or (3, 224, 224),
                     **({} if num_classes is None else {"num_classes": num_classes}))
    except SpecError:
        word = name_or_spec.strip().lower()
        if re.fullmatch(r"[a-z][\w.]*", word) and suggest(word, _REGISTRY):
            get_entry(word)  # a misspelt zoo name: UnknownModelError with "did you mean"
        raise


register(ZooEntry(
    "shapesnet", "CONV5-32/2,BN,RELU,POOL2,CONV3-64,BN,RELU,POOL2,CONV3-128,BN,RELU,POOL2,CONV3-128,BN,RELU,GAP,"
    "FC-10,SOFTMAX", (3, 64, 64), 10,
    paper="convlens's demo model for the built-in shapes data (convlens.training.fit.DEMO_RECIPE)"))
register(ZooEntry(
    "photosnet", "CONV9-48/2,RELU,POOL3/2,CONV3-96,BN,RELU,POOL2,CONV3-128,BN,RELU,GAP,FC-13,SOFTMAX", (3, 48, 48), 13,
    paper="convlens's natural-image model for the built-in photos data (convlens.training.fit.PHOTOS_RECIPE)"))
register(ZooEntry(
    "efficientnet_lite0", "", (3, 224, 224), 1000, factory=efficientnet_lite0,
    paper="Tan & Le 2019, EfficientNet (Lite0: ReLU6, no squeeze-excitation; TensorFlow TPU models, 2020)"))
