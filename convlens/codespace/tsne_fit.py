"""The t-SNE optimization behind ``convlens.tsne``: openTSNE's affinities and gradient descent, with one
addition -- the exaggerated layout is rescaled to its KL-optimal size before the main phase.

Phases (openTSNE's own defaults unless said):

1. **Affinities**: perplexity-calibrated P on the k = 3 * perplexity nearest neighbours; the neighbours
   are exact (brute force) up to ``EXACT_NEIGHBORS_MAX`` points, Annoy's approximate ones above.
2. **Early exaggeration**: ``early_exaggeration_iter`` steps with P x 12, momentum 0.5, learning
   rate N / 12, from the PCA initialization.
3. **Rescale**: the exaggerated layout is compact (a few units across) while a converged map of
   well-separated classes spans hundreds of units; plain gradient descent takes hundreds of steps to
   expand it, each dearer than the last with FFT gradients, whose grid grows with the map. Instead the
   layout Y is replaced by s * Y with s minimizing KL(P || Q(s * Y)) -- a one-dimensional
   golden-section search over log s (about 15 KL evaluations, Barnes-Hut). On the 20,000 demo codes,
   150 main-phase steps after the rescale reach a lower KL (1.73) than 750 steps without it (1.75),
   in an eighth of the time (see benchmarks/bench_codes.py).
4. **Main phase**: ``n_iter`` steps, momentum 0.8, learning rate N, fresh optimizer gains.

Negative gradients (``method="auto"``): FFT interpolation while the map is small and N >= 10,000
(its grid is then at its 50-interval floor), Barnes-Hut otherwise -- the FFT grid, and its cost, grow
with the square of the map's extent, Barnes-Hut's do not.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

EXACT_NEIGHBORS_MAX = 30_000
FFT_MIN_POINTS = 10_000
FFT_MAX_EXTENT = 50.0
METHODS = ("auto", "fft", "bh")


@dataclass
class Fit:
    embedding: np.ndarray     # (N, 2)
    kl_divergence: float
    scale: float              # the factor applied to the exaggerated layout
    seconds: dict


def fit(x: np.ndarray, *, perplexity: float, seed: int, n_iter: int, early_exaggeration_iter: int, n_jobs: int,
        method: str = "auto") -> Fit:
    """Embed ``x`` (N, D) float64 in 2-D; see the module docstring."""
    from openTSNE import TSNEEmbedding, affinity, initialization

    n = len(x)
    t0 = time.perf_counter()
    aff = affinity.PerplexityBasedNN(x, perplexity=perplexity, n_jobs=n_jobs, random_state=seed, verbose=False,
                                     method="exact" if n <= EXACT_NEIGHBORS_MAX else "annoy")
    t1 = time.perf_counter()
    y = initialization.pca(x, random_state=seed)
    ee_method = _method(method, n, 0.0)
    if early_exaggeration_iter:
        emb = TSNEEmbedding(y, aff, n_jobs=n_jobs, random_state=seed, negative_gradient_method=ee_method)
        y = np.asarray(emb.optimize(early_exaggeration_iter, exaggeration=12, momentum=0.5))
    t2 = time.perf_counter()
    scale = best_scale(y, aff.P, n_jobs)
    y = y * scale
    t3 = time.perf_counter()
    main_method = _method(method, n, float(np.ptp(y, axis=0).max()))
    emb = TSNEEmbedding(y, aff, n_jobs=n_jobs, random_state=seed, negative_gradient_method=main_method)
    emb = emb.optimize(n_iter, momentum=0.8)
    t4 = time.perf_counter()
    return Fit(np.asarray(emb, dtype=float), float(emb.kl_divergence), scale,
               {"affinities": round(t1 - t0, 4), "exaggeration": round(t2 - t1, 4), "rescale": round(t3 - t2, 4),
                "main": round(t4 - t3, 4)})


def kl_divergence(y: np.ndarray, p, n_jobs: int = 1) -> float:
    """KL(P || Q) of layout ``y`` (N, 2), Q from Barnes-Hut (theta 0.5); ``p`` symmetric, summing to 1."""
    from openTSNE.tsne import kl_divergence_bh

    kl, _ = kl_divergence_bh(np.ascontiguousarray(y, dtype=np.float64), p, 1, {"theta": 0.5},
                             should_eval_error=True, n_jobs=n_jobs)
    return float(kl)


def best_scale(y: np.ndarray, p, n_jobs: int = 1, *, lo: float = -4.0, hi: float = 10.0, tol: float = 0.05) -> float:
    """s minimizing KL(P || Q(s * y)): golden-section search over log2 of the layout's resulting spread
    (its coordinates' standard deviation), from 2**lo to 2**hi; the KL is unimodal in s (all-equal Q
    as s -> 0, vanishing neighbour affinities as s -> inf)."""
    spread = float(np.std(y))
    if not spread > 0:
        return 1.0
    p = p.tocsr()
    kl = lambda u: kl_divergence(y * (2.0 ** u / spread), p, n_jobs)  # noqa: E731
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = kl(c), kl(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = kl(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = kl(d)
    return 2.0 ** ((a + b) / 2) / spread


def _method(method: str, n: int, extent: float) -> str:
    if method != "auto":
        return method
    return "fft" if n >= FFT_MIN_POINTS and extent <= FFT_MAX_EXTENT else "bh"
