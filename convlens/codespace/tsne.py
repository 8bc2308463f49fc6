"""t-SNE maps of CNN codes: ``tsne(codes) -> TSNEResult`` (scatter by class, thumbnail map, grid).

t-SNE (van der Maaten & Hinton, "Visualizing Data using t-SNE", JMLR 2008,
http://lvdmaaten.github.io/tsne/) places points in 2-D so that "locally, pairwise distances are
conserved": images whose codes are close end up near each other. The lecture shows it on MNIST
and, after Karpathy's "cnnembed" (http://cs.stanford.edu/people/karpathy/cnnembed/), on ILSVRC CNN
codes with each image drawn at its embedded position (``TSNEResult.plot_thumbnails``) and snapped
onto a full grid (``TSNEResult.grid`` / ``convlens.tsne_grid``).

Pipeline: PCA to at most ``pca_dims`` (50) dimensions (scikit-learn's PCA with ``random_state=seed``:
deterministic), then openTSNE (Poličar et al., "openTSNE: a modular Python library for t-SNE
dimensionality reduction and embedding", JSS 2024): ``early_exaggeration_iter`` (250) iterations with
early exaggeration 12, a rescale of that layout to its KL-optimal size (a line search; see
``convlens.codespace.tsne_fit``), then ``n_iter`` (200) more. ``seed`` fixes PCA, the neighbour
search and the initialization, so a given seed (and ``n_jobs``) gives the same map.
``kl_divergence`` is openTSNE's KL(P || Q) of the final embedding.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, expect

__all__ = ["TSNEResult", "tsne"]


@dataclass(eq=False, repr=False)
class TSNEResult:
    """``embedding`` (N, 2) of N codes; ``labels`` (N,) int or None; ``indices`` (N,) rows of the source data."""

    embedding: np.ndarray
    kl_divergence: float
    perplexity: float
    seed: int
    pca_dims: int                 # dimensions after PCA (= input dims when PCA was skipped)
    input_dims: int
    explained_variance: float     # share of the variance the PCA kept (1.0 without PCA)
    n_iter: int                   # total iterations (early exaggeration included)
    labels: np.ndarray | None = None
    indices: np.ndarray | None = None
    class_names: list[str] | None = None
    layer: str = ""
    model: str = ""
    data: str = ""
    seconds: dict = field(default_factory=dict)  # {"pca": s, "affinities": s, "exaggeration": s, ...}
    scale: float = 1.0            # the factor the exaggerated layout was rescaled by
    schema: str = "convlens.tsne/1"

    def __len__(self) -> int:
        return len(self.embedding)

    def __repr__(self) -> str:
        src = f" of {self.layer} codes" if self.layer else ""
        pca = (f"PCA {self.input_dims} -> {self.pca_dims} dims ({100 * self.explained_variance:.1f}% of the variance)"
               if self.pca_dims < self.input_dims else f"{self.input_dims} dims, no PCA")
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in self.seconds.items())
        return (f"t-SNE{src}: {len(self)} points, perplexity {self.perplexity:g}, seed {self.seed}, {pca}, "
                f"{self.n_iter} iterations (rescaled x{self.scale:.3g}), KL divergence {self.kl_divergence:.4f}" + (f" ({secs})" if secs else ""))

    def grid(self, rows: int | None = None, cols: int | None = None):
        """The embedding snapped onto a full ``rows`` x ``cols`` grid (``convlens.tsne_grid``)."""
        from .tsne_grid import tsne_grid

        return tsne_grid(self.embedding, rows, cols)

    # ---- figures ----------------------------------------------------------------------------------
    def plot(self, *, ax=None, title: str | None = None):
        """Scatter of the embedding coloured by class, with a legend of class names."""
        from ..plots.codes import tsne_scatter

        return tsne_scatter(self.embedding, self.labels, self.class_names, ax=ax,
                            title=title or f"t-SNE of {self.layer or 'the'} codes ({len(self)} images)")

    def plot_thumbnails(self, images, *, size: int = 2000, thumb: int = 32, ax=None):
        """Karpathy's cnnembed view: each image (``images``: (N, C, H, W) in [0, 1], uint8 (N, H, W, C),
        or a Codes whose source images are drawn) at its embedded position on a ``size`` px canvas."""
        from ..plots.codes import thumbnail_map_figure
        from .codes import thumbnails

        thumbs = thumbnails(images.images() if hasattr(images, "images") and callable(images.images) else images,
                            thumb)
        if len(thumbs) != len(self):
            raise expect("images", f"one image per embedded point ({len(self)})", len(thumbs))
        return thumbnail_map_figure(self.embedding, thumbs, size=size, ax=ax)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())

    # ---- persistence ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Metadata and the embedding (lists) as JSON-able values."""
        return {"schema": self.schema, "n": len(self), "kl_divergence": self.kl_divergence,
                "perplexity": self.perplexity, "seed": self.seed, "pca_dims": self.pca_dims,
                "input_dims": self.input_dims, "explained_variance": self.explained_variance,
                "n_iter": self.n_iter, "class_names": self.class_names, "layer": self.layer, "model": self.model,
                "data": self.data, "seconds": dict(self.seconds), "scale": self.scale}

    def save(self, path: str | Path) -> Path:
        """``path`` (.json: metadata) and the same name with .npz (embedding, labels, indices)."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        arrays = {"embedding": self.embedding}
        if self.labels is not None:
            arrays["labels"] = np.asarray(self.labels, dtype=np.int64)
        if self.indices is not None:
            arrays["indices"] = np.asarray(self.indices, dtype=np.int64)
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, arrays: dict) -> "TSNEResult":
        return cls(np.asarray(arrays["embedding"], dtype=float), float(d["kl_divergence"]), float(d["perplexity"]),
                   int(d["seed"]), int(d["pca_dims"]), int(d["input_dims"]), float(d["explained_variance"]),
                   int(d["n_iter"]), arrays.get("labels"), arrays.get("indices"), d.get("class_names"),
                   d.get("layer", ""), d.get("model", ""), d.get("data", ""), dict(d.get("seconds") or {}),
                   float(d.get("scale", 1.0)))

    @classmethod
    def load(cls, path: str | Path) -> "TSNEResult":
        from ..io import read_json, read_npz

        path = Path(path)
        return cls.from_dict(read_json(path), read_npz(path.with_suffix(".npz")))


def tsne(codes, *, perplexity: float | None = None, seed: int = 0, pca_dims: int | None = 50, n_iter: int = 200,
         early_exaggeration_iter: int = 250, n_jobs: int = 1, labels: Sequence[int] | None = None,
         class_names: Sequence[str] | None = None, negative_gradient_method: str = "auto") -> TSNEResult:
    """2-D t-SNE embedding of ``codes`` (a Codes, or an (N, D) array/tensor); see the module docstring.

    ``pca_dims``: PCA first to this many dimensions when the codes have more (None: no PCA).
    ``perplexity`` must be below N / 3 (openTSNE's rule); None: 30 (van der Maaten's usual value), or just
    below N / 3 for fewer than 91 codes. ``negative_gradient_method``: "auto"
    (FFT for a small map of >= 10,000 points, Barnes-Hut otherwise), "fft" or "bh".
    ``labels``/``class_names`` default to the Codes' own; they only colour the plots.
    """
    from .tsne_fit import METHODS, fit

    x = np.asarray(getattr(codes, "vectors", codes.detach().cpu() if hasattr(codes, "detach") else codes))
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.floating) or len(x) < 4 or x.shape[1] < 1:
        raise expect("codes", "a float (N, D) array of at least 4 codes, or Codes",
                     f"{x.dtype} {tuple(x.shape)}")
    n, d = x.shape
    if not np.isfinite(x).all():
        raise InputError("codes must be finite; got NaN or inf values")
    if perplexity is None:
        perplexity = min(30.0, round((n - 1) / 3, 2))
    if not isinstance(perplexity, (int, float)) or isinstance(perplexity, bool) or not 0 < perplexity < n / 3:
        raise expect("perplexity", f"a number in (0, {n / 3:.4g}) (below N / 3 for {n} codes)", perplexity)
    for name, v, lo in (("seed", seed, 0), ("n_iter", n_iter, 1), ("early_exaggeration_iter",
                                                                     early_exaggeration_iter, 0),
                        ("n_jobs", n_jobs, -64)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise expect(name, f"an int >= {lo}", v)
    if pca_dims is not None and (not isinstance(pca_dims, int) or isinstance(pca_dims, bool) or pca_dims < 2):
        raise expect("pca_dims", "an int >= 2 or None (no PCA)", pca_dims)
    if negative_gradient_method not in METHODS:
        raise expect("negative_gradient_method", " or ".join(map(repr, METHODS)), negative_gradient_method)
    if labels is None:
        labels = getattr(codes, "labels", None)
    if labels is not None:
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(labels) != n:
            raise expect("labels", f"one label per code ({n})", len(labels))
    t0 = time.perf_counter()
    x = x.astype(np.float32, copy=False)
    reduced, explained = x, 1.0
    if pca_dims is not None and d > pca_dims and n > pca_dims:
        from sklearn.decomposition import PCA

        pca = PCA(n_components=pca_dims, random_state=seed)
        reduced = pca.fit_transform(x)  # (N, pca_dims)
        explained = float(pca.explained_variance_ratio_.sum())
    t1 = time.perf_counter()
    result = fit(np.ascontiguousarray(reduced, dtype=np.float64), perplexity=float(perplexity), seed=int(seed),
                 n_iter=int(n_iter), early_exaggeration_iter=int(early_exaggeration_iter), n_jobs=int(n_jobs),
                 method=negative_gradient_method)
    names = list(class_names) if class_names is not None else getattr(codes, "class_names", None)
    return TSNEResult(result.embedding, result.kl_divergence, float(perplexity), int(seed),
                      int(reduced.shape[1]), int(d), explained, int(early_exaggeration_iter + n_iter), labels,
                      getattr(codes, "indices", None), names, getattr(codes, "layer", ""),
                      getattr(codes, "model", ""), getattr(codes, "data_label", ""),
                      {"pca": round(t1 - t0, 4), **result.seconds}, result.scale)
