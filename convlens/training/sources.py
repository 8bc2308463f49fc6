"""The one model resolver: whatever names a model -> the ``nn.Module`` and a record of where it came from.

Sources, tried in this order (``load_run`` turns the module into a Run; the CLI and the explorer go
through it too):

* a run directory (``run.json``; handled by ``runs.load_run`` itself);
* a ``.pt2`` file written by ``torch.export.save`` (no code needed; ``models/exported.py``);
* a TorchScript file (kept as it is; the methods that need hooks say so: ``models/scripted.py``);
* a weight file (``.safetensors``; ``.pt``/``.pth`` via ``torch.load(weights_only=True)``) with ``arch=``;
* your own code: ``path/to/file.py:factory`` or ``package.module:factory`` (imports and runs that code);
* a zoo name (``vgg16``) or a grammar spec (``CONV3-32,RELU,POOL2,FC``), with random weights unless
  ``weights=`` is given.

The record (``{"kind": ..., ...}``) is what a run's manifest keeps in ``arch.source`` so that the model
can be rebuilt: ``grammar`` (the spec), ``zoo`` (the name), ``factory`` (the absolute reference),
``export`` / ``torchscript`` (the file, copied into the run directory), ``instance`` (a module given as
an object with no recipe to rebuild it: loading the run then needs ``arch=``).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..arch.grammar import describe, parse
from ..arch.zoo import build, get_entry, is_zoo_name
from ..errors import ConvLensError, InputError, RunError
from ..layers import model_label
from ..models.exported import is_exported, load_exported
from ..models.factory import absolute_ref, call_factory, is_factory_ref
from ..models.scripted import is_torchscript, load_torchscript
from ..models.weights import load_weights, read_state_dict

__all__ = ["resolve_source", "rebuild", "SOURCE_KINDS", "describe_sources", "model_label", "instance_record"]

SOURCE_KINDS = ("grammar", "zoo", "factory", "export", "torchscript", "instance", "pretrained")


def describe_sources() -> str:
    return ("a run directory, a .pt2 file (torch.export.save), a TorchScript file, a weight file with arch=, "
            "path/to/file.py:factory or package.module:factory, a zoo name or a grammar spec")


def resolve_source(source, *, arch=None, input_shape=None, device=None) -> tuple[nn.Module, dict, dict]:
    """(module with its weights, source record, facts such as the example input shape) of a source that is
    not a run directory. ``arch`` is needed only for a bare weight file."""
    if isinstance(source, nn.Module):
        return source, instance_record(source), {}
    text = str(source)
    p = Path(text).expanduser()
    if p.is_file():
        if is_exported(p):
            _no_arch(arch, p, "a .pt2 program holds its own graph")
            net, facts = load_exported(p, device=device)
            return net, {"kind": "export", "file": str(p.resolve())}, facts
        if is_torchscript(p):
            _no_arch(arch, p, "a TorchScript file holds its own code")
            return load_torchscript(p, device=device), {"kind": "torchscript", "file": str(p.resolve())}, {}
        if arch is None:
            raise RunError(f"{p}: a bare weight file needs arch= (a zoo name, a grammar spec, "
                           "path/to/file.py:factory or an nn.Module) to know which network the weights belong to")
        state = read_state_dict(p)
        net, record = _arch_module(arch, input_shape, state)
        load_weights(net, state, source=p, label=model_label(net))
        return net, record, {}
    if p.exists():
        raise RunError(f"{p}: not a file or run directory; expected {describe_sources()}")
    if arch is not None:
        raise RunError(f"{text}: no such file; arch= goes with a weight file")
    if is_factory_ref(text):
        ref = absolute_ref(text)
        return call_factory(ref), {"kind": "factory", "ref": ref}, {}
    looks_like_path = any(s in text for s in ("/", "\\")) or Path(text).suffix in (".pt", ".pth", ".pt2", ".safetensors",
                                                                                   ".ts", ".ckpt", ".bin")
    if not looks_like_path and (is_zoo_name(text) or _is_spec(text)):
        net, record = _arch_module(text, input_shape, None)
        return net, record, {}
    raise RunError(f"{text}: no such file or directory; expected {describe_sources()}")


def rebuild(record: dict, folder: Path, *, arch_entry: dict, arch=None, device=None) -> nn.Module:
    """The module (random weights) a run's manifest describes; ``folder`` holds its copied files."""
    kind = record.get("kind")
    shape = tuple(arch_entry.get("input_shape") or ()) or None
    if kind == "factory":
        return call_factory(record["ref"])
    if kind == "export":
        return load_exported(folder / record["file"], device=device)[0]
    if kind == "torchscript":
        return load_torchscript(folder / record["file"], device=device)
    if kind == "zoo":
        with torch.random.fork_rng(devices=[]):
            return build(record["name"], input_shape=shape, num_classes=arch_entry.get("num_classes"))
    if kind == "pretrained":
        from .pretrained import pretrained_module

        return pretrained_module(record["name"])
    if kind == "instance":
        if isinstance(arch, nn.Module):
            return arch
        raise RunError(f"{folder}: this run was made from an instance of {record.get('class') or 'a module'} that "
                       "convlens cannot rebuild by itself (no factory); pass the module: "
                       "load_run(RUN, arch=YourNet())")
    raise RunError(f"{folder}: unknown model source kind {kind!r} in run.json; expected one of {SOURCE_KINDS}")


# ---- helpers -------------------------------------------------------------------------------------------

def instance_record(net: nn.Module, ref: str | None = None, *, guess: bool = True) -> dict:
    """How a manifest says to rebuild ``net``: the factory ``ref`` (with ``guess``, when None: its class, if
    calling it rebuilds the same network), else only its class (kind "instance": loading needs the module)."""
    from ..models.factory import factory_ref_of

    ref = ref or (factory_ref_of(net) if guess else None)
    if ref is not None:
        return {"kind": "factory", "ref": ref}
    cls = type(net)
    return {"kind": "instance", "class": f"{cls.__module__}.{cls.__qualname__}", "ref": None}


def _no_arch(arch, p: Path, why: str) -> None:
    if arch is not None:
        raise InputError(f"arch must be None for {p} ({why}); got {arch!r}")


def _is_spec(text: str) -> bool:
    try:
        parse(text, input_shape=(3, 32, 32))
    except Exception:  # a SpecError, or anything else the parser trips on: not a spec
        return False
    return True


def _arch_module(arch, input_shape, state) -> tuple[nn.Module, dict]:
    """The module ``arch`` names (sized to ``state``'s class count where it has one) and its record."""
    if isinstance(arch, nn.Module):
        return arch, instance_record(arch)
    if not isinstance(arch, str):
        raise InputError(f"arch must be a zoo name, a grammar spec, path/to/file.py:factory or an nn.Module; "
                         f"got {type(arch).__name__}")
    if is_factory_ref(arch):
        ref = absolute_ref(arch)
        return call_factory(ref), {"kind": "factory", "ref": ref}
    if is_zoo_name(arch):
        shape = tuple(input_shape or get_entry(arch).input_shape)
        record = {"kind": "zoo", "name": arch.lower()}
    elif input_shape is None:
        raise InputError(f"input_shape must be given as (C, H, W) to build the grammar spec {arch!r}; got None")
    else:
        shape = tuple(input_shape)
        record = None
    with torch.random.fork_rng(devices=[]):
        net = build(arch, input_shape=shape, num_classes=None)
        head = _head(net)
        n_out = int(state[head[0]].shape[0]) if state and head and head[0] in state and state[head[0]].dim() else None
        if n_out is not None and head and n_out != head[1]:
            net = build(arch, input_shape=shape, num_classes=n_out)
    if record is None:
        try:
            record = {"kind": "grammar", "spec": describe(net)}
        except ConvLensError:
            record = {"kind": "grammar", "spec": arch}
    return net, record


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
