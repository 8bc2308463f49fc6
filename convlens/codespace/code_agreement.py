"""How semantic is each layer's code space? ``agreement_by_layer(model_or_run) -> CodeAgreement``.

For raw pixels and for every conv/fc layer (plus the CNN code, the classifier's input), each image
of the data is a query against all the others: the share of its k nearest neighbours (exact,
``convlens.neighbors``) that carry its class. The lecture's point in one number per layer:
neighbours in pixel space share colours and backgrounds, neighbours in the code space share the
object (Krizhevsky et al., NIPS 2012, Fig. 4). ``chance`` is the share expected for neighbours drawn
at random: sum_c n_c (n_c - 1) / (N (N - 1)).

Conv layers are summarized by ``pool`` (default per-channel mean, ``"avg"``); the CNN code is read
exactly as ``convlens.codes`` reads it; pixels are the images flattened. One metric for all.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, expect

__all__ = ["CodeAgreement", "agreement_by_layer", "chance_agreement"]


@dataclass(frozen=True, repr=False)
class CodeAgreement:
    """``agreement[i]``: share of the k nearest neighbours (in ``layers[i]``'s space) of the query's class."""

    layers: tuple[str, ...]       # "pixels" first, then layers low to high
    tapped: tuple[str, ...]
    dims: tuple[int, ...]
    agreement: tuple[float, ...]
    k: int
    metric: str
    pool: str
    n: int
    chance: float
    code_layer: str = ""          # which of ``layers`` is the CNN code
    model: str = ""
    data: str = ""
    world_size: int = 1           # processes that shared the extraction
    schema: str = "convlens.code-agreement/1"

    def __repr__(self) -> str:
        lines = [f"Neighbour label agreement at k={self.k} ({self.metric}) over {self.n} images of "
                 f"{self.data or 'data'}; chance {100 * self.chance:.1f}%"]
        width = max(8, *(len(name) for name in self.layers))
        for name, d, a in zip(self.layers, self.dims, self.agreement):
            mark = "  <- CNN code" if name == self.code_layer else ""
            lines.append(f"  {name:<{width}} {d:>7,} dims  {100 * a:5.1f}%{mark}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": self.schema, "k": self.k, "metric": self.metric, "pool": self.pool, "n": self.n,
                "chance": self.chance, "code_layer": self.code_layer, "model": self.model, "data": self.data,
                "world_size": self.world_size, "rows": [{"layer": name, "tapped": t, "dims": d, "agreement": a}
                         for name, t, d, a in zip(self.layers, self.tapped, self.dims, self.agreement)]}

    @classmethod
    def from_dict(cls, d: dict) -> "CodeAgreement":
        rows = d["rows"]
        return cls(tuple(r["layer"] for r in rows), tuple(r["tapped"] for r in rows), tuple(int(r["dims"]) for r in rows),
                   tuple(float(r["agreement"]) for r in rows), int(d["k"]), d["metric"], d["pool"], int(d["n"]),
                   float(d["chance"]), d.get("code_layer", ""), d.get("model", ""), d.get("data", ""),
                   int(d.get("world_size", 1)))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    def plot(self, *, ax=None):
        from ..plots.codes import agreement_figure

        return agreement_figure(self.to_dict()["rows"], k=self.k, chance=self.chance, ax=ax)


def chance_agreement(labels: Sequence[int] | np.ndarray) -> float:
    """Probability that another item drawn at random shares an item's label."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if n < 2:
        return float("nan")
    counts = np.unique(labels, return_counts=True)[1].astype(float)
    return float((counts * (counts - 1)).sum() / (n * (n - 1)))


def agreement_by_layer(model_or_run, data=None, layers: Sequence[str] | None = None, *, k: int = 5,
                       metric: str = "cosine", pool: str = "avg", pixels: bool = True, batch_size: int = 128,
                       progress: bool = False, rank: int = 0, world_size: int = 1) -> CodeAgreement:
    """Neighbour label agreement at ``k`` for raw pixels, each layer and the CNN code (module docstring).

    ``layers``: default every conv/fc layer (a grammar net's read after its ReLU, as in
    ``convlens.probe``); ``data`` as for ``convlens.codes`` (default: a run's test split).
    ``rank``/``world_size`` shard the extraction as ``convlens.features`` does; under torch.distributed
    every rank then measures the agreement of the whole (the neighbours are not sharded).
    """
    from ..insight.features import features
    from ..insight.probes import choose_layers
    from ..shards import check_shard, distributed
    from ..training.runs import model_and_run
    from ..taps import BatchSource, model_device
    from .codes import INPUT_SUFFIX, _data, _data_label, _model_label, code_layer, codes, pixel_codes
    from .neighbors import label_agreement

    check_shard(rank, world_size)
    if world_size > 1 and not distributed(world_size):
        raise InputError(f"world_size must be 1 unless torch.distributed runs that many processes (torchrun): "
                         f"the agreement needs every shard's codes; got {world_size}")
    model, run = model_and_run(model_or_run)
    data = _data(data, run)
    src = BatchSource(data)
    if src.labels is None:
        raise InputError("data must carry labels to measure agreement (an ImageDataset or an (images, labels) "
                         "pair); got images without labels")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < src.n:
        raise expect("k", f"an int in [1, {src.n - 1}]", k)
    device, dtype = model_device(model)
    code_name, code_tap = code_layer(model, src.batch(0, min(2, src.n)).to(device=device, dtype=dtype))
    shown, taps = choose_layers(model, layers)
    pairs = [(s, t) for s, t in zip(shown, taps) if t != code_tap]
    reads = [t for _, t in pairs] + ([] if code_tap.endswith(INPUT_SUFFIX) else [code_tap])
    shard = {"rank": rank, "world_size": world_size}
    feats = features(model, data, reads, pool=pool, batch_size=batch_size, progress=progress, **shard) if reads else None
    spaces = [(s, t, feats[t]) for s, t in pairs]
    shape = feats.shapes.get(code_tap) if feats is not None and code_tap in feats else None
    if shape is not None and (pool == "flat" or int(np.prod(shape[1:])) == 1):  # pooling changes nothing
        code_vec = feats[code_tap]
    else:  # the code read on its own pass, flattened exactly as the classifier sees it
        code_vec = codes(model, data, code_tap, pool="flat", batch_size=batch_size, progress=progress, **shard).vectors
    last_fc = next((i for i in range(len(spaces) - 1, -1, -1) if _is_linear(model, spaces[i][1])), None)
    at = last_fc if last_fc is not None and layers is None else len(spaces)  # the code just before the classifier
    spaces.insert(at, (code_name, code_tap, code_vec))
    if pixels:
        spaces.insert(0, ("pixels", "pixels", pixel_codes(data).vectors))
    labels = src.labels
    agreement = [label_agreement(vec, labels, k=k, metric=metric) for _, _, vec in spaces]
    return CodeAgreement(tuple(s for s, _, _ in spaces), tuple(t for _, t, _ in spaces),
                         tuple(int(v.shape[1]) for _, _, v in spaces), tuple(agreement), k, metric, pool,
                         src.n, chance_agreement(labels), code_name, _model_label(model, run), _data_label(data),
                         world_size)


def _is_linear(model, name: str) -> bool:
    from torch import nn

    from ..layers import resolve

    return isinstance(resolve(model, name)[1], nn.Linear)
