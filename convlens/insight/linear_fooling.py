"""Fooling a binary linear classifier, and why it gets easier with more input dimensions.

The lecture's "Let's fool a binary linear classifier" slides (after Goodfellow, Shlens & Szegedy,
"Explaining and Harnessing Adversarial Examples", ICLR 2015, https://arxiv.org/abs/1412.6572):
logistic regression gives ``P(y=1 | x) = sigma(w.x + b)``. Nudging every input dimension by
``eps`` in the direction of its weight's sign, ``x' = x + eps * sign(w)``, raises the class-1
score by exactly ``eps * ||w||_1``: with the lecture's ten numbers and ``eps = 0.5`` the score goes
from -3 to 2 and P(class 1) from 0.0474 to 0.88.

``fool_linear(x, w, b, eps)`` reproduces that walk-through for any numbers. ``eps_vs_dimension``
makes the lecture's closing point ("this was only with 10 input dimensions; it's significantly
easier with more numbers") measurable: it trains logistic regressions on two classes of images at
several resolutions and reports, per resolution, the median over test images of the smallest
per-pixel nudge that flips the prediction. For a linear model that nudge is exact: moving ``x``
by ``eps * sign(w)`` against its current side changes the score by ``eps * ||w||_1``, so the
smallest flipping eps is ``|w.x + b| / ||w||_1`` (an L-infinity budget; pixels are not clipped to
[0, 1]).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, expect

LECTURE_X = (2.0, -1.0, 3.0, -2.0, 2.0, 2.0, 1.0, -4.0, 5.0, 1.0)
LECTURE_W = (-1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0)
DEFAULT_SIZES = (4, 8, 16, 32, 64)
DEFAULT_CLASSES = ("cat", "coffee")
_SHOW = 10  # dimensions written out in the walk-through


def sigmoid(z: float) -> float:
    """1 / (1 + e^-z), without overflow for large |z|."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def fmt_number(v: float) -> str:
    """2.0 -> '2', -1.5 -> '-1.5', 0.123456 -> '0.1235'."""
    v = float(v)
    return str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.4g}"


def dot_product_text(terms: np.ndarray, b: float) -> str:
    """'-2 + 1 + 3 - 2' (the lecture writes the dot product out term by term)."""
    parts = [fmt_number(terms[0])] if len(terms) else ["0"]
    for t in list(terms[1:_SHOW]) + ([b] if b else []):
        parts.append(f"- {fmt_number(-t)}" if t < 0 else f"+ {fmt_number(t)}")
    if len(terms) > _SHOW:
        parts.insert(_SHOW, f"+ … ({len(terms) - _SHOW} more terms)")
    return " ".join(parts)


# ---- the walk-through ------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class LinearFooling:
    """An input, the weights of a logistic regression, and the adversarial input ``x + eps * sign(w)``
    (``-`` for ``target=0``). Scores and probabilities are those of class 1."""

    x: np.ndarray       # (D,) float64
    w: np.ndarray       # (D,)
    b: float
    eps: float
    target: int
    x_adv: np.ndarray   # (D,)

    @property
    def score_before(self) -> float:
        return float(self.w @ self.x + self.b)

    @property
    def score_after(self) -> float:
        return float(self.w @ self.x_adv + self.b)

    @property
    def prob_before(self) -> float:
        """P(y = 1 | x) = sigma(w.x + b)."""
        return sigmoid(self.score_before)

    @property
    def prob_after(self) -> float:
        return sigmoid(self.score_after)

    @property
    def min_eps(self) -> float:
        """The smallest nudge per dimension that flips the prediction: |w.x + b| / ||w||_1 (inf if w = 0)."""
        l1 = float(np.abs(self.w).sum())
        return abs(self.score_before) / l1 if l1 > 0 else math.inf

    def walkthrough(self) -> str:
        """The lecture's slide as text: the x / w / adversarial-x table, dot products, probabilities."""
        n = len(self.x)
        cols = min(n, _SHOW)
        sign = "+" if self.target == 1 else "-"
        rows = [("x", self.x, "← input example"), ("w", self.w, "← weights"),
                ("adversarial x", self.x_adv, f"← x {sign} {fmt_number(self.eps)} * sign(w)")]
        cells = [[fmt_number(v) for v in r[1][:cols]] + (["…"] if n > cols else []) for r in rows]
        width = max(len(c) for row in cells for c in row)
        lines = ["Fooling a binary linear classifier (logistic regression): P(y=1 | x; w, b) = 1/(1+e^-(w.x + b))",
                 f"{n} input dimensions" + (f" (the first {cols} shown)" if n > cols else "") +
                 (f", b = {fmt_number(self.b)}" if self.b else ""), ""]
        for (label, _, note), row in zip(rows, cells):
            lines.append(f"{label:<14}" + " ".join(c.rjust(width) for c in row) + f"   {note}")
        before, after = self.score_before, self.score_after
        p0, p1 = self.prob_before, self.prob_after
        sure = "class 0" if p0 < 0.5 else "class 1"
        lines += ["", f"class 1 score before: {dot_product_text(self.w * self.x, self.b)} = {fmt_number(before)}",
                  f"  => probability of class 1 is 1/(1+e^(-({fmt_number(before)}))) = {p0:.4f}",
                  f"     i.e. the classifier is {100 * max(p0, 1 - p0):.0f}% certain that this is a {sure} example",
                  f"class 1 score after:  {dot_product_text(self.w * self.x_adv, self.b)} = {fmt_number(after)}",
                  f"  => probability of class 1 is now 1/(1+e^(-({fmt_number(after)}))) = {p1:.4g}",
                  f"i.e. we {'improved' if p1 >= p0 else 'lowered'} the class 1 probability from "
                  f"{100 * p0:.0f}% to {100 * p1:.0f}%",
                  f"(the score moved by eps * ||w||_1 = {fmt_number(self.eps)} * {fmt_number(np.abs(self.w).sum())}; "
                  f"the smallest eps that flips this input is |score| / ||w||_1 = {self.min_eps:.4g})"]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.walkthrough()

    def to_dict(self) -> dict:
        return {"schema": "convlens.linear-fooling/1", "x": self.x.tolist(), "w": self.w.tolist(), "b": self.b,
                "eps": self.eps, "target": self.target, "x_adv": self.x_adv.tolist(),
                "score_before": self.score_before, "score_after": self.score_after,
                "prob_before": self.prob_before, "prob_after": self.prob_after, "min_eps": self.min_eps}

    def plot(self, *, ax=None):
        """Bars of x and the adversarial x per dimension, titled with the probabilities."""
        from ..plots.linear_fooling import fooling_bars

        return fooling_bars(self.to_dict(), ax=ax)


def _vector(name: str, v) -> np.ndarray:
    try:
        arr = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise expect(name, "a sequence of numbers", v) from None
    if arr.ndim == 0 or arr.size == 0 or not np.isfinite(arr).all():
        raise expect(name, "a non-empty sequence of finite numbers", v)
    return arr.reshape(-1)


def fool_linear(x: Sequence[float] = LECTURE_X, w: Sequence[float] = LECTURE_W, b: float = 0.0, eps: float = 0.5,
                *, target: int = 1) -> LinearFooling:
    """The lecture's attack on logistic regression: ``x + eps * sign(w)`` towards class 1 (``target=1``)
    or ``x - eps * sign(w)`` towards class 0. Defaults are the lecture's numbers (score -3 -> 2,
    P(class 1) 0.0474 -> 0.88). Any shape is flattened; ``x`` and ``w`` must have the same size."""
    xv, wv = _vector("x", x), _vector("w", w)
    if xv.size != wv.size:
        raise expect("w", f"as many numbers as x ({xv.size})", f"{wv.size} numbers")
    if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b):
        raise expect("b", "a finite number", b)
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not (math.isfinite(eps) and eps >= 0):
        raise expect("eps", "a finite number >= 0", eps)
    if target not in (0, 1) or isinstance(target, bool):
        raise expect("target", "0 or 1", target)
    step = float(eps) * np.sign(wv) * (1.0 if target == 1 else -1.0)
    return LinearFooling(xv, wv, float(b), float(eps), int(target), xv + step)


# ---- eps vs dimension -------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class EpsVsDimension:
    """Per resolution: the smallest per-pixel nudge that flips each test image's prediction."""

    data: str
    classes: tuple[str, str]
    sizes: tuple[int, ...]
    dims: tuple[int, ...]
    eps: tuple[np.ndarray, ...]        # per size: (N_test,) minimal flipping eps
    accuracy: tuple[float, ...]        # per size: test accuracy of the classifier
    n_train: int
    n_test: int
    C: float
    weights: tuple[np.ndarray, ...] = field(default=(), compare=False)  # per size: (D,) w (not saved)
    biases: tuple[float, ...] = field(default=(), compare=False)

    @property
    def median_eps(self) -> np.ndarray:
        return np.array([float(np.median(e)) for e in self.eps])  # (S,)

    @property
    def slope(self) -> float:
        """Least-squares slope of log(median eps) vs log(dimension) (-0.5 would be 1/sqrt(D))."""
        if len(self.dims) < 2:
            return math.nan
        return float(np.polyfit(np.log(self.dims), np.log(self.median_eps), 1)[0])

    def rows(self) -> list[list]:
        return [[f"{s}x{s}", d, float(np.median(e)), 255 * float(np.median(e)), float(np.quantile(e, 0.25)),
                 float(np.quantile(e, 0.75)), a] for s, d, e, a in zip(self.sizes, self.dims, self.eps, self.accuracy)]

    HEADERS = ("resolution", "dims", "median eps", "in 8-bit levels", "25%", "75%", "test accuracy")

    def __repr__(self) -> str:
        lines = [f"Smallest per-pixel nudge (L-infinity, pixels in [0, 1]) that flips a logistic regression, "
                 f"{self.classes[0]} vs {self.classes[1]} ({self.data}; {self.n_train} training / {self.n_test} test "
                 f"images, C={self.C:g})",
                 "  resolution      dims  median eps  (8-bit)      25%      75%  test acc"]
        for r in self.rows():
            lines.append(f"  {r[0]:>10} {r[1]:>9,}  {r[2]:10.5f}  {r[3]:7.2f}  {r[4]:7.5f}  {r[5]:7.5f}  "
                         f"{100 * r[6]:7.1f}%")
        lines.append(f"log-log slope of the median: {self.slope:.2f} (more dimensions, smaller nudge per dimension)")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": "convlens.eps-vs-dimension/1", "data": self.data, "classes": list(self.classes),
                "sizes": list(self.sizes), "dims": list(self.dims), "median_eps": self.median_eps.tolist(),
                "eps": [e.tolist() for e in self.eps], "accuracy": list(self.accuracy), "n_train": self.n_train,
                "n_test": self.n_test, "C": self.C, "slope": self.slope}

    @classmethod
    def from_dict(cls, d: dict) -> "EpsVsDimension":
        return cls(d["data"], tuple(d["classes"]), tuple(d["sizes"]), tuple(d["dims"]),
                   tuple(np.asarray(e, dtype=float) for e in d["eps"]), tuple(d["accuracy"]), int(d["n_train"]),
                   int(d["n_test"]), float(d["C"]))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    def plot(self, *, ax=None):
        """Median eps vs dimension on log-log axes, with the 25-75 % band."""
        from ..plots.linear_fooling import eps_vs_dimension_plot

        return eps_vs_dimension_plot(self.to_dict(), ax=ax)


def fit_logistic(x: np.ndarray, y: np.ndarray, *, C: float = 1.0) -> tuple[np.ndarray, float]:
    """(w (D,), b) of scikit-learn's L2-regularized ``LogisticRegression(C=C)`` (L-BFGS) on rows ``x``.

    Fitted in the row space of ``x`` when there are more pixels than images: the optimum w is a
    combination of the training rows (w = C * sum_i (y_i - p_i) x_i at the optimum), so with an
    orthonormal basis V of that span (from the eigenvectors of the N x N Gram matrix) the problem
    on ``x V`` has the same objective, and ``w = V w'``. Same model, a fraction of the cost.
    """
    from sklearn.linear_model import LogisticRegression

    x = np.asarray(x, dtype=np.float64)  # (N, D)
    basis = None
    if x.shape[1] > x.shape[0]:
        lam, u = np.linalg.eigh(x @ x.T)  # (N,), (N, N): x x^T = U diag(lam) U^T
        keep = lam > max(lam.max(), 0.0) * 1e-12
        basis = x.T @ (u[:, keep] / np.sqrt(lam[keep]))  # (D, R): V = x^T U S^-1, orthonormal columns
    z = x @ basis if basis is not None else x  # (N, R)
    clf = LogisticRegression(C=C, max_iter=10_000, tol=1e-6).fit(z, y)
    w = basis @ clf.coef_[0] if basis is not None else clf.coef_[0]
    return w, float(clf.intercept_[0])


def flip_eps(scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The smallest L-infinity nudge that flips each score of a linear model: |score| / ||w||_1."""
    return np.abs(np.asarray(scores, dtype=np.float64)) / float(np.abs(w).sum())


def eps_vs_dimension(data="photos", *, classes: Sequence[str | int] | None = None,
                     sizes: Sequence[int] = DEFAULT_SIZES, n_per_class: int = 100, test_data=None,
                     C: float = 1.0, seed: int = 0) -> EpsVsDimension:
    """Train logistic regressions (class 0 vs class 1 of ``classes``) on the images resized to each
    of ``sizes`` (square; antialiased shrinking) and measure the minimal flipping eps per test image.

    ``data``: a dataset name or path (its train split, loaded at the largest size, ``n_per_class``
    images of each class; tested on its test split) or an ImageDataset / ``(images, labels)`` pair
    (with ``test_data`` the same kind; without it, a seeded half of each class is held out).
    ``classes``: two class names or indices; None takes cat vs coffee where the data has both (the
    ``photos`` default: a linear model separates them at every resolution), else its first two.
    """
    sizes = tuple(sizes) if not isinstance(sizes, int) else (sizes,)
    if not sizes or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in sizes):
        raise expect("sizes", "positive ints, e.g. (4, 8, 16, 32, 64)", sizes)
    if not isinstance(C, (int, float)) or isinstance(C, bool) or not (math.isfinite(C) and C > 0):
        raise expect("C", "a positive number", C)
    if not isinstance(n_per_class, int) or isinstance(n_per_class, bool) or n_per_class < 2:
        raise expect("n_per_class", "an int >= 2", n_per_class)
    (xtr, ytr), (xte, yte), names, label = _two_classes(data, classes, test_data, max(sizes), n_per_class, seed)
    from ..data.dataset import resize

    sizes = tuple(sorted(set(sizes)))
    dims, eps, acc, ws, bs = [], [], [], [], []
    for s in sizes:
        a = resize(xtr, (s, s)).flatten(1).double().numpy()  # (N_train, C*s*s)
        t = resize(xte, (s, s)).flatten(1).double().numpy()  # (N_test, C*s*s)
        w, b = fit_logistic(a, ytr, C=C)
        scores = t @ w + b  # (N_test,)
        dims.append(a.shape[1])
        eps.append(flip_eps(scores, w))
        acc.append(float(((scores > 0).astype(int) == yte).mean()))
        ws.append(w)
        bs.append(b)
    return EpsVsDimension(label, names, sizes, tuple(dims), tuple(eps), tuple(acc), len(ytr), len(yte), float(C),
                          tuple(ws), tuple(bs))


def _tensors(data, what: str):
    """(images (N, C, H, W), labels (N,) int64, class names) of an ImageDataset or an (images, labels) pair."""
    import torch

    if isinstance(data, (tuple, list)) and len(data) == 2:
        images, labels, names = data[0], data[1], None
    elif hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, names = data.images, data.labels, getattr(data, "class_names", None)
    else:
        raise expect(what, "a dataset name or path, an ImageDataset or an (images, labels) pair", type(data).__name__)
    labels = torch.as_tensor(labels).to("cpu", torch.int64).reshape(-1)
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or len(images) != len(labels):
        raise expect(what, f"images (N, C, H, W) with one label each ({len(labels)} labels)",
                     tuple(getattr(images, "shape", ())))
    n_classes = int(labels.max()) + 1 if len(labels) else 0
    names = list(names) if names is not None else [str(i) for i in range(n_classes)]
    return images.float().cpu(), labels, names


def _two_classes(data, classes, test_data, size, n_per_class, seed):
    """((x_train, y_train), (x_test, y_test), (name0, name1), data label); y = 1 for the second class."""
    import torch

    from .. import datasets

    label = str(getattr(data, "name", "") or data) if not isinstance(data, (tuple, list)) else "images"
    if isinstance(data, (str, Path)):
        test = datasets.load(str(data), split="test", size=size)
        n = n_per_class * len(test.class_names)
        data = datasets.load(str(data), split="train", size=size, n=min(n, 100_000))
        test_data = test
    x, y, names = _tensors(data, "data")
    if classes is None:
        classes = DEFAULT_CLASSES if all(c in names for c in DEFAULT_CLASSES) else (0, 1)
    if isinstance(classes, (str, int)) or len(classes) != 2:
        raise expect("classes", "two class names or indices", classes)
    idx = []
    for c in classes:
        if isinstance(c, str) and c in names:
            idx.append(names.index(c))
        elif isinstance(c, int) and not isinstance(c, bool) and 0 <= c < len(names):
            idx.append(c)
        else:
            raise expect("classes", f"two of the data's classes ({', '.join(names[:13])})", list(classes))
    if idx[0] == idx[1]:
        raise expect("classes", "two different classes", list(classes))
    rng = np.random.default_rng(seed)
    rows = [rng.permutation(np.flatnonzero(y.numpy() == k)) for k in idx]  # seeded order within each class
    if test_data is None:
        test_rows = [r[len(r) // 2:] for r in rows]
        rows = [r[:len(r) // 2] for r in rows]
        tx, ty = x, y
    else:
        tx, ty, tnames = _tensors(test_data, "test_data")
        tidx = [tnames.index(names[k]) if names[k] in tnames else k for k in idx]
        test_rows = [np.flatnonzero(ty.numpy() == k) for k in tidx]
    rows = [r[:n_per_class] for r in rows]
    for k, r, t in zip(idx, rows, test_rows):
        if len(r) < 1 or len(t) < 1:
            raise InputError(f"classes must each have training and test images; class {names[k]!r} has "
                             f"{len(r)} training and {len(t)} test images")
    pick = lambda imgs, rs: imgs[torch.as_tensor(np.concatenate(rs))]  # noqa: E731
    ytr = np.concatenate([np.full(len(r), j) for j, r in enumerate(rows)])
    yte = np.concatenate([np.full(len(r), j) for j, r in enumerate(test_rows)])
    return (pick(x, rows), ytr), (pick(tx, test_rows), yte), (names[idx[0]], names[idx[1]]), label
