"""Training-health diagnostics: ``health(model, data) -> HealthReport``.

The lecture (M. Ranzato's "other things good to know" slides): *good training: hidden units are
sparse across samples and across features*; *bad training: many hidden units ignore the input
and/or exhibit strong correlations*; *feature maps need to be uncorrelated and have high variance*.

**Which layers.** By default every ReLU-like module (ReLU, ReLU6, LeakyReLU, PReLU, RReLU, ELU,
CELU, SELU, GELU, SiLU, Mish, Hardswish), i.e. the post-nonlinearity activations; a module called
several times in one forward (a shared ``self.relu``) counts once per call (``name#2`` ...). A model
with none (``F.relu`` inside ``forward``) gets every Conv/Linear layer except the output layer.
``layers=`` names any layers. Every layer is measured on its positive part ``max(x, 0)``: for a
ReLU output that is the output itself; for a conv/fc output it is what a following ReLU passes.

**Units.** A unit is a channel (a conv feature map) or an fc neuron. On one image, a channel's
*activity* is the fraction of its positions where it is > 0 and its *value* is its spatial mean
(mean-pooled); for an fc unit both are the unit itself (activity 0 or 1).

**Statistics per layer** over ``n`` samples (``max_samples`` spread evenly over the data):

- ``dead_fraction``: units never active (activity 0 on every sample);
- ``sparsity_samples``: per unit, 1 - its mean activity over samples, averaged over units;
  ``sparsity_features``: per sample, 1 - its mean activity over units, averaged over samples
  (the two means are equal by construction; their distributions, kept in ``unit_sparsity`` and
  ``sample_sparsity``, are what differ);
- ``always_active_fraction``: units active at every position on every sample;
- ``variance`` of each unit's value across samples, and ``rel_variance`` = variance / mean square
  (the share of the unit's energy that depends on the input; 0 for a dead unit);
  ``constant_fraction``: live units with ``rel_variance`` below ``THRESHOLDS["rel_variance"]``;
- ``mean_abs_corr``: mean |Pearson r| over pairs of units whose value varies, and ``top_pairs``,
  the most-correlated pairs.

**Verdicts** (``THRESHOLDS``; a layer is "healthy" when none applies): "many dead units" when
``dead_fraction >= 0.3``; "low variance / ignores the input" when ``constant_fraction >= 0.3``;
"strongly correlated units" when ``mean_abs_corr >= 0.5``; "not sparse" when the mean sparsity is
below 0.05 (units that almost never switch off behave linearly); "non-finite activations" when
any value is NaN or infinite (a diverged training; those entries count as inactive and 0).
Calibration: the demo run (shapesnet on shapes, 10 epochs) has no dead or constant units and
mean |r| 0.15-0.25 per layer; randomly initialized nets 0.14-0.34; nets with a copied filter,
a far too high learning rate or a large negative bias trip the verdicts (tests/test_health.py).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, expect
from ..layers import model_label
from ..io import atomic_write_json, read_json
from ..layers import display_names
from ..inputs import as_images, forward_errors
from ..taps import BatchSource, _names, capture, eval_mode, model_device

THRESHOLDS = {
    "dead_fraction": 0.30,     # >= this share of units never active -> "many dead units"
    "rel_variance": 0.01,      # a live unit whose variance / mean square is below this ignores the input
    "constant_fraction": 0.30, # >= this share of units ignoring the input -> "low variance / ignores the input"
    "mean_abs_corr": 0.50,     # mean |r| over unit pairs >= this -> "strongly correlated units"
    "min_sparsity": 0.05,      # mean inactive share below this -> "not sparse"
}
RELU_LIKE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU, nn.ELU, nn.CELU, nn.SELU, nn.GELU, nn.SiLU,
             nn.Mish, nn.Hardswish)
MATRIX_UNITS = 64    # units kept in to_dict()'s correlation and activation matrices
MATRIX_SAMPLES = 64  # samples kept in to_dict()'s activation matrix
_CHUNK = 1 << 16     # rows per float64 Gram update (bounds the extra memory)

__all__ = ["health", "HealthReport", "LayerHealth", "THRESHOLDS", "default_layers", "layer_stats"]


@dataclass(eq=False)
class LayerHealth:
    """The statistics of one layer (see the module docstring); arrays are per unit or per sample."""

    name: str
    path: str
    units: int
    samples: int
    dead_fraction: float
    always_active_fraction: float
    constant_fraction: float
    sparsity_samples: float
    sparsity_features: float
    mean_variance: float
    mean_abs_corr: float | None
    issues: list[str]
    top_pairs: list[tuple[int, int, float]] = field(default_factory=list)
    unit_sparsity: np.ndarray | None = None   # (U,)
    sample_sparsity: np.ndarray | None = None  # (n,)
    variance: np.ndarray | None = None         # (U,)
    rel_variance: np.ndarray | None = None     # (U,)
    corr: np.ndarray | None = None             # (U, U); nan where a unit does not vary
    values: np.ndarray | None = None           # (n, U) mean-pooled values, max(x, 0)

    @property
    def verdict(self) -> str:
        return "; ".join(self.issues) if self.issues else "healthy"

    def to_dict(self) -> dict:
        u, s = min(self.units, MATRIX_UNITS), min(self.samples, MATRIX_SAMPLES)
        rows = np.linspace(0, self.samples - 1, s).astype(int) if self.samples else np.zeros(0, int)
        return {"name": self.name, "path": self.path, "units": self.units, "samples": self.samples,
                "verdict": self.verdict, "issues": list(self.issues),
                "dead_fraction": self.dead_fraction, "always_active_fraction": self.always_active_fraction,
                "constant_fraction": self.constant_fraction, "sparsity_samples": self.sparsity_samples,
                "sparsity_features": self.sparsity_features, "mean_variance": self.mean_variance,
                "mean_abs_corr": self.mean_abs_corr,
                "top_pairs": [{"a": int(a), "b": int(b), "r": round(float(r), 4)} for a, b, r in self.top_pairs],
                "unit_sparsity": _list(self.unit_sparsity), "sample_sparsity": _list(self.sample_sparsity),
                "variance": _list(self.variance), "rel_variance": _list(self.rel_variance),
                "corr": None if self.corr is None else _list(self.corr[:u, :u]),
                "values": None if self.values is None else _list(self.values[rows][:, :u])}

    @classmethod
    def from_dict(cls, d: dict) -> "LayerHealth":
        arr = lambda k: None if d.get(k) is None else np.asarray(d[k], dtype=float)  # noqa: E731
        return cls(d["name"], d["path"], d["units"], d["samples"], d["dead_fraction"], d["always_active_fraction"],
                   d["constant_fraction"], d["sparsity_samples"], d["sparsity_features"], d["mean_variance"],
                   d["mean_abs_corr"], list(d["issues"]), [(p["a"], p["b"], p["r"]) for p in d["top_pairs"]],
                   arr("unit_sparsity"), arr("sample_sparsity"), arr("variance"), arr("rel_variance"), arr("corr"),
                   arr("values"))


def _list(a):
    """Array -> nested lists rounded to 5 decimals, NaN as None (strict JSON)."""
    if a is None:
        return None
    arr = np.round(np.asarray(a, dtype=float), 5)
    return np.where(np.isnan(arr), None, arr).tolist()


@dataclass(eq=False)
class HealthReport:
    """Per-layer health statistics and verdicts; ``plot()`` draws the overview (or one layer)."""

    layers: list[LayerHealth]
    samples: int
    thresholds: dict = field(default_factory=lambda: dict(THRESHOLDS))
    model: str = ""

    def __getitem__(self, name: str) -> LayerHealth:
        for layer in self.layers:
            if layer.name == name or layer.path == name:
                return layer
        raise KeyError(f"{name!r} is not in this report; layers: {', '.join(l.name for l in self.layers)}")

    @property
    def healthy(self) -> bool:
        return all(not layer.issues for layer in self.layers)

    @property
    def verdict(self) -> str:
        bad = [layer.name for layer in self.layers if layer.issues]
        return "healthy" if not bad else f"{len(bad)} of {len(self.layers)} layers need a look: {', '.join(bad)}"

    def __repr__(self) -> str:
        head = (f"{'layer':<16}{'units':>6}{'dead':>7}{'sparsity':>10}{'const':>7}{'variance':>10}"
                f"{'mean|r|':>9}  verdict")
        lines = [f"HealthReport({self.model or 'model'}, {self.samples} samples): {self.verdict}", head,
                 "-" * (len(head) + 20)]
        for h in self.layers:
            corr = "-" if h.mean_abs_corr is None else f"{h.mean_abs_corr:.2f}"
            lines.append(f"{h.name:<16}{h.units:>6}{h.dead_fraction:>7.0%}{h.sparsity_samples:>10.0%}"
                         f"{h.constant_fraction:>7.0%}{h.mean_variance:>10.3g}{corr:>9}  {h.verdict}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"model": self.model, "samples": self.samples, "verdict": self.verdict, "healthy": self.healthy,
                "thresholds": dict(self.thresholds), "layers": [layer.to_dict() for layer in self.layers]}

    @classmethod
    def from_dict(cls, d: dict) -> "HealthReport":
        return cls([LayerHealth.from_dict(x) for x in d["layers"]], d["samples"], dict(d["thresholds"]),
                   d.get("model", ""))

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "HealthReport":
        return cls.from_dict(read_json(path))

    def plot(self, layer: str | None = None):
        """Overview of every layer, or (``layer=``) its activation matrix and unit-correlation heatmap."""
        from ..plots.health import health_overview, layer_figure

        return health_overview(self.to_dict()) if layer is None else layer_figure(self[layer].to_dict())


# ---- computation ---------------------------------------------------------------------------------

def default_layers(model: nn.Module) -> list[str]:
    """Display names of every ReLU-like module, else of every Conv/Linear except the last Linear."""
    shown = display_names(model)
    mods = [(p, m) for p, m in model.named_modules() if p]
    relus = [p for p, m in mods if isinstance(m, RELU_LIKE)]
    if relus:
        return [shown[p] for p in relus]
    linears = [p for p, m in mods if isinstance(m, nn.Linear)]
    picked = [p for p, m in mods if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))
              and not (linears and p == linears[-1])]
    if not picked:
        from ..taps import no_layer_error

        raise no_layer_error(model, "TorchScript has no forward hooks to measure its layers with",
                             f"layers must be given for this {model_label(model)}: it has no ReLU-like, conv or "
                             "hidden fc layers to measure; got None")
    return [shown[p] for p in picked]


def _summarize(t: torch.Tensor):
    """A layer output (B, C, *S) -> what health needs from it, without keeping the maps:
    activity (B, C) share of positions > 0; value (B, C) spatial mean of max(x, 0); and over the
    batch's B*S positions, the Gram matrix (C, C) and the sums (C,) of max(x, 0)."""
    t = t.reshape(len(t), -1) if t.ndim < 2 else t
    x = t.clamp(min=0).to(torch.float32)
    flat = x.reshape(x.shape[0], x.shape[1], -1)   # (B, C, S)
    active = (flat > 0).to(torch.float32).mean(2)  # (B, C)
    value = flat.mean(2)                           # (B, C)
    rows = flat.transpose(1, 2).reshape(-1, flat.shape[1])  # (B*S, C)
    gram = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64, device=rows.device)
    total = torch.zeros(rows.shape[1], dtype=torch.float64, device=rows.device)
    for i in range(0, len(rows), _CHUNK):  # float64: E[x^2] - E[x]^2 must not cancel to noise
        chunk = rows[i:i + _CHUNK].double()
        gram += chunk.T @ chunk
        total += chunk.sum(0)
    return active, value, gram, total, flat.shape[2]  # (C, C), (C,), positions S


def health(model, data=None, *, layers: str | Sequence[str] | None = None, max_samples: int = 1000,
           batch_size: int = 128, preprocess: Callable | None = None, top_pairs: int = 10,
           thresholds: dict | None = None, progress: bool = True) -> HealthReport:
    """Sparsity, dead units, variance and correlation of each layer's units, with a verdict per layer.

    ``model``: an nn.Module (fed ``data`` as it is, after ``preprocess``) or a Run (fed [0, 1]
    pixels through ``run.pixel_model()``; ``data`` defaults to the run's test split). ``data``:
    an ImageDataset, an (N, C, H, W) tensor or an (images, labels) pair.
    """
    from ..training.runs import Run

    name = model_label(model)
    if isinstance(model, Run):
        if data is None:
            from ..training.evaluate import run_test_data
            data = run_test_data(model)
        name = str(model.dir or model.path or "run")
        model = model.pixel_model()
    if not isinstance(model, nn.Module):
        raise expect("model", "an nn.Module or a Run", type(model).__name__)
    if data is None:
        raise expect("data", "an ImageDataset, an (N, C, H, W) tensor or an (images, labels) pair", None)
    if not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 2:
        raise expect("max_samples", "an int >= 2", max_samples)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise expect("batch_size", "a positive int", batch_size)
    limits = {**THRESHOLDS, **(thresholds or {})}
    unknown = set(limits) - set(THRESHOLDS)
    if unknown:
        raise expect("thresholds", "a dict with keys among " + ", ".join(THRESHOLDS), sorted(unknown))
    names = default_layers(model) if layers is None else _names(layers)
    src = BatchSource(data)
    if src.n < 2:
        raise expect("data", "at least 2 images", src.n)
    rows = np.unique(np.linspace(0, src.n - 1, min(max_samples, src.n)).round().astype(int))
    device, dtype = model_device(model)

    tap = capture(model, names, calls="all", transform=_summarize)
    collected: dict[tuple[str, int], _Accumulator] = {}
    from tqdm.auto import tqdm

    with eval_mode(model), torch.no_grad(), tap as acts, \
            tqdm(total=len(rows), disable=not progress, desc="health", unit="img", leave=False) as bar:
        for b0 in range(0, len(rows), batch_size):
            idx = rows[b0:b0 + batch_size]
            x = src.take(idx).to(device=device, dtype=dtype)  # (B, C, H, W)
            if preprocess is not None:
                x = preprocess(x)
            if b0 == 0:
                as_images(x, model, name="data")  # the one image check, on the first batch the model takes
            with forward_errors(model, x):
                model(x)
            for n in names:
                for call, value in enumerate(dict.get(acts, n, [])):
                    collected.setdefault((n, call), _Accumulator()).add(*value)
            bar.update(len(idx))
    missing = [n for n in names if (n, 0) not in collected]
    if missing:
        raise InputError(f"layers must run during the model's forward; got {', '.join(map(repr, missing))}, "
                         "which never did")
    calls = {n: sum(1 for k in collected if k[0] == n) for n in names}
    result = []
    for (n, call), acc in collected.items():
        label = n if calls[n] == 1 else f"{n}#{call + 1}"
        result.append(layer_stats(*acc.arrays(), name=label, path=acts.paths[n], thresholds=limits,
                                  top_pairs=top_pairs))
    return HealthReport(result, len(rows), limits, name)


class _Accumulator:
    """Per-sample activity and values, and the running Gram matrix, of one layer."""

    def __init__(self):
        self.active, self.values, self.gram, self.total, self.positions = [], [], 0.0, 0.0, 1

    def add(self, active, value, gram, total, positions: int) -> None:
        self.active.append(active.cpu().numpy())
        self.values.append(value.cpu().numpy())
        self.gram = self.gram + gram.cpu().numpy()
        self.total = self.total + total.cpu().numpy()
        self.positions = positions

    def arrays(self):
        active, values = np.concatenate(self.active), np.concatenate(self.values)  # (n, U) each
        entries = len(values) * self.positions
        return active, values, self.gram / entries, self.total / entries  # E[x_i x_j], E[x_i]


def layer_stats(activity: np.ndarray, values: np.ndarray, second: np.ndarray | None = None,
                mean: np.ndarray | None = None, *, name: str = "layer", path: str = "",
                thresholds: dict | None = None, top_pairs: int = 10) -> LayerHealth:
    """The statistics and verdict of one layer.

    ``activity`` (n, U): share of each unit's positions > 0 per sample; ``values`` (n, U): the
    spatial mean of max(x, 0) per sample; ``second`` (U, U): E[x_i x_j] of max(x, 0) over all samples
    and positions (default ``values.T @ values / n``, right for fc layers); ``mean`` (U,): E[x_i]
    (default ``values.mean(0)``, equal up to float32 rounding). Variance and
    correlation are over samples x positions: does the feature map vary, do two maps move together.
    """
    limits = {**THRESHOLDS, **(thresholds or {})}
    P = np.asarray(activity, dtype=np.float64)  # (n, U)
    M = np.asarray(values, dtype=np.float64)    # (n, U)
    n, U = P.shape
    S2 = M.T @ M / n if second is None else np.asarray(second, dtype=np.float64)  # (U, U)
    finite = bool(np.isfinite(M).all() and np.isfinite(S2).all())
    if not finite:
        M, S2 = np.nan_to_num(M, nan=0.0, posinf=0.0, neginf=0.0), np.nan_to_num(S2, nan=0.0, posinf=0.0, neginf=0.0)
    mean = M.mean(0) if mean is None else np.nan_to_num(np.asarray(mean, dtype=np.float64))  # (U,)
    var = np.maximum(np.diag(S2) - mean ** 2, 0.0)
    dead = P.max(0) <= 0                         # (U,) never > 0 anywhere
    unit_sparsity, sample_sparsity = 1 - P.mean(0), 1 - P.mean(1)  # (U,), (n,)
    rel = np.divide(var, np.diag(S2), out=np.zeros(U), where=np.diag(S2) > 0)
    constant = ~dead & (rel < limits["rel_variance"])
    corr, mean_abs, pairs = _correlations(S2 - np.outer(mean, mean), var, np.diag(S2), top_pairs)
    h = LayerHealth(name, path, U, n, float(dead.mean()), float((P.min(0) >= 1).mean()), float(constant.mean()),
                    float(unit_sparsity.mean()), float(sample_sparsity.mean()), float(var.mean()), mean_abs, [],
                    pairs, unit_sparsity, sample_sparsity, var, rel, corr, M)
    if h.dead_fraction >= limits["dead_fraction"]:
        h.issues.append("many dead units")
    if h.constant_fraction >= limits["constant_fraction"]:
        h.issues.append("low variance / ignores the input")
    if mean_abs is not None and mean_abs >= limits["mean_abs_corr"]:
        h.issues.append("strongly correlated units")
    if h.dead_fraction < 1 and h.sparsity_samples < limits["min_sparsity"]:
        h.issues.append("not sparse")
    if not finite:
        h.issues.append("non-finite activations")
    return h


def _correlations(cov: np.ndarray, var: np.ndarray, second: np.ndarray, k: int):
    """(U, U) Pearson r (nan for units that do not vary), mean |r| over varying pairs, top-k pairs."""
    U = len(var)
    live = var > 1e-9 * np.maximum(second, 1e-30)  # relative to the unit's own scale (float32 sums)
    corr = np.full((U, U), np.nan)
    idx = np.flatnonzero(live)
    if len(idx) < 2:
        return corr, None, []
    sd = np.sqrt(var[idx])
    R = np.clip(cov[np.ix_(idx, idx)] / np.outer(sd, sd), -1.0, 1.0)  # (L, L)
    corr[np.ix_(idx, idx)] = R
    iu = np.triu_indices(len(idx), 1)
    r = R[iu]
    top = np.argsort(-np.abs(r), kind="stable")[:k]
    pairs = [(int(idx[iu[0][t]]), int(idx[iu[1][t]]), float(r[t])) for t in top]
    return corr, float(np.abs(r).mean()), pairs
