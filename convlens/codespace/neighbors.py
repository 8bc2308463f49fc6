"""Exact k nearest neighbours in code space: ``neighbors(codes, query, k, metric)``.

The lecture's "nearest neighbors in the 'code' space" (Krizhevsky et al., NIPS 2012, Fig. 4: images
whose last-hidden-layer vectors are closest to a query's are semantically alike even where their
pixels are not). Brute force, made fast by blocks: the codes are read ``block`` rows at a time
(memmaps stream from disk), distances to all queries come from one matrix product per block
(``|q|^2 + |c|^2 - 2 q.c`` for ``"l2"``, ``1 - q.c / (|q| |c|)`` for ``"cosine"``) and ``torch.topk``
keeps a few more than k candidates per query, merged across blocks. The final k are re-ranked on
distances recomputed directly in float64 (``||q - c||``, cosine of float64 vectors), so the
distances returned do not suffer the cancellation of the expanded form and the order is exact
unless more than ``k`` candidates fall within float rounding of the k-th.

Conventions: ``"l2"`` is the Euclidean distance (not squared); ``"cosine"`` is ``1 - cos`` in
[0, 2], and a zero vector (a dead ReLU code) has cosine similarity 0 with everything (distance 1).
Ties are broken by the lower index. ``exclude_self`` (queries given as rows of ``codes``) leaves each
query's own row out of its neighbours; duplicates of it in other rows stay in.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import DataError, InputError, ShapeError, expect

METRICS = ("cosine", "l2")

__all__ = ["Neighbors", "neighbors", "label_agreement", "METRICS"]


@dataclass(frozen=True, repr=False)
class Neighbors:
    """``indices[q, j]``: the row of ``codes`` that is the j-th nearest to query q; ``distances[q, j]``
    its distance (float64), ascending. ``query`` (Q,): the query rows when they were given as rows."""

    indices: np.ndarray    # (Q, k) int64
    distances: np.ndarray  # (Q, k) float64
    metric: str
    query: np.ndarray      # (Q,) int64 rows of codes, or empty for query vectors
    exclude_self: bool = False

    @property
    def k(self) -> int:
        return int(self.indices.shape[1])

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        head = f"Neighbors({len(self)} queries, k={self.k}, metric={self.metric!r})"
        rows = [f"  query {int(self.query[i]) if len(self.query) else i}: "
                + ", ".join(f"{int(j)} ({d:.3g})" for j, d in zip(self.indices[i], self.distances[i]))
                for i in range(min(len(self), 5))]
        return "\n".join([head, *rows, *(["  ..."] if len(self) > 5 else [])])

    def agreement(self, labels: Sequence[int] | np.ndarray, query_labels=None) -> float:
        """Share of (query, neighbour) pairs whose labels agree (query labels default to
        ``labels[query]`` for row queries)."""
        labels = np.asarray(labels).reshape(-1)
        if query_labels is None:
            if not len(self.query):
                raise InputError("query_labels must be given for query vectors (no rows to look labels up); "
                                 "got None")
            query_labels = labels[self.query]
        same = labels[self.indices] == np.asarray(query_labels).reshape(-1, 1)  # (Q, k)
        return float(same.mean()) if same.size else float("nan")

    def plot(self, images, *, labels=None, class_names=None, query_images=None, name: str | None = None,
             compare: dict | None = None, thumb: int | None = None):
        """The lecture's figure: the queries in a column, their neighbours beside them.

        ``images``: the Codes searched (their source images are drawn) or all N images (N, C, H, W);
        ``labels``/``class_names`` (default: the Codes') frame neighbours green (the query's class) or
        red; ``compare``: {title: Neighbors of the same queries in another space, e.g. raw pixels};
        ``query_images`` for queries given as vectors."""
        from ..plots.codes import neighbors_figure
        from .codes import thumbnails

        if labels is None:
            labels = getattr(images, "labels", None)
        if class_names is None:
            class_names = getattr(images, "class_names", None)
        title = name or (f"{images.layer} codes" if hasattr(images, "layer") else "codes")
        take = (lambda rows: images.images(rows)) if hasattr(images, "images") and callable(images.images) else \
            (lambda rows: images[np.asarray(rows, dtype=np.int64)])
        if query_images is None:
            if not len(self.query):
                raise InputError("query_images must be given for queries given as vectors; got None")
            query_images = take(self.query)
        q = thumbnails(query_images, thumb)
        panels = []
        for label, nb in [(f"{title}, {self.metric}", self), *((compare or {}).items())]:
            if len(nb) != len(self):
                raise expect("compare", f"Neighbors of the same {len(self)} queries", len(nb))
            flat = thumbnails(take(nb.indices.reshape(-1)), thumb)
            same = None
            if labels is not None and len(self.query):
                lab = np.asarray(labels).reshape(-1)
                same = lab[nb.indices] == lab[self.query][:, None]  # (Q, k)
            panels.append({"title": label if nb is self else f"{label}, {nb.metric}",
                           "thumbs": flat.reshape(len(nb), nb.k, *flat.shape[1:]), "same": same})
        qlabels = np.asarray(labels).reshape(-1)[self.query] if labels is not None and len(self.query) else None
        return neighbors_figure(q, panels, query_labels=qlabels, class_names=class_names)


def neighbors(codes, query, k: int = 8, metric: str = "cosine", *, exclude_self: bool = False,
              block: int = 4096, query_block: int = 1024, device: str | torch.device | None = None) -> Neighbors:
    """The ``k`` nearest rows of ``codes`` to each query, exactly (see the module docstring).

    ``codes``: (N, D) numpy array, memmap, torch tensor or :class:`~convlens.codespace.codes.Codes`.
    ``query``: row indices into ``codes`` (an int or a sequence/array of ints) or query vectors
    (a float (Q, D) or (D,) array/tensor). ``block``: code rows per matrix product. ``device``:
    where to compute (default: the tensor's own device, else CPU); the computation dtype is
    float64 for float64 codes, else float32.
    """
    if metric not in METRICS:
        raise expect("metric", "'cosine' or 'l2'", metric)
    data = _matrix(codes)
    n, d = data.shape
    for name, v in (("k", k), ("block", block), ("query_block", query_block)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise expect(name, "a positive int", v)
    rows, qvec = _queries(query, data)
    if exclude_self and rows is None:
        raise InputError("exclude_self=True needs the queries as rows of codes (int indices); got query vectors")
    limit = n - 1 if exclude_self else n
    if k > limit:
        raise expect("k", f"at most {limit} (the codes{' other than the query' if exclude_self else ''})", k)
    device = torch.device(device) if device is not None else (data.device if isinstance(data, torch.Tensor)
                                                              else torch.device("cpu"))
    dtype = torch.float64 if data.dtype in (np.float64, torch.float64) else torch.float32
    q = _tensor(qvec, device, dtype)  # (Q, D)
    if q.shape[1] != d:
        raise ShapeError(f"query vectors must have {d} dimensions like the codes; got {q.shape[1]}")
    if not torch.isfinite(q).all():
        raise DataError("query vectors must be finite; got NaN or inf")
    m = min(limit, k + max(k, 8))  # candidates kept per query before the exact re-ranking
    largest = metric == "cosine"  # rank by cosine similarity (largest) or by |c|^2 - 2 q.c (smallest)
    worst = float("-inf") if largest else float("inf")
    q = _unit(q) if largest else q
    best_s = torch.full((len(q), m), worst, dtype=dtype, device=device)  # (Q, m) scores
    best_i = torch.full((len(q), m), -1, dtype=torch.int64, device=device)
    own = torch.as_tensor(rows, device=device) if rows is not None else None
    for c0 in range(0, n, block):
        c = _tensor(data[c0:c0 + block], device, dtype)  # (b, D)
        cn = (c * c).sum(1)  # (b,) squared norms; NaN or inf in a row makes its norm so
        if not torch.isfinite(cn).all():
            raise DataError(f"codes must be finite; rows {c0}..{c0 + len(c) - 1} hold NaN or inf (or overflow)")
        if largest:
            c = c / cn.sqrt().clamp_min(torch.finfo(dtype).tiny)[:, None]  # unit rows; zero rows stay zero
        for q0 in range(0, len(q), query_block):
            q1 = min(q0 + query_block, len(q))
            score = (q[q0:q1] @ c.T if largest  # (Qb, b) cosine similarity
                     else torch.addmm(cn[None, :], q[q0:q1], c.T, alpha=-2))  # |c|^2 - 2 q.c
            if own is not None and exclude_self:
                local = own[q0:q1] - c0
                hit = (local >= 0) & (local < len(c))
                score[hit.nonzero()[:, 0], local[hit]] = worst
            vals, idx = _best(score, min(m, len(c)), largest)
            cat_s, cat_i = torch.cat([best_s[q0:q1], vals], 1), torch.cat([best_i[q0:q1], idx + c0], 1)
            order = torch.sort(cat_s, dim=1, stable=True, descending=largest).indices[:, :m]  # earlier rows first
            best_s[q0:q1], best_i[q0:q1] = cat_s.gather(1, order), cat_i.gather(1, order)
    ind, dist = _rerank(data, qvec, best_i.cpu().numpy(), k, metric)
    return Neighbors(ind, dist, metric, np.asarray(rows if rows is not None else [], dtype=np.int64),
                     bool(exclude_self))


def label_agreement(codes, labels: Sequence[int] | np.ndarray | None = None, *, k: int = 5,
                    metric: str = "cosine", block: int = 4096) -> float:
    """Every code as a query against all the others: the share of its ``k`` nearest neighbours that
    carry its label (``labels`` default: ``codes.labels``). Chance is about ``sum_c p_c^2``."""
    if labels is None:
        labels = getattr(codes, "labels", None)
        if labels is None:
            raise InputError("labels must be given: these codes carry none; got None")
    labels = np.asarray(labels).reshape(-1)
    n = len(_matrix(codes))
    if len(labels) != n:
        raise expect("labels", f"one label per code ({n})", len(labels))
    nb = neighbors(codes, np.arange(n), k, metric, exclude_self=True, block=block)
    return nb.agreement(labels)


# ---- pieces --------------------------------------------------------------------------------------------

def _matrix(codes):
    arr = getattr(codes, "vectors", codes)
    if isinstance(arr, torch.Tensor):
        arr = arr.detach()
        ok = arr.ndim == 2 and arr.is_floating_point()
    else:
        arr = arr if isinstance(arr, np.ndarray) else np.asarray(arr)
        ok = arr.ndim == 2 and np.issubdtype(arr.dtype, np.floating)
    if not ok or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise expect("codes", "a non-empty float (N, D) array, tensor or Codes",
                     f"{getattr(arr, 'dtype', type(arr).__name__)} {tuple(getattr(arr, 'shape', ()))}")
    return arr


def _queries(query, data) -> tuple[np.ndarray | None, object]:
    """(rows or None, query vectors (Q, D) as an array/tensor)."""
    if isinstance(query, (int, np.integer)) and not isinstance(query, bool):
        query = [int(query)]
    if isinstance(query, torch.Tensor):
        is_rows = not query.is_floating_point()
        arr = query.detach()
    else:
        arr = np.asarray(query)
        is_rows = arr.dtype.kind in "iu" or (arr.dtype == object and arr.size == 0)
    if is_rows:
        rows = np.asarray(arr.cpu() if isinstance(arr, torch.Tensor) else arr, dtype=np.int64).reshape(-1)
        n = len(data)
        if rows.size and (rows.min() < 0 or rows.max() >= n):
            raise expect("query", f"row indices in [0, {n - 1}]", rows[(rows < 0) | (rows >= n)][:5].tolist())
        vecs = data[torch.as_tensor(rows)] if isinstance(data, torch.Tensor) else np.asarray(data[rows])
        return rows, vecs
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or (not isinstance(arr, torch.Tensor) and arr.dtype.kind != "f"):
        raise expect("query", "row indices (ints) or float query vectors (Q, D)",
                     f"{getattr(arr, 'dtype', '')} {tuple(arr.shape)}")
    return None, arr


def _tensor(a, device, dtype) -> torch.Tensor:
    if not isinstance(a, torch.Tensor):
        a = np.ascontiguousarray(a)
        a = a if a.flags.writeable else a.copy()  # a read-only memmap block: torch wants writable memory
    t = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
    return t.to(device=device, dtype=dtype)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows scaled to length 1; zero rows stay zero (cosine similarity 0 with everything)."""
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _best(score: torch.Tensor, m: int, largest: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, m) best scores and their columns, ordered by (score, column): among equal scores the lower
    column comes first and is the one kept at the cut (``torch.topk`` alone promises neither)."""
    extra = min(m + 1, score.shape[1])
    vals, idx = torch.topk(score, extra, dim=1, largest=largest, sorted=True)
    if extra > m:
        tied = vals[:, m] == vals[:, m - 1]  # an equal score left out: the cut goes through a tie
        vals, idx = vals[:, :m], idx[:, :m]
        if tied.any():
            s = torch.sort(score[tied], dim=1, stable=True, descending=largest)
            vals[tied], idx[tied] = s.values[:, :m], s.indices[:, :m]
    idx, pos = torch.sort(idx, dim=1)  # by column, then stably by score: (score, column) order
    vals = vals.gather(1, pos)
    order = torch.sort(vals, dim=1, stable=True, descending=largest).indices
    return vals.gather(1, order), idx.gather(1, order)


def _rerank(data, qvec, cand: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The k best of the candidates on float64 distances computed directly; ties by the lower index.
    Queries go in chunks of about 4M candidate values (32 MB) whatever the dimension."""
    q_all = qvec.cpu().numpy() if isinstance(qvec, torch.Tensor) else np.asarray(qvec)
    nq, m = cand.shape
    d = q_all.shape[1]
    out_i = np.empty((nq, k), dtype=np.int64)
    out_d = np.empty((nq, k), dtype=np.float64)
    step = max(1, (1 << 22) // (m * d))
    for q0 in range(0, nq, step):
        ci = cand[q0:q0 + step]  # (Qc, m)
        flat, inv = np.unique(ci, return_inverse=True)
        rows = data[torch.as_tensor(flat)].cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data[flat])
        rows = rows.astype(np.float64)  # (U, D)
        vec = rows[inv.reshape(ci.shape)]  # (Qc, m, D)
        q = q_all[q0:q0 + step].astype(np.float64)  # (Qc, D)
        if metric == "l2":
            diff = vec - q[:, None, :]
            dist = np.sqrt(np.einsum("qmd,qmd->qm", diff, diff))  # (Qc, m)
        else:
            denom = np.linalg.norm(q, axis=1)[:, None] * np.linalg.norm(rows, axis=1)[inv.reshape(ci.shape)]
            dot = np.einsum("qmd,qd->qm", vec, q)
            dist = 1 - np.divide(dot, denom, out=np.zeros_like(dot), where=denom > 0)
        order = np.lexsort((ci, dist), axis=1)[:, :k]  # by distance, then by index
        out_i[q0:q0 + step] = np.take_along_axis(ci, order, 1)
        out_d[q0:q0 + step] = np.take_along_axis(dist, order, 1)
    return out_i, out_d
