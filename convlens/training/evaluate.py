"""Classification error as ILSVRC scores it, and where it comes from.

``evaluate(run, data)`` runs the model over the data once and returns an ``Evaluation``: top-1
and top-k error (an image counts as correct at top-5 when its true label is among the 5 highest
scores, as in Russakovsky et al. 2015, "ImageNet Large Scale Visual Recognition Challenge"; with
fewer than k classes every class is among the top k, so top-k error is 0), per-class accuracy,
the easiest and hardest classes (the lecture's slide, with example images of each), the confusion
matrix (rows: true class, columns: predicted) and its most-confused pairs.

**Sharding.** With ``rank``/``world_size`` each process scores a contiguous run of whole batches
(``convlens.shards``); under ``torch.distributed`` at that world size every rank gets the whole (the
parts gathered in image order, equal to one process), else its shard (``Evaluation.merge`` joins shards).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError, expect
from ..layers import model_label
from .checkpoint import write_json
from .runs import Run, load_run


SPLITS = ("test", "train", "all")


@dataclass(eq=False)
class Evaluation:
    """Top-k predictions of a model on labelled images, and the statistics derived from them."""

    class_names: list[str]
    labels: torch.Tensor  # (N,) int64 true classes
    topk: torch.Tensor  # (N, k') int64 predicted classes, best first; k' = min(k, classes)
    k: int = 5
    source: str = ""
    model: str = ""
    examples: int = field(default=5, repr=False)
    split: str = ""  # which images of the source, in words (datasets.describe_split)
    world_size: int = 1  # processes whose shards made it (merged)

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def predictions(self) -> torch.Tensor:
        return self.topk[:, 0]  # (N,)

    def correct_at(self, j: int = 1) -> torch.Tensor:
        """(N,) bool: is the true label among the ``j`` highest scores (j <= k)."""
        if not 1 <= j <= self.k:
            raise expect("j", f"an int in [1, {self.k}]", j)
        return (self.topk[:, :j] == self.labels[:, None]).any(1)

    def top_error(self, j: int) -> float:
        return 1.0 - self.correct_at(j).double().mean().item() if self.n else float("nan")

    @property
    def top1_error(self) -> float:
        return self.top_error(1)

    @property
    def top5_error(self) -> float:
        return self.top_error(5)

    @cached_property
    def confusion(self) -> torch.Tensor:
        """(C, C) int64: ``confusion[t, p]`` images of true class t predicted (top-1) as p."""
        c = self.num_classes
        return torch.bincount(self.labels * c + self.predictions, minlength=c * c).view(c, c)

    @property
    def counts(self) -> torch.Tensor:
        return self.confusion.sum(1)  # (C,)

    @property
    def per_class_accuracy(self) -> torch.Tensor:
        """(C,) float64 top-1 accuracy of each class (NaN for a class without images)."""
        hits = self.confusion.diagonal().double()
        return hits / self.counts.double()

    def easiest(self, n: int = 10) -> list[dict]:
        """The ``n`` classes of highest accuracy, each with a few correctly classified image indices."""
        return self._ranked(n, best=True)

    def hardest(self, n: int = 10) -> list[dict]:
        """The ``n`` classes of lowest accuracy, each with a few misclassified image indices."""
        return self._ranked(n, best=False)

    def _ranked(self, n: int, *, best: bool) -> list[dict]:
        acc = self.per_class_accuracy
        present = [i for i in range(self.num_classes) if self.counts[i] > 0]
        order = sorted(present, key=lambda i: (-acc[i].item() if best else acc[i].item(), i))[:n]
        right = self.predictions == self.labels
        rows = []
        for i in order:
            pick = (self.labels == i) & (right if best else ~right)
            rows.append({"class": self.class_names[i], "index": i, "accuracy": acc[i].item(),
                         "n": int(self.counts[i]), "examples": pick.nonzero().view(-1)[:self.examples].tolist()})
        return rows

    def most_confused(self, n: int = 10) -> list[dict]:
        """The ``n`` largest off-diagonal confusion counts: (true, predicted, count, share of true)."""
        conf = self.confusion.clone()
        conf.fill_diagonal_(0)
        pairs = sorted(((int(conf[t, p]), t, p) for t, p in conf.nonzero().tolist()), key=lambda r: (-r[0], r[1], r[2]))
        return [{"true": self.class_names[t], "predicted": self.class_names[p], "count": c,
                 "fraction": c / int(self.counts[t])} for c, t, p in pairs[:n]]

    def to_dict(self) -> dict:
        accuracy = self.per_class_accuracy.tolist()
        per_class = {name: (None if a != a else a) for name, a in zip(self.class_names, accuracy)}  # NaN -> null
        out = {"n": self.n, "k": self.k, "num_classes": self.num_classes, "source": self.source, "split": self.split,
               "model": self.model, "world_size": self.world_size, "top1_error": self.top1_error}
        if self.k >= 5:
            out["top5_error"] = self.top5_error
        out[f"top{self.k}_error"] = self.top_error(self.k)
        out.update(per_class=per_class, class_names=self.class_names, confusion=self.confusion.tolist(),
                   most_confused=self.most_confused(), easiest=self.easiest(), hardest=self.hardest())
        return out

    @classmethod
    def merge(cls, parts: Sequence["Evaluation"]) -> "Evaluation":
        """Shards of one evaluation, in image order (rank order) -> the whole."""
        parts = list(parts)
        if not parts or not all(isinstance(p, cls) for p in parts):
            raise expect("parts", "a non-empty list of Evaluation", parts)
        first, scored = parts[0], [p for p in parts if p.n] or parts[:1]  # an empty shard's topk has no width
        return cls(first.class_names, torch.cat([p.labels for p in scored]), torch.cat([p.topk for p in scored]),
                   k=first.k, source=first.source, model=first.model, examples=first.examples, split=first.split,
                   world_size=sum(p.world_size for p in parts))

    def save(self, path: str | Path) -> Path:
        """Write ``to_dict()`` as JSON (atomically; missing parent folders are created)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict())
        return Path(path)

    def __repr__(self) -> str:
        split = f" ({self.split})" if self.split else ""
        head = f"Evaluation of {self.model or 'model'} on {self.source or 'data'}{split}: {self.n} images, " \
               f"{self.num_classes} classes"
        errors = f"  top-1 error {100 * self.top1_error:6.2f} %"
        if self.k > 1:
            errors += f"   top-{self.k} error {100 * self.top_error(self.k):6.2f} %"
        lines = [head, errors]
        for title, rows in (("easiest classes", self.easiest(5)), ("hardest classes", self.hardest(5))):
            lines.append(f"  {title}: " + ", ".join(f"{r['class']} ({100 * r['accuracy']:.0f})" for r in rows))
        confused = self.most_confused(5)
        if confused:
            lines.append("  most confused:   " + ", ".join(f"{r['true']} -> {r['predicted']} ({r['count']})"
                                                           for r in confused))
        if self.num_classes <= 30:
            width = max(len(c) for c in self.class_names)
            lines.append(f"  {'class':<{width}}  images  accuracy")
            for name, count, acc in zip(self.class_names, self.counts.tolist(), self.per_class_accuracy.tolist()):
                shown = "   -" if acc != acc else f"{100 * acc:6.1f} %"
                lines.append(f"  {name:<{width}}  {count:6d}  {shown}")
        return "\n".join(lines)


def evaluate(run_or_model, data=None, *, split: str = "test", on_error: str | None = None, batch_size: int = 256,
             k: int = 5, class_names: Sequence[str] | None = None, examples: int = 5, rank: int = 0,
             world_size: int = 1) -> Evaluation:
    """Score ``data`` with a run (or a run path, or an ``nn.Module``) -> ``Evaluation``.

    A ``Run`` sees the images in [0, 1] through its normalization; a bare ``nn.Module`` sees the
    images as they are. ``data``: a dataset name or path, an ImageDataset, or an ``(images, labels)``
    pair; for a run, None means the data it was trained next to. ``split`` picks the images of a name,
    a path or the run's data: ``"test"`` (for a folder without train/ and test/ sub-folders, the
    held-out 20 % of each class), ``"train"`` or ``"all"`` (every image of a folder). ``on_error``
    ("raise"/"skip", image folders) defaults to the run's recorded choice, else "raise". The result
    says which split it scored (``Evaluation.split``) and how many images (``n``).
    Labels are matched to the model's classes by name when both have names. ``rank``/``world_size``:
    this process's shard (module docstring).
    """
    from ..shards import check_shard, gathered, shard_bounds

    if split not in SPLITS:
        raise expect("split", " or ".join(repr(s) for s in SPLITS), split)
    if on_error not in (None, "raise", "skip"):
        raise expect("on_error", "'raise' or 'skip'", on_error)
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
        raise expect("k", "a positive int", k)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise expect("batch_size", "a positive int", batch_size)
    check_shard(rank, world_size)
    if split != "test" and data is not None and not isinstance(data, (str, Path)):
        raise expect("split", "'test' (the default) for data given as images: split picks the images of a dataset "
                     "name or path, or of the run's own data", split)
    if isinstance(run_or_model, (str, Path)):
        run_or_model = load_run(run_or_model)
    if isinstance(run_or_model, Run):
        run = run_or_model
        model, names, label = run.pixel_model(), run.class_names, str(run.dir or run.path or "run")
        if data is None:
            data = run_data(run, split, on_error=on_error)
    elif isinstance(run_or_model, nn.Module):
        model, names, label = run_or_model, None, model_label(run_or_model)
    else:
        raise expect("run_or_model", "a Run, a run path or an nn.Module", type(run_or_model).__name__)
    if isinstance(data, (str, Path)):
        from .. import datasets

        data = datasets.load(str(data), split=split, on_error=on_error or "raise")
    images, labels, data_names, source = _resolve_data(data)
    names = list(class_names) if class_names is not None else names or data_names
    if names is None:
        raise InputError("class_names must be given when neither the model nor the data names its classes; got None")
    labels = _match_labels(labels, data_names, names)
    lo, hi = shard_bounds(len(labels), batch_size, rank, world_size)
    topk, n_scores = _topk(model, images[lo:hi], batch_size, k)  # (hi - lo, min(k, classes))
    if n_scores is not None and n_scores != len(names):
        raise InputError(f"the model must give one score per class ({len(names)} classes); got {n_scores} scores")
    result = Evaluation(list(names), labels[lo:hi], topk, k=k, source=source, model=label, examples=examples,
                        split=split_of(data))
    parts = gathered(result, world_size)
    return result if parts is None else Evaluation.merge(parts)


def split_of(data) -> str:
    """Which images ``data`` holds, in words (``datasets.describe_split``; "" for a tensor pair)."""
    from ..data.load import describe_split

    return describe_split(data)


def run_test_data(run: Run):
    """The test split a run was trained next to (from its manifest)."""
    return run_data(run, "test")


def run_data(run: Run, split: str = "test", *, on_error: str | None = None):
    """The ``split`` ("test", "train" or "all") of the data a run was trained on, from its manifest: the
    test set it recorded, its training set (with its ``n``), or else its training data's other split.
    ``on_error`` (image folders) overrides the recorded choice."""
    from .. import datasets

    if split not in SPLITS:
        raise expect("split", " or ".join(repr(s) for s in SPLITS), split)
    info = run.manifest.get("data") or {}
    test, train = (info.get("test") or {}).get("spec"), (info.get("train") or {}).get("spec")
    if split == "test" and test:
        spec = dict(test)
    elif split == "train" and train:
        spec = dict(train)
    elif test or train:
        spec = {key: v for key, v in (test or train).items() if key not in ("n", "split")}
        spec["split"] = split
    elif info.get("source"):
        spec = {"name_or_path": info["source"], "split": split}
    else:
        raise InputError(f"data must be given: the run {run.dir or run.path} does not record its data source; "
                         "got None")
    if on_error is not None:
        spec["on_error"] = on_error
    return datasets.load(**spec)


def _resolve_data(data):
    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels = data
        names, source = None, "images"
    elif all(hasattr(data, a) for a in ("images", "labels")):
        images, labels = data.images, data.labels
        names, source = getattr(data, "class_names", None), getattr(data, "source", "") or type(data).__name__
    else:
        raise expect("data", "a dataset name or path, an ImageDataset or an (images, labels) pair", type(data).__name__)
    labels = torch.as_tensor(labels).to("cpu", torch.int64).reshape(-1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) != len(labels):
        raise expect("data", f"images (N, C, H, W) with one label each ({len(labels)} labels)",
                     tuple(getattr(images, "shape", ())))
    return images, labels, (list(names) if names is not None else None), source


def _match_labels(labels: torch.Tensor, data_names, names) -> torch.Tensor:
    """Data label indices -> the model's class indices, by name (identity when the names agree)."""
    if data_names is None or list(data_names) == list(names):
        if len(labels) and int(labels.max()) >= len(names):
            raise expect("labels", f"in [0, {len(names) - 1}]", int(labels.max()))
        return labels
    missing = [c for c in data_names if c not in names]
    if missing:
        raise InputError(f"data classes must be among the model's {len(names)} classes; got unknown "
                         f"{', '.join(map(repr, missing[:5]))}")
    lookup = torch.tensor([list(names).index(c) for c in data_names], dtype=torch.int64)
    return lookup[labels]


@torch.no_grad()
def _topk(model: nn.Module, images: torch.Tensor, batch_size: int, k: int) -> tuple[torch.Tensor, int | None]:
    """((N, min(k, scores)) int64 top-k class indices, number of scores), the model in eval mode, its
    mode restored afterwards."""
    ref = next(iter(model.parameters()), None)
    ref = ref if ref is not None else next(iter(model.buffers()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)
    was_training = model.training
    model.eval()
    out, n_scores = [], None
    try:
        for i in range(0, len(images), batch_size):
            scores = model(images[i:i + batch_size].to(device, dtype))  # (B, K)
            n_scores = scores.shape[1]
            out.append(scores.topk(min(k, n_scores), dim=1).indices.cpu())
    finally:
        model.train(was_training)
    return (torch.cat(out) if out else torch.zeros(0, k, dtype=torch.int64)), n_scores
