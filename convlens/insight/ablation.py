"""Layer ablation: remove layers of a grammar network, retrain, and compare test accuracy.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, section 5.1
(https://arxiv.org/abs/1311.2901), the lecture's "Architecture of Krizhevsky et al." slides:
removing layer 7 drops 16M parameters and costs 1.1 %; layers 6 & 7 ~50M and 5.7 %; layers 3 & 4
~1M and 3.0 %; layers 3, 4, 6, 7 together 33.5 % -- depth is key.

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

**Measuring.** Every network, the full one included, is retrained the same way (fine-tuned from
its kept weights, or trained from scratch, for the same epochs and recipe) and scored with
``convlens.evaluate`` on the same test images, so the drop compares like with like. The training
runs go to ``out/<mode>/<name>`` run directories, so an interrupted ablation resumes.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..arch.grammar import GrammarNet, describe, parse
from ..arch.spec import tokenize
from ..errors import InputError, LayerNotFoundError, ShapeError, SpecError, expect, suggest

MODES = ("finetune", "scratch")
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


def removal_sets(removals) -> list[tuple[str, ...]]:
    """``["fc7", "fc6,fc7", ["conv3", "conv4"]]`` -> [("fc7",), ("fc6", "fc7"), ("conv3", "conv4")]."""
    if isinstance(removals, str) or not isinstance(removals, Sequence) or not removals:
        raise expect("removals", "a non-empty list of removal sets, e.g. ['fc7', 'fc6,fc7', ['conv3', 'conv4']]",
                     removals)
    sets = []
    for item in removals:
        names = item.split(",") if isinstance(item, str) else list(item) if isinstance(item, Sequence) else None
        names = [n.strip() for n in names if isinstance(n, str) and n.strip()] if names is not None else []
        if not names:
            raise expect("each removal set", "one or more layer names such as 'fc7' or 'conv3,conv4'", item)
        sets.append(tuple(dict.fromkeys(names)))
    return sets


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
        new = _like(net, new_spec, seed)
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
        f"{type(model).__name__}. Its conv/fc layers are {listing or 'none'}, but removing one means re-wiring "
        "the next layer's input size (and any residual or functional path in forward()), which cannot be done "
        "automatically for arbitrary code. Describe the network in the grammar (convlens.describe works for an "
        "nn.Sequential) and ablate the GrammarNet that convlens.parse builds from it")


# ---- result ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AblationRow:
    """One network of the ablation: which layers it lacks and how it scored."""

    removed: tuple[str, ...]      # lecture names in the full network; () for the full network
    params: int                   # parameters left
    params_removed: int           # full network's parameters minus ``params``
    accuracy: float               # top-1 test accuracy in [0, 1]
    drop: float                   # full network's accuracy minus this one's (in [−1, 1])
    spec: str
    reinitialized: tuple[str, ...] = ()
    seconds: float = 0.0          # training time (the run's per-epoch times, summed)
    run_dir: str | None = None

    @property
    def label(self) -> str:
        return ", ".join(self.removed) if self.removed else "none (full network)"

    def to_dict(self) -> dict:
        return {"removed": list(self.removed), "params": self.params, "params_removed": self.params_removed,
                "accuracy": self.accuracy, "drop": self.drop, "spec": self.spec,
                "reinitialized": list(self.reinitialized), "seconds": self.seconds, "run_dir": self.run_dir}

    @classmethod
    def from_dict(cls, d: dict) -> "AblationRow":
        return cls(tuple(d["removed"]), int(d["params"]), int(d["params_removed"]), float(d["accuracy"]),
                   float(d["drop"]), d["spec"], tuple(d.get("reinitialized", ())), float(d.get("seconds", 0.0)),
                   d.get("run_dir"))


@dataclass(frozen=True, repr=False)
class AblationResult:
    """The lecture's ablation table: layers removed, parameters removed/left, accuracy, drop."""

    model: str                    # spec of the full network
    data: str
    mode: str                     # "finetune" or "scratch"
    epochs: int
    n_test: int
    rows: tuple[AblationRow, ...]  # the full network first
    original_accuracy: float | None = None  # the given run's accuracy before any retraining
    name: str = ""                 # the zoo name, where there is one
    schema: str = field(default="convlens.ablation/1")

    @property
    def full(self) -> AblationRow:
        return self.rows[0]

    @property
    def how(self) -> str:
        epochs = f"{self.epochs} epoch{'s' if self.epochs != 1 else ''}"
        return (f"fine-tuned for {epochs} from the kept weights" if self.mode == "finetune"
                else f"trained from scratch for {epochs}")

    def to_dict(self) -> dict:
        return {"schema": self.schema, "name": self.name, "model": self.model, "data": self.data, "mode": self.mode,
                "epochs": self.epochs, "n_test": self.n_test, "original_accuracy": self.original_accuracy,
                "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "AblationResult":
        return cls(d["model"], d["data"], d["mode"], int(d["epochs"]), int(d["n_test"]),
                   tuple(AblationRow.from_dict(r) for r in d["rows"]), d.get("original_accuracy"), d.get("name", ""))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    def plot(self, *, ax=None):
        from ..plots.ablation import ablation_bars

        return ablation_bars(self.to_dict(), ax=ax)

    def table(self) -> list[list[str]]:
        """Rows of display strings: removed, params removed, params left, accuracy, drop, training time."""
        out = []
        for r in self.rows:
            drop = "-" if not r.removed else f"{100 * r.drop:.1f} pts"
            out.append([r.label, f"{r.params_removed:,}", f"{r.params:,}", f"{100 * r.accuracy:.2f} %", drop,
                        f"{r.seconds:.0f} s"])
        return out

    def __repr__(self) -> str:
        headers = ["layers removed", "params removed", "params left", "test accuracy", "drop", "retraining"]
        rows = self.table()
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
        line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                       for i, (c, w) in enumerate(zip(cells, widths)))
        orig = "" if self.original_accuracy is None else \
            f"; {100 * self.original_accuracy:.2f} % as trained, before any ablation"
        head = [f"Layer ablation of {self.name or 'the network'} ({self.model}) on {self.data}",
                f"every network {self.how}; top-1 accuracy on {self.n_test:,} test images{orig}"]
        body = [line(headers), "-" * len(line(headers)), *(line(r) for r in rows)]
        notes = [f"re-initialized (shapes changed) when removing {r.label}: {', '.join(r.reinitialized)}"
                 for r in self.rows if r.reinitialized and self.mode == "finetune"]
        return "\n".join(head + body + notes)


# ---- the experiment ------------------------------------------------------------------------------------

def ablate(run_or_spec, removals, *, data=None, test_data=None, epochs: int | None = None, mode: str = "finetune",
           lr: float | None = None, seed: int = 0, out: str | Path | None = None, overwrite: bool = False,
           progress: bool = True) -> AblationResult:
    """Remove each set of layers in ``removals``, retrain, and compare with the full network.

    ``run_or_spec``: a Run or run directory (its weights are fine-tuned, its training data and
    recipe are reused), or a grammar spec / zoo name / GrammarNet (only ``mode="scratch"``; ``data``
    required). ``removals``: removal sets, each a list of conv/fc names or a comma-separated string
    (``["fc7", "fc6,fc7", ["conv3", "conv4"]]``). ``epochs`` defaults to the run's epochs for
    "scratch" and a third of them (at least 1) for "finetune"; ``lr`` to the run's. ``out``
    defaults to ``<run>/ablation`` (a temporary folder, removed afterwards, when there is no run
    directory); each network trains into ``out/<mode>/<name>`` and resumes there.
    """
    from ..training.evaluate import evaluate
    from ..training.fit import DEMO_RECIPE, train
    from ..training.runs import Run, load_run

    if mode not in MODES:
        raise expect("mode", f"one of {MODES}", mode)
    sets = removal_sets(removals)
    if isinstance(run_or_spec, Path) or (isinstance(run_or_spec, str) and Path(run_or_spec).is_dir()):
        run_or_spec = load_run(run_or_spec)
    run = run_or_spec if isinstance(run_or_spec, Run) else None
    model = run.model if run is not None else run_or_spec
    if (isinstance(model, nn.Module) and not isinstance(model, GrammarNet)) or not isinstance(model, (nn.Module, str)):
        raise not_rewirable(model)
    if run is None and mode == "finetune":
        raise InputError(f"mode='finetune' needs a trained run to take the weights from; got "
                         f"{type(run_or_spec).__name__} {str(run_or_spec)[:60]!r}. Pass mode='scratch' or a run")
    train_ds, test_ds = _resolve_data(run, data, test_data)
    full = run.model if run is not None else _build_full(run_or_spec, train_ds, seed)
    hyper = dict((run.manifest.get("hyperparameters") or {}) if run is not None else {})
    recipe = {k: hyper.get(k, DEMO_RECIPE[k]) for k in ("batch_size", "optimizer", "lr", "momentum",
                                                         "weight_decay", "schedule", "augment")}
    if lr is not None:
        recipe["lr"] = lr
    run_epochs = int(hyper.get("epochs", DEMO_RECIPE["epochs"]))
    epochs = epochs if epochs is not None else (run_epochs if mode == "scratch" else max(1, -(-run_epochs // 3)))
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise expect("epochs", "a positive int", epochs)

    copy = mode == "finetune"
    nets = [((), _clone(full, copy, seed), [])]
    for names in sets:  # build every network first: a bad name fails before any training
        net, reinit = remove_layers(full, names, copy_weights=copy, seed=seed)
        nets.append((names, net, reinit))

    tmp = None
    if out is None and run is not None and run.dir is not None:
        out = Path(run.dir) / "ablation"
    elif out is None:
        tmp = tempfile.TemporaryDirectory(prefix="convlens-ablation-")
        out = tmp.name
    try:
        full_params = _count(nets[0][1])
        rows, base = [], None
        for names, net, reinit in nets:
            where = Path(out) / mode / ("full" if not names else "no-" + "-".join(names))
            trained = train(net, train_ds, out=where, test_data=test_ds, epochs=epochs, seed=seed,
                            overwrite=overwrite, progress=progress, **recipe)
            acc = 1.0 - evaluate(trained, test_ds, k=1).top1_error
            base = acc if base is None else base
            params = _count(net)
            seconds = sum(h.get("seconds") or 0 for h in trained.history)  # training time, resumed or not
            rows.append(AblationRow(tuple(names), params, full_params - params, acc, base - acc, describe(net),
                                    tuple(reinit), round(seconds, 3),
                                    None if tmp is not None else str(where)))
    finally:
        if tmp is not None:
            tmp.cleanup()
    original = None if run is None else 1.0 - evaluate(run, test_ds, k=1).top1_error
    source = getattr(train_ds, "name", "") or getattr(train_ds, "source", "") or type(train_ds).__name__
    name = ((run.manifest.get("arch") or {}).get("name") if run is not None else
            run_or_spec if isinstance(run_or_spec, str) and "," not in run_or_spec else "") or ""
    return AblationResult(describe(full), source, mode, epochs, len(test_ds.labels), tuple(rows), original, name)


def _count(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def _like(net: GrammarNet, spec: str, seed: int) -> GrammarNet:
    """``spec`` built like ``net`` (input shape, naming, layout, device, dtype, mode), weights from ``seed``."""
    ref = next(net.parameters())
    with torch.random.fork_rng(devices=[ref.device.index or 0] if ref.device.type == "cuda" else []):
        torch.manual_seed(seed)
        new = parse(spec, input_shape=net.input_shape, naming=net.naming, layout=net.layout)
    return new.to(device=ref.device, dtype=ref.dtype).train(net.training)


def _clone(net: GrammarNet, copy_weights: bool, seed: int) -> GrammarNet:
    """A fresh network of the same spec: ``net``'s weights (fine-tuning) or new ones from ``seed``."""
    new = _like(net, describe(net), seed)
    if copy_weights:
        new.load_state_dict(net.state_dict())
    return new


def _resolve_data(run, data, test_data):
    """(training ImageDataset, test ImageDataset): given ones, a dataset name's splits, or the run's."""
    from .. import datasets
    from ..training.evaluate import run_test_data

    if isinstance(data, (str, Path)):
        test_data = test_data if test_data is not None else str(data)
        data = datasets.load(str(data), split="train")
    elif data is None and run is not None:
        spec = ((run.manifest.get("data") or {}).get("train") or {}).get("spec")
        if not spec:
            raise InputError("data must be given: the run does not record how to load its training data; got None")
        data = datasets.load(**spec)
        test_data = test_data if test_data is not None else run_test_data(run)
    elif data is None:
        raise InputError("data must be given to train a spec or zoo name (a dataset name, path or ImageDataset); "
                         "got None")
    if isinstance(test_data, (str, Path)):
        test_data = datasets.load(str(test_data), split="test")
    if test_data is None:
        test_data = run_test_data(run) if run is not None else None
    for name, ds in (("data", data), ("test_data", test_data)):
        if not all(hasattr(ds, a) for a in ("images", "labels", "class_names")):
            raise expect(name, "a dataset name or path, or an ImageDataset", type(ds).__name__)
    return data, test_data


def _build_full(arch, ds, seed: int) -> GrammarNet:
    from ..arch.zoo import create, is_zoo_name

    if isinstance(arch, GrammarNet):
        return arch
    shape, k = tuple(ds.input_shape), len(ds.class_names)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create(arch, num_classes=k, input_shape=shape) if is_zoo_name(arch) else \
            parse(arch, input_shape=shape, num_classes=k)
