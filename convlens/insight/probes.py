"""Linear probes per layer: how linearly separable are the classes in each layer's features?

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, section 5.2
(https://arxiv.org/abs/1311.2901), the lecture's "Tapping off Features @each Layer" table: a linear
SVM or a softmax classifier is trained on the features of one layer, with n training images per
class, over R random splits, and tested on a fixed test set; "higher layers generally produce more
discriminative features".

What is probed (stated in the result):

* **layers** -- by default every conv and fc layer. For a grammar network (``convlens.parse``, the
  zoo, a ``convlens.train`` run) a conv/fc name stands for that layer's *output after its ReLU*
  (the last activation among the BN/ReLU/LRN/dropout that belong to it, see
  ``convlens.insight.rewiring.layer_groups``), as in the paper; the last fc (the class scores) has
  no ReLU and is probed as it is. For any other model the default is every ``nn.Conv2d`` and
  ``nn.Linear`` by module path, probed as they output (a functional ``F.relu`` cannot be tapped);
  any name given explicitly is tapped exactly.
* **features** -- ``convlens.features`` with ``pool`` ("max": global max over space per channel,
  "avg", or "flat": every value), streamed in batches; only the images some split uses are read.
* **splits** -- for repeat r, each class's images are shuffled with ``numpy.random.default_rng((seed,
  r))``; the split with n per class takes the first n of each class, so the 5/class split is
  inside the 30/class one.
* **classifiers** -- ``sklearn.svm.LinearSVC`` (one-vs-rest hinge) and ``LogisticRegression``
  (multinomial softmax, L-BFGS), both C=1, on features standardized with the training split's mean
  and std. Accuracy is top-1 on the test set; mean ± std (population std, ddof=0) over repeats.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, expect
from ..layers import model_label

CLASSIFIERS = {"svm": "SVM", "softmax": "Softmax"}
POOLS = ("max", "avg", "flat")


# ---- the pure parts -------------------------------------------------------------------------------------

def splits(labels, per_class: Sequence[int], repeats: int, seed: int) -> list[list[np.ndarray]]:
    """``out[r][p]``: sorted indices of the repeat-r training split with ``per_class[p]`` images per class."""
    labels = np.asarray(labels).reshape(-1)
    classes, counts = np.unique(labels, return_counts=True)
    most = max(per_class)
    short = [(int(c), int(k)) for c, k in zip(classes, counts) if k < most]
    if short:
        c, k = short[0]
        raise InputError(f"per_class must be at most the images of every class ({k} in class {c}); got {most}")
    out = []
    for r in range(repeats):
        rng = np.random.default_rng((seed, r))
        order = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
        out.append([np.sort(np.concatenate([o[:n] for o in order])) for n in per_class])
    return out


def make_classifier(kind: str, *, seed: int = 0):
    """A fresh scikit-learn classifier of the given kind ("svm" or "softmax"), C=1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC

    if kind == "svm":
        return LinearSVC(C=1.0, max_iter=5000, random_state=seed)
    if kind == "softmax":
        return LogisticRegression(C=1.0, max_iter=2000)
    raise expect("classifier", f"one of {tuple(CLASSIFIERS)}", kind)


def fit_score(kind: str, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
              *, seed: int = 0) -> tuple[float, bool]:
    """(test accuracy, converged) of one classifier on standardized features."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x_train)
    clf = make_classifier(kind, seed=seed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return float((clf.predict(scaler.transform(x_test)) == y_test).mean()), converged


# ---- the result ------------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class ProbeResult:
    """Test accuracy of linear classifiers on each layer's features: ``accuracy[layer, classifier, n, repeat]``."""

    model: str
    data: str
    layers: tuple[str, ...]          # names shown (lecture names where there are some)
    tapped: tuple[str, ...]          # the layer actually read for each (e.g. relu1 for conv1)
    dims: tuple[int, ...]            # feature dimension of each layer
    classifiers: tuple[str, ...]
    per_class: tuple[int, ...]
    repeats: int
    pool: str
    seed: int
    accuracy: np.ndarray             # (L, K, P, R) in [0, 1]
    n_test: int
    num_classes: int
    timing: dict = field(default_factory=dict)   # {"extract_s", "fit_s": {layer: {classifier: s}}}
    not_converged: int = 0           # fits that stopped at max_iter
    schema: str = "convlens.probe/1"

    @property
    def mean(self) -> np.ndarray:
        return self.accuracy.mean(axis=3)  # (L, K, P)

    @property
    def std(self) -> np.ndarray:
        return self.accuracy.std(axis=3)  # (L, K, P), ddof=0

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def cell(self, layer: str, classifier: str, n: int) -> tuple[float, float]:
        """(mean, std) accuracy of one table cell."""
        li, ki, pi = self.layers.index(layer), self.classifiers.index(classifier), self.per_class.index(n)
        return float(self.mean[li, ki, pi]), float(self.std[li, ki, pi])

    def headers(self) -> list[str]:
        return ["features"] + [f"{self.data} ({n}/class)" for n in self.per_class]

    def table(self) -> list[list[str]]:
        """The lecture's table: ``SVM (conv1)`` ... ``Softmax (fc5)`` rows, "mean ± std" % cells."""
        rows = []
        for k, kind in enumerate(self.classifiers):
            for li, layer in enumerate(self.layers):
                rows.append([f"{CLASSIFIERS[kind]} ({layer})"] +
                            [f"{100 * self.mean[li, k, p]:.1f} ± {100 * self.std[li, k, p]:.1f}"
                             for p in range(len(self.per_class))])
        return rows

    def __repr__(self) -> str:
        headers, rows = self.headers(), self.table()
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
        fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w)  # noqa: E731
                                      for i, (c, w) in enumerate(zip(cells, widths)))
        tapped = [f"{a}={b}" for a, b in zip(self.layers, self.tapped) if a != b]
        lines = [f"Linear probes of {self.model} on {self.data}: test accuracy (%) on {self.n_test:,} images, "
                 f"mean ± std over {self.repeats} random training splits",
                 f"features: {self.pool}-pooled over space" if self.pool != "flat" else "features: every value",
                 fmt(headers), "-" * len(fmt(headers)), *(fmt(r) for r in rows),
                 f"chance: {100 * self.chance:.1f} %; dims: " +
                 ", ".join(f"{a} {d:,}" for a, d in zip(self.layers, self.dims))]
        if tapped:
            lines.append("read after the ReLU: " + ", ".join(tapped))
        if self.timing:
            fit = sum(sum(v.values()) for v in self.timing.get("fit_s", {}).values())
            lines.append(f"time: features {self.timing.get('extract_s', 0):.1f} s (all layers, one pass), "
                         f"classifiers {fit:.1f} s")
        if self.not_converged:
            lines.append(f"note: {self.not_converged} fits stopped at max_iter before converging")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "model": self.model, "data": self.data, "layers": list(self.layers),
                "tapped": list(self.tapped), "dims": list(self.dims), "classifiers": list(self.classifiers),
                "per_class": list(self.per_class), "repeats": self.repeats, "pool": self.pool, "seed": self.seed,
                "accuracy": self.accuracy.tolist(), "mean": self.mean.tolist(), "std": self.std.tolist(),
                "n_test": self.n_test, "num_classes": self.num_classes, "chance": self.chance,
                "timing": self.timing, "not_converged": self.not_converged, "table": self.table(),
                "headers": self.headers()}

    @classmethod
    def from_dict(cls, d: dict) -> "ProbeResult":
        return cls(d["model"], d["data"], tuple(d["layers"]), tuple(d["tapped"]), tuple(d["dims"]),
                   tuple(d["classifiers"]), tuple(d["per_class"]), int(d["repeats"]), d["pool"], int(d["seed"]),
                   np.asarray(d["accuracy"], dtype=float), int(d["n_test"]), int(d["num_classes"]),
                   dict(d.get("timing") or {}), int(d.get("not_converged", 0)))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    def plot(self, *, ax=None):
        """Accuracy vs depth with ± std error bars, one line per classifier and n."""
        from ..plots.probes import probe_curves

        return probe_curves(self.to_dict(), ax=ax)


# ---- the experiment --------------------------------------------------------------------------------------

def probe(model_or_run, data=None, *, layers: Sequence[str] | None = None, per_class: Sequence[int] = (5, 30),
          repeats: int = 5, classifiers: Sequence[str] = ("svm", "softmax"), pool: str = "max", seed: int = 0,
          test_data=None, batch_size: int = 128, progress: bool = True) -> ProbeResult:
    """Train linear classifiers on each layer's features and test them (see the module docstring).

    ``model_or_run``: a Run or run directory (images go through its normalization) or an
    ``nn.Module`` (images as they are). ``data``: the pool the training splits are drawn from (a
    dataset name or path -- its train split --, an ImageDataset or an ``(images, labels)`` pair;
    default: the run's training data; for a run wrapped with test images only, half of each class, the
    other half being the test set). ``test_data``: the fixed test set (default: the test split
    of ``data``, or the run's). ``per_class``: training images per class, one column each.
    """
    from ..training.runs import model_and_run

    per_class = _check(per_class, repeats, classifiers, pool, seed)
    model, run = model_and_run(model_or_run)
    train_x, train_y, data_name, test_default, n_classes = _pool(data, run)
    test_data = test_data if test_data is not None else test_default
    if test_data is None:
        raise InputError("test_data must be given when data is neither a dataset name nor the run's own data; "
                         "got None")
    test_x, test_y, _, _, _ = _pool(test_data, None, what="test_data")
    shown, tapped = choose_layers(model, layers)

    idx = splits(train_y.numpy(), per_class, repeats, seed)
    used = np.unique(np.concatenate([s for rep in idx for s in rep]))  # only the images some split uses
    where = np.searchsorted(used, np.arange(len(train_y)))  # index into `used` of a (used) image

    t0 = time.perf_counter()
    f_train = _extract(model, train_x[torch.as_tensor(used)], train_y[torch.as_tensor(used)], tapped, pool,
                       batch_size, progress)
    f_test = _extract(model, test_x, test_y, tapped, pool, batch_size, progress)
    extract_s = time.perf_counter() - t0

    y_used, y_test = train_y.numpy()[used], test_y.numpy()
    acc, fit_s, missed = _fit_all(shown, tapped, classifiers, per_class, repeats, seed, f_train, y_used, f_test,
                                  y_test, [[where[s] for s in rep] for rep in idx])
    dims = tuple(int(f_test[t].shape[1]) for t in tapped)
    label = (run.manifest.get("arch") or {}).get("name") or str(run.dir or "run") if run else model_label(model)
    return ProbeResult(label, data_name, tuple(shown), tuple(tapped), dims, tuple(classifiers), per_class,
                       repeats, pool, seed, acc, len(y_test), max(n_classes, int(test_y.max()) + 1),
                       {"extract_s": round(extract_s, 4), "fit_s": fit_s}, missed)


def _fit_all(shown, tapped, classifiers, per_class, repeats, seed, f_train, y_train, f_test, y_test, rows):
    """(accuracy (L, K, P, R), fit seconds per layer and classifier, fits that did not converge).
    ``rows[r][p]`` indexes ``f_train``/``y_train`` for the split of repeat r and size p."""
    from threadpoolctl import threadpool_limits

    for kind in classifiers:  # loads scikit-learn (and scipy's own BLAS) first, so that the limit reaches it
        make_classifier(kind)

    acc = np.zeros((len(shown), len(classifiers), len(per_class), repeats))
    fit_s: dict[str, dict[str, float]] = {}
    missed = 0
    with threadpool_limits(limits=1):  # small problems: BLAS threads only contend (10x slower on 2 busy cores)
        for li, (name, tap) in enumerate(zip(shown, tapped)):
            x_train, x_test = f_train[tap], f_test[tap]
            fit_s[name] = {}
            for k, kind in enumerate(classifiers):
                t0 = time.perf_counter()
                for r in range(repeats):
                    for p in range(len(per_class)):
                        split = rows[r][p]
                        acc[li, k, p, r], ok = fit_score(kind, x_train[split], y_train[split], x_test, y_test,
                                                         seed=seed)
                        missed += not ok
                fit_s[name][kind] = round(time.perf_counter() - t0, 4)
    return acc, fit_s, missed


def choose_layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(names shown, names tapped). A grammar network's conv/fc names map to their post-ReLU output."""
    from ..arch.grammar import GrammarNet
    from ..layers import resolve, user_path
    from .rewiring import layer_groups

    net = getattr(model, "net", model)
    groups = layer_groups(net) if isinstance(net, GrammarNet) else []
    if layers is None:
        if groups:
            return [g.name for g in groups], [g.output for g in groups]
        paths = [user_path(model, p) for p, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        if not paths:
            raise InputError(f"layers must be given: this {model_label(model)} has no nn.Conv2d or nn.Linear "
                             "to probe by default; got None")
        return paths, paths
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    if not layers or not all(isinstance(n, str) for n in layers):
        raise expect("layers", "a non-empty list of layer names", layers)
    outputs = {g.name: g.output for g in groups}
    for name in layers:
        resolve(model, name)  # LayerNotFoundError with suggestions before any work
    return list(layers), [outputs.get(n, n) for n in layers]


def _check(per_class, repeats, classifiers, pool, seed) -> tuple[int, ...]:
    if isinstance(per_class, int):
        per_class = (per_class,)
    try:
        pcs = tuple(int(n) for n in per_class)
        ok = len(pcs) > 0 and all(n >= 1 and n == v for n, v in zip(pcs, per_class))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise expect("per_class", "positive ints, e.g. (5, 30)", per_class)
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise expect("repeats", "a positive int", repeats)
    if isinstance(classifiers, str) or not classifiers or any(c not in CLASSIFIERS for c in classifiers):
        raise expect("classifiers", f"a non-empty list of {tuple(CLASSIFIERS)}", classifiers)
    if pool not in POOLS:
        raise expect("pool", f"one of {POOLS}", pool)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise expect("seed", "an int >= 0", seed)
    return pcs


def _pool(data, run, *, what: str = "data"):
    """(images (N, C, H, W), labels (N,) int64, name, default test data, classes) of a data argument."""
    from .. import datasets

    test_default = None
    if data is None and run is not None:
        from ..training.evaluate import run_test_data

        spec = ((run.manifest.get("data") or {}).get("train") or {}).get("spec")
        if spec:
            data, test_default = datasets.load(**spec), run_test_data(run)
        elif ((run.manifest.get("data") or {}).get("test") or {}).get("spec"):
            data, test_default = _halves(run_test_data(run))  # a wrapped run: only its test images
        else:
            raise InputError(f"{what} must be given: the run records no data (wrap it with --data DIR); got None")
    elif data is None:
        raise InputError(f"{what} must be given for a bare model (a dataset name or path, an ImageDataset or an "
                         "(images, labels) pair); got None")
    if isinstance(data, (str, Path)):
        split = "test" if what == "test_data" else "train"
        test_default = str(data)
        data = datasets.load(str(data), split=split)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels, name = data[0], data[1], "images"
    elif hasattr(data, "images") and hasattr(data, "labels"):
        images, labels = data.images, data.labels
        name = getattr(data, "name", "") or getattr(data, "source", "") or type(data).__name__
    else:
        raise expect(what, "a dataset name or path, an ImageDataset or an (images, labels) pair", type(data).__name__)
    labels = torch.as_tensor(labels).to("cpu", torch.int64).reshape(-1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) != len(labels) or not len(labels):
        raise expect(what, f"images (N, C, H, W) with one label each ({len(labels)} labels)",
                     tuple(getattr(images, "shape", ())))
    classes = len(getattr(data, "class_names", None) or []) or int(labels.max()) + 1
    return images, labels, name, test_default, classes


def _halves(ds) -> tuple[tuple, tuple]:
    """A run that holds only test images (``convlens wrap --data``): half of each class is the pool the
    probes train on, the other half their test set, chosen with a fixed seed (no image in both)."""
    labels = torch.as_tensor(ds.labels).to("cpu", torch.int64)
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=gen)
    pool = torch.zeros(len(labels), dtype=torch.bool)
    for c in labels.unique():
        rows = order[labels[order] == c]
        pool[rows[: (len(rows) + 1) // 2]] = True
    return (ds.images[pool], labels[pool]), (ds.images[~pool], labels[~pool])


def _extract(model, images, labels, layers, pool, batch_size, progress) -> dict[str, np.ndarray]:
    """{tapped layer: (N, D) float32 features} through ``convlens.features``."""
    from .features import features

    feats = features(model, (images, labels), list(dict.fromkeys(layers)), pool=pool, batch_size=batch_size,
                     progress=progress)
    return {name: np.asarray(feats[name], dtype=np.float32) for name in layers}
