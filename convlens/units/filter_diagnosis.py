"""Diagnosing a bank of 2-D filters: ``diagnose_weights(w) -> FilterDiagnosis`` for any (out, in, kh, kw)
array, M. Ranzato's "Diagnosing: a quiz" ("good training: learned filters exhibit structure and are
uncorrelated") as a function: *good*, or *too noisy*, *too correlated*, *lacking structure*.
``convlens.units.filters`` runs it on every Conv2d layer of a model.

**Measures.** Each filter ``w`` (C, kh, kw) is first centred by its own mean over all its weights
(the grey level a min-max display hides; per-channel colour offsets are kept, a colour blob is a
smooth pattern). A layer's frequency and smoothness values are medians over its filters (robust
to a few odd ones).

- ``high_frequency`` -- the share of the filter's energy above ``CUT`` = 0.25 cycles/pixel (half
  the Nyquist frequency), radially: ``sum_{|f| > 0.25} P(f) / sum_f P(f)`` with ``P`` the 2-D DFT
  power of each channel summed over channels. White noise puts 0.75-0.83 of its energy there (9x9
  ... 5x5), smooth edges, bars and blobs a few percent (photosnet's trained 9x9 conv1: 0.04).
  Needs a kernel of at least 4x4: a 3-tap axis has only 0 and 1/3 cycles/pixel, so every non-constant
  pattern would count as "high frequency" (for 3x3 the share is just 1 - the flat-colour share).
- ``smoothness`` -- the lag-1 spatial autocorrelation (Moran's I with rook neighbours):
  ``mean over horizontally and vertically adjacent taps a, b of w_a w_b / mean over taps of w_a^2``
  (summed over channels). 1 for a constant-gradient pattern, about 0 for i.i.d. noise. Needs >= 4
  taps (not 1x1, 1x3).
- ``structure_z`` -- how far the layer's median smoothness lies above that of random filters:
  ``(median - median_random) / (1.2533 * sd_random / sqrt(F))``, the random distribution measured
  on i.i.d. Gaussian filters of the same shape (a fixed seed; any i.i.d. init such as Kaiming's
  gives the same statistics: they are scale-free), 1.2533 sd / sqrt(F) the standard error of a
  median of F draws. ``structure_gain`` = median - median_random, the size of the effect.
- ``similarity`` -- each filter's largest |cosine| to another filter of the layer, averaged; the
  filters flattened (C*kh*kw) and centred as above, so filters that look alike in the grid are
  alike here.
- ``redundancy`` -- the share of filters that are near-copies of another: link every pair with
  cos >= 0.9; ``1 - (groups of linked filters) / F`` (F distinct filters: 0; a filter and two copies
  of it: 2 / F, the copies could go with little loss). The cosine is *signed* here: a filter and its
  negative fire on opposite inputs once a ReLU follows, and trained first layers learn such pairs
  on purpose (Shang et al., "Understanding and Improving CNNs via Concatenated Rectified Linear
  Units", ICML 2016). Random filters of the same shape give the baseline (not 0 for tiny fans, e.g.
  1x1 kernels on 2 channels).

**Verdicts** (``THRESHOLDS``; "good" when none applies):

- "lacks structure" -- ``structure_z < 3`` (indistinguishable from random filters) or
  ``structure_gain < 0.1`` (a real but tiny effect, as in a large barely trained layer).
- "too noisy" -- structure present but ``high_frequency >= 0.4``: about half the energy of noise
  (white noise 0.75-0.83). Random filters are noisy too, but are told "lacks structure" (noise
  with no signal at all), so the two verdicts are exclusive.
- "too correlated" -- ``redundancy >= 0.25`` (a quarter of the filters are near-copies) and at least
  0.2 above the random baseline.

Measured: photosnet (``PHOTOS_RECIPE``) conv1 9x9: high-frequency 3 %, smoothness 0.92 (random
-0.01), near-copies 21 % (its flat blue and purple colour blobs; framed in red): "good". The demo
shapesnet's 5x5 conv1: 71 %, smoothness 0.19, z = 10: "too noisy" (its grid looks it).

Kernels below 4x4 get no frequency measure and 1x1 kernels no structure either: their verdict
rests on what applies, and ``notes`` says what did not. Calibration (tests/units/test_filters.py): a Gabor
and difference-of-Gaussians bank is "good"; Kaiming-initialized filters "lack structure"; the same
Gabors with noise of 1.5x their own standard deviation "too noisy"; one filter copied with 1 %
perturbations "too correlated". Higher layers' kernels are less smooth than conv1's even when
trained well (they combine feature maps, not pixels): read their verdicts as hints.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import expect

CUT = 0.25  # cycles per pixel: "high frequency" is above half the Nyquist frequency
THRESHOLDS = {
    "high_frequency": 0.40,   # median high-frequency energy share >= this -> "too noisy"
    "structure_z": 3.0,       # median smoothness z-score vs random below this -> "lacks structure"
    "structure_gain": 0.10,   # ... or median smoothness - random median below this
    "duplicate_cos": 0.90,    # cos >= this: two filters are near-copies
    "redundancy": 0.25,       # share of filters that are near-copies of another >= this -> "too correlated"
    "redundancy_excess": 0.20,  # ... and at least this much above random filters' redundancy
}
_POOL_ELEMENTS = 4_000_000  # random weights drawn for one layer's smoothness/frequency baseline

__all__ = ["diagnose_weights", "FilterDiagnosis", "diagnosis_table", "high_frequency_share", "smoothness",
           "similarities", "max_similarity", "redundancy", "THRESHOLDS", "CUT"]


# ---- the measures (per filter) ---------------------------------------------------------------------

def _as_array(w) -> np.ndarray:
    """(F, C, kh, kw) float64 numpy from a tensor/array (a copy: the caller's weights are never touched)."""
    arr = w.detach().to("cpu", torch.float64).numpy() if isinstance(w, torch.Tensor) else np.asarray(w, np.float64)
    if arr.ndim != 4 or 0 in arr.shape:
        raise expect("weights", "a non-empty (out, in, kh, kw) array", tuple(arr.shape))
    return arr


def _centred(w: np.ndarray) -> np.ndarray:
    return w - w.mean((1, 2, 3), keepdims=True)  # (F, C, kh, kw): each filter's grey level removed


def high_frequency_share(w, *, cut: float = CUT) -> np.ndarray:
    """(F,) share of each filter's energy (its mean removed) above ``cut`` cycles/pixel; NaN for a flat filter."""
    z = _centred(_as_array(w))
    power = (np.abs(np.fft.fft2(z)) ** 2).sum(1)  # (F, kh, kw), channels summed
    fy = np.fft.fftfreq(z.shape[2])[:, None]
    fx = np.fft.fftfreq(z.shape[3])[None, :]
    high = np.sqrt(fy ** 2 + fx ** 2) > cut  # (kh, kw)
    total = power.sum((1, 2))
    return np.divide((power * high).sum((1, 2)), total, out=np.full(len(z), np.nan), where=total > 1e-300)


def smoothness(w) -> np.ndarray:
    """(F,) lag-1 spatial autocorrelation (Moran's I, rook neighbours) of each centred filter; NaN if flat."""
    z = _centred(_as_array(w))
    _, _, kh, kw = z.shape
    pairs = kh * (kw - 1) + (kh - 1) * kw
    if pairs == 0:
        return np.full(len(z), np.nan)
    num = (z[..., :, 1:] * z[..., :, :-1]).sum((1, 2, 3)) + (z[..., 1:, :] * z[..., :-1, :]).sum((1, 2, 3))
    den = (z ** 2).sum((1, 2, 3)) / (kh * kw)
    return np.divide(num / pairs, den, out=np.full(len(z), np.nan), where=den > 1e-300)


def similarities(w) -> np.ndarray:
    """(F, F) cosine between the centred, flattened filters (0 for a flat filter; 1 on the diagonal)."""
    z = _centred(_as_array(w)).reshape(len(w), -1)  # (F, C*kh*kw)
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    unit = np.divide(z, norm, out=np.zeros_like(z), where=norm > 1e-300)
    cos = unit @ unit.T
    np.fill_diagonal(cos, 1.0)
    return cos


def max_similarity(w) -> tuple[np.ndarray, np.ndarray]:
    """(F,) largest |cosine| of each centred, flattened filter to another one, and (F,) which one (-1: none)."""
    return _max_similarity(similarities(w))


def _max_similarity(cos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cos = np.abs(cos)
    if len(cos) < 2:
        return np.zeros(len(cos)), np.full(len(cos), -1)
    np.fill_diagonal(cos, -1.0)
    nearest = cos.argmax(1)
    return cos[np.arange(len(cos)), nearest], nearest


def _copy_of(cos_matrix: np.ndarray, cos: float) -> np.ndarray:
    """(F,) for each filter the most similar other filter if their (signed) cosine is >= ``cos``, else -1."""
    signed = cos_matrix.copy()
    np.fill_diagonal(signed, -np.inf)
    if len(signed) < 2:
        return np.full(len(signed), -1)
    best = signed.argmax(1)
    return np.where(signed[np.arange(len(signed)), best] >= cos, best, -1)


def redundancy(w, *, cos: float = 0.9) -> float:
    """1 - (groups of filters linked by cosine >= ``cos``) / F: the share of filters that are near-copies."""
    return _redundancy(similarities(w), cos)


def _redundancy(cos_matrix: np.ndarray, cos: float) -> float:
    from scipy.sparse.csgraph import connected_components

    linked = cos_matrix >= cos  # (F, F)
    return 1.0 - connected_components(linked, directed=False)[0] / len(linked)


# ---- the diagnosis ---------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class FilterDiagnosis:
    """The measures and verdict of one conv layer (see the module docstring); arrays are per filter."""

    name: str
    path: str
    shape: tuple[int, int, int, int]   # (out, in, kh, kw)
    high_frequency: float | None       # median share; None where the kernel is below 4x4
    high_frequency_random: float | None
    smoothness: float | None           # median lag-1 autocorrelation; None for < 4 taps
    smoothness_random: float | None
    structure_z: float | None
    similarity: float                  # mean over filters of max |cos|
    similarity_random: float
    redundancy: float
    redundancy_random: float
    issues: list[str]
    reasons: list[str]                 # one sentence per verdict, in words
    notes: list[str] = field(default_factory=list)  # measures that do not apply, and why
    filter_high_frequency: np.ndarray | None = None  # (F,)
    filter_smoothness: np.ndarray | None = None      # (F,)
    filter_similarity: np.ndarray | None = None      # (F,) max |cos|
    copy_of: np.ndarray | None = None                # (F,) a filter it near-copies (cos >= limit), else -1

    @property
    def verdict(self) -> str:
        return ", ".join(self.issues) if self.issues else "good"

    @property
    def structure_gain(self) -> float | None:
        return None if self.smoothness is None else self.smoothness - self.smoothness_random

    def __repr__(self) -> str:
        return f"FilterDiagnosis({self.name!r}, {'x'.join(map(str, self.shape))}: {self.verdict})"

    def to_dict(self) -> dict:
        arr = lambda a: None if a is None else [None if v != v else round(float(v), 5) for v in a]  # noqa: E731
        d = {k: getattr(self, k) for k in ("name", "path", "high_frequency", "high_frequency_random", "smoothness",
                                           "smoothness_random", "structure_z", "similarity", "similarity_random",
                                           "redundancy", "redundancy_random")}
        return {**d, "shape": list(self.shape), "verdict": self.verdict, "issues": list(self.issues),
                "reasons": list(self.reasons), "notes": list(self.notes), "structure_gain": self.structure_gain,
                "filter_high_frequency": arr(self.filter_high_frequency),
                "filter_smoothness": arr(self.filter_smoothness), "filter_similarity": arr(self.filter_similarity),
                "copy_of": None if self.copy_of is None else [int(v) for v in self.copy_of]}

    @classmethod
    def from_dict(cls, d: dict) -> "FilterDiagnosis":
        arr = lambda k: None if d.get(k) is None else np.array([np.nan if v is None else v for v in d[k]])  # noqa
        return cls(d["name"], d["path"], tuple(d["shape"]), d["high_frequency"], d["high_frequency_random"],
                   d["smoothness"], d["smoothness_random"], d["structure_z"], d["similarity"], d["similarity_random"],
                   d["redundancy"], d["redundancy_random"], list(d["issues"]), list(d["reasons"]),
                   list(d.get("notes", [])), arr("filter_high_frequency"), arr("filter_smoothness"),
                   arr("filter_similarity"), None if d.get("copy_of") is None else np.asarray(d["copy_of"], int))


def _median(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if len(a) else None


def _random_baseline(shape: tuple[int, int, int, int], cos_limit: float) -> dict:
    """The measures on i.i.d. Gaussian filters of ``shape`` (seeded by the shape: reproducible)."""
    f, c, kh, kw = shape
    rng = np.random.default_rng([0, *shape])
    d = c * kh * kw
    pool = rng.standard_normal((int(np.clip(_POOL_ELEMENTS // d, 128, 1024)), c, kh, kw))  # (R, C, kh, kw)
    smooth = smoothness(pool) if kh * kw >= 4 else np.full(1, np.nan)  # (R,)
    draws = max(1, min(512 // max(f, 1), _POOL_ELEMENTS // (f * d)))  # whole banks of F filters
    banks = [similarities(rng.standard_normal((f, c, kh, kw))) for _ in range(draws)]  # (F, F) each
    return {"high_frequency": _median(high_frequency_share(pool)), "smoothness": _median(smooth),
            "smoothness_sd": float(np.nanstd(smooth)) if np.isfinite(smooth).any() else float("nan"),
            "similarity": float(np.mean([_max_similarity(b)[0].mean() for b in banks])),
            "redundancy": float(np.mean([_redundancy(b, cos_limit) for b in banks]))}


def diagnose_weights(weights, *, name: str = "filters", path: str = "", thresholds: dict | None = None
                     ) -> FilterDiagnosis:
    """The diagnosis of one bank of 2-D filters, ``weights`` (out, in, kh, kw) (module docstring)."""
    t = {**THRESHOLDS, **(thresholds or {})}
    if set(t) - set(THRESHOLDS):
        raise expect("thresholds", "a dict with keys among " + ", ".join(THRESHOLDS), sorted(set(t) - set(THRESHOLDS)))
    w = _as_array(weights)
    f, c, kh, kw = w.shape
    rand = _random_baseline(w.shape, t["duplicate_cos"])
    cos = similarities(w)  # (F, F)
    sim, _ = _max_similarity(cos)
    copy_of = _copy_of(cos, t["duplicate_cos"])
    red = _redundancy(cos, t["duplicate_cos"])
    hf_f = high_frequency_share(w) if min(kh, kw) >= 4 else None
    sm_f = smoothness(w) if kh * kw >= 4 else None
    hf, sm = (None if a is None else _median(a) for a in (hf_f, sm_f))
    z = None
    notes, issues, reasons = [], [], []
    if sm_f is None:
        notes.append(f"{kh}x{kw} kernels have no spatial extent to judge: only the correlation measure applies")
    elif sm is not None:
        se = 1.2533 * max(rand["smoothness_sd"], 1e-12) / math.sqrt(np.isfinite(sm_f).sum())
        z = (sm - rand["smoothness"]) / se
        gain = sm - rand["smoothness"]
        if z < t["structure_z"] or gain < t["structure_gain"]:
            issues.append("lacks structure")
            how = "no smoother than" if z < t["structure_z"] else "barely smoother than"
            reasons.append(f"lacks structure: neighbouring weights are {how} in random filters (lag-1 "
                           f"autocorrelation {sm:.2f} vs {rand['smoothness']:.2f}; z = {z:.1f}, gain {gain:.2f}; "
                           f"structure needs z >= {t['structure_z']:g} and gain >= {t['structure_gain']:g})")
    if hf_f is None and sm_f is not None:
        notes.append(f"{kh}x{kw} kernels are too small for a frequency measure (no non-constant frequency below "
                     f"{CUT:g} cycles/pixel): noise is judged by structure only")
    if hf is not None and hf >= t["high_frequency"] and "lacks structure" not in issues:
        issues.append("too noisy")
        reasons.append(f"too noisy: {hf:.0%} of the energy is above {CUT:g} cycles/pixel (median over filters; "
                       f"threshold {t['high_frequency']:.0%}, random filters {rand['high_frequency']:.0%})")
    copies = f"{int(round(red * f))} of {f} filters ({red:.0%}) are near-copies of another, cos >= " \
             f"{t['duplicate_cos']:g}; random filters {rand['redundancy']:.0%}"
    if red >= t["redundancy"] and red - rand["redundancy"] >= t["redundancy_excess"]:
        issues.append("too correlated")
        reasons.append(f"too correlated: {copies} (threshold {t['redundancy']:.0%})")
    if not issues:
        parts = []
        if z is not None:
            parts.append(f"structured (lag-1 autocorrelation {sm:.2f} vs {rand['smoothness']:.2f} random, z = {z:.0f})")
        if hf is not None:
            parts.append(f"smooth ({hf:.0%} high-frequency energy < {t['high_frequency']:.0%})")
        parts.append(f"uncorrelated ({copies}; threshold {t['redundancy']:.0%})")
        reasons.append("good: " + ", ".join(parts))
    return FilterDiagnosis(name, path, (f, c, kh, kw), hf, rand["high_frequency"] if hf_f is not None else None,
                           sm, rand["smoothness"] if sm_f is not None else None, z, float(sim.mean()),
                           rand["similarity"], red, rand["redundancy"], issues, reasons, notes, hf_f, sm_f,
                           sim, copy_of)


def diagnosis_table(layers: list[FilterDiagnosis]) -> str:
    """The per-layer measures and verdicts as a text table."""
    num = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    head = f"{'layer':<16}{'filters':>16}{'high-freq':>11}{'smooth':>8}{'(rand)':>8}{'z':>7}{'max|cos|':>9}" \
           f"{'copies':>8}  verdict"
    lines = [head, "-" * (len(head) + 16)]
    for d in layers:
        lines.append(f"{d.name:<16}{'x'.join(map(str, d.shape)):>16}{num(d.high_frequency, '.0%'):>11}"
                     f"{num(d.smoothness, '.2f'):>8}{num(d.smoothness_random, '.2f'):>8}{num(d.structure_z, '.1f'):>7}"
                     f"{d.similarity:>9.2f}{d.redundancy:>8.0%}  {d.verdict}")
    return "\n".join(lines)
