"""Removing conv and fc layers from a grammar network, the re-wiring behind the layer ablation
(:mod:`.ablation`): ``remove_layers(net, ["fc7"]) -> (new_net, reinitialized)``.

**What "removing a layer" removes.** Only conv and fc layers can be named. Each takes with it the
layers that *belong* to it: every BN, ReLU/tanh/sigmoid, LRN and dropout that follows it, up to
the next conv, fc or pooling layer (pooling is kept: it belongs to the resolution, not to one
layer). ``layer_groups(model)`` lists these groups.

**Re-wiring.** The remaining layers are written back as a grammar spec and rebuilt with
``parse``, so the next conv or fc gets the right input size. For fine-tuning, a kept group whose
weight and buffer shapes are all unchanged is copied whole; a group whose shapes changed (say, a
conv whose input lost channels) is re-initialized whole, BN statistics included. Only grammar
networks (``convlens.parse`` / the zoo / runs trained by ``convlens.train``) can be re-wired; for
any other ``nn.Module`` the error lists the conv/fc layers and says why.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..arch.grammar import GrammarNet, describe, parse
from ..arch.spec import tokenize
from ..errors import InputError, LayerNotFoundError, ShapeError, SpecError, expect, suggest
from ..layers import model_label

BELONGS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.Tanh, nn.Sigmoid, nn.LocalResponseNorm, nn.Dropout)
ACTIVATIONS = (nn.ReLU, nn.Tanh, nn.Sigmoid)


@dataclass(frozen=True)
class LayerGroup:
    """A conv or fc layer and the layers that belong to it (lecture names, forward order)."""

    name: str                   # the conv/fc layer's lecture name
    kind: str                   # "conv" or "fc"
    members: tuple[str, ...]    # name first, then its BN/ReLU/LRN/dropout
    indices: tuple[int, ...]    # positions in the network's layer list (= its grammar tokens)
    output: str                 # the member whose output are the layer's features: its last
                                # activation (post-ReLU), else the layer itself


def layers_of(net: GrammarNet) -> list[tuple[str, nn.Module]]:
    """(lecture name, module) of every layer, in forward order (one per grammar token)."""
    by_path = dict(net.named_modules())
    return [(name, by_path[path]) for name, path in net.lecture_names.items()]


def layer_groups(net: GrammarNet) -> list[LayerGroup]:
    """The conv/fc layers of a grammar network, each with the layers that belong to it."""
    groups: list[dict] = []
    current = None
    for i, (name, m) in enumerate(layers_of(net)):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            current = {"name": name, "kind": "conv" if isinstance(m, nn.Conv2d) else "fc",
                       "members": [name], "indices": [i], "output": name}
            groups.append(current)
        elif current is not None and isinstance(m, BELONGS):
            current["members"].append(name)
            current["indices"].append(i)
            if isinstance(m, ACTIVATIONS):
                current["output"] = name
        else:
            current = None  # pooling ends the group
    return [LayerGroup(g["name"], g["kind"], tuple(g["members"]), tuple(g["indices"]), g["output"])
            for g in groups]


def remove_layers(net: GrammarNet, names: Sequence[str], *, copy_weights: bool = True,
                  seed: int = 0) -> tuple[GrammarNet, list[str]]:
    """The network without the conv/fc layers ``names`` (and the layers that belong to them).

    Returns ``(new_net, reinitialized)``: a new GrammarNet on ``net``'s device and dtype, its weights
    drawn from ``seed`` and, with ``copy_weights``, the kept groups whose shapes are unchanged copied
    from ``net``; ``reinitialized`` names (in ``net``'s lecture names) the kept conv/fc layers that
    could not be copied. ``net`` is not modified.
    """
    if not isinstance(net, GrammarNet):
        raise not_rewirable(net)
    groups = layer_groups(net)
    drop = [_removable(net, groups, name) for name in names]
    if not drop:
        raise expect("names", "one or more conv/fc layer names", list(names))
    if all(g.kind != "conv" for g in groups if g not in drop) and any(g.kind == "conv" for g in groups):
        convs = ", ".join(g.name for g in groups if g.kind == "conv")
        raise InputError(f"removing {', '.join(g.name for g in drop)} would leave no convolutional layer "
                         f"({convs}); keep at least one")
    gone = {i for g in drop for i in g.indices}
    spec = describe(net)
    tokens = tokenize(spec)
    softmax = tokens[-1].kind == "softmax"
    body = tokens[:-1] if softmax else tokens
    kept = [i for i in range(len(body)) if i not in gone]
    new_spec = ",".join([spec[body[i].start:body[i].end] for i in kept] + (["SOFTMAX"] if softmax else []))
    try:
        new = rebuilt(net, new_spec, seed)
    except (ShapeError, SpecError) as err:
        raise ShapeError(f"removing {', '.join(g.name for g in drop)} leaves a network that does not fit its "
                         f"{net.input_shape} input: {err}") from None
    old_layers, new_layers = layers_of(net), layers_of(new)
    position = {old: j for j, old in enumerate(kept)}  # old layer index -> new layer index
    reinit = []
    for g in groups:
        if g in drop:
            continue
        pairs = [(old_layers[i][1], new_layers[position[i]][1]) for i in g.indices]
        if copy_weights and all(_same_shapes(a, b) for a, b in pairs):
            with torch.no_grad():
                for a, b in pairs:
                    b.load_state_dict(a.state_dict())
        else:
            reinit.append(g.name)
    return new, reinit


def _removable(net: GrammarNet, groups: list[LayerGroup], name) -> LayerGroup:
    names = [g.name for g in groups]
    if not isinstance(name, str):
        raise expect("a layer name", "a string such as 'fc7'", name)
    if name not in names:
        if name in net.lecture_names or name in dict(net.named_modules()):
            owner = next((g.name for g in groups if name in g.members), None)
            why = f"it belongs to {owner} and goes with it" if owner else "pooling layers are kept"
            raise InputError(f"'{name}' is not a conv or fc layer, so it cannot be removed on its own ({why}). "
                             f"Removable layers: {', '.join(names[:-1])}")
        raise LayerNotFoundError(f"'{name}' is not a layer of this network.{suggest(name, names)} "
                                 f"Removable layers: {', '.join(names[:-1])}")
    if name == names[-1]:
        raise InputError(f"'{name}' is the output layer (it gives the class scores) and cannot be "
                         f"removed. Removable layers: {', '.join(names[:-1])}")
    return groups[names.index(name)]


def _same_shapes(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def not_rewirable(model) -> InputError:
    """The error for a model that is not a grammar network: what could be removed and why it cannot."""
    if not isinstance(model, nn.Module):
        return expect("run_or_spec", "a Run, a run directory, a grammar spec, a zoo name or a GrammarNet",
                      type(model).__name__)
    layers = [p for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    listing = ", ".join(layers[:12]) + (f", … ({len(layers)} in all)" if len(layers) > 12 else "")
    return InputError(
        f"ablation needs a grammar network (convlens.parse, the zoo, or a run trained by convlens.train); got a "
        f"{model_label(model)}. Its conv/fc layers are {listing or 'none'}, but removing one means re-wiring "
        "the next layer's input size (and any residual or functional path in forward()), which cannot be done "
        "automatically for arbitrary code. Describe the network in the grammar (convlens.describe works for an "
        "nn.Sequential) and ablate the GrammarNet that convlens.parse builds from it")


def rebuilt(net: GrammarNet, spec: str, seed: int) -> GrammarNet:
    """``spec`` built like ``net`` (input shape, naming, layout, device, dtype, mode), weights from ``seed``."""
    ref = next(net.parameters())
    with torch.random.fork_rng(devices=[ref.device.index or 0] if ref.device.type == "cuda" else []):
        torch.manual_seed(seed)
        new = parse(spec, input_shape=net.input_shape, naming=net.naming, layout=net.layout)
    return new.to(device=ref.device, dtype=ref.dtype).train(net.training)


def clone(net: GrammarNet, copy_weights: bool, seed: int) -> GrammarNet:
    """A fresh network of the same spec: ``net``'s weights (fine-tuning) or new ones from ``seed``."""
    new = rebuilt(net, describe(net), seed)
    if copy_weights:
        new.load_state_dict(net.state_dict())
    return new
