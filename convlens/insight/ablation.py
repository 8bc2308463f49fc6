"""Layer ablation: remove layers of a grammar network, retrain, and compare test accuracy.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, section 5.1
(https://arxiv.org/abs/1311.2901), the lecture's "Architecture of Krizhevsky et al." slides:
removing layer 7 drops 16M parameters and costs 1.1 %; layers 6 & 7 ~50M and 5.7 %; layers 3 & 4
~1M and 3.0 %; layers 3, 4, 6, 7 together 33.5 % -- depth is key.

Which layers go with a removed one and how the rest is re-wired: :mod:`.rewiring`.

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
from ..errors import InputError, expect
from .rewiring import clone, not_rewirable, remove_layers

MODES = ("finetune", "scratch")


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
    nets = [((), clone(full, copy, seed), [])]
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
