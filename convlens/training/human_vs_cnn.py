"""CNN vs Human: the lecture's labeling game, scored.

Karpathy labelled 1,500 ILSVRC test images himself and compared his top-5 error (5.1 %) with GoogLeNet's
(6.8 %) on the same images, in a 2x2 table of who was right (both 1352, only the human 72, only the CNN 46,
both wrong 30), with the kinds of error on each side (A. Karpathy, "What I learned from competing against
a ConvNet on ImageNet", 2014; Russakovsky et al. 2015, IJCV, section 6.4). ``human_vs_cnn(answers)`` makes
that comparison from the answers of the labeling game (``convlens serve``'s ``/label``, stored by
``convlens.results.labels``):

* human and CNN top-1 and top-5 error on exactly the same answers, each with a 95 % Wilson score interval
  (Wilson 1927: the interval that stays inside [0, 1] and keeps its coverage for small counts);
* the 2x2 tables (human correct/wrong x CNN correct/wrong) at top-5 (as ILSVRC counts) and top-1, each
  cell with its images;
* McNemar's exact test of the paired difference: under "human and CNN are equally good", an image that
  only one of them got right is the human's with probability 1/2, so the count of the off-diagonal cell
  "only the human right" is Binomial(b + c, 1/2); the two-sided p is ``min(1, 2 P(X <= min(b, c)))``;
* the error consistency kappa of Geirhos, Meding & Wichmann 2020 ("Beyond accuracy: quantifying
  trial-by-trial behaviour of CNNs and humans by measuring error consistency", NeurIPS):
  ``(c_obs - c_exp) / (1 - c_exp)`` with ``c_obs`` the share of images where both are right or both wrong
  and ``c_exp = p_h p_c + (1 - p_h)(1 - p_c)`` what independent observers of these accuracies would share;
  0: no more agreement on *which* images are hard than chance, 1: the same errors;
* per-class accuracy of both, the time per image (a histogram: Karpathy's pace was bimodal), and the
  counts of Karpathy's error categories per cell, as the annotator tagged them.

Each answer is one row: pooled over annotators, an image answered by three people counts three times
(for the CNN too), so the rows of one pooled table are not independent; per-annotator tables are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..errors import expect

Z95 = 1.959963984540054  # the standard normal's 97.5 % quantile
CELLS = ("both_correct", "human_only_correct", "cnn_only_correct", "both_wrong")
CELL_TITLES = {"both_correct": "both right", "human_only_correct": "only the human right",
               "cnn_only_correct": "only the CNN right", "both_wrong": "both wrong"}
# Karpathy's error categories (the CNN's: multiple objects ... image filter, abstract; the human's:
# fine-grained ... insufficient training data), in the order of his slide, and "other".
CATEGORIES: dict[str, str] = {
    "multiple-objects": "multiple objects", "incorrect-annotation": "incorrect annotation",
    "small-thin": "small or thin object", "image-filter": "image filter",
    "abstract": "abstract representation", "fine-grained": "fine-grained",
    "class-unawareness": "class unawareness", "insufficient-training": "insufficient training data",
    "other": "other",
}
KARPATHY_2014 = {"both_correct": 1352, "human_only_correct": 72, "cnn_only_correct": 46, "both_wrong": 30}


def wilson(k: int, n: int, *, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``k / n`` (95 % for the default ``z``); (nan, nan) for n=0."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo, hi = max(0.0, center - half), min(1.0, center + half)
    return (0.0 if k == 0 else min(lo, p)), (1.0 if k == n else max(hi, p))  # exact ends, never rounded past p


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p of the discordant counts ``b`` and ``c`` (1.0 when both are 0)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(b, c) + 1))  # P(X <= min(b, c)) * 2**n, exact integers
    return min(1.0, 2 * tail / 2 ** n)


def error_consistency(a_correct, b_correct) -> float:
    """Geirhos et al. 2020's kappa between two observers' per-trial correctness (bool arrays of one length);
    NaN when it is undefined (no trials, or both always right or always wrong: ``c_exp`` = 1)."""
    a, b = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    if a.shape != b.shape or a.ndim != 1:
        raise expect("a_correct and b_correct", "two 1-d bool arrays of one length", (a.shape, b.shape))
    if not len(a):
        return float("nan")
    c_obs = float(np.mean(a == b))
    pa, pb = float(a.mean()), float(b.mean())
    c_exp = pa * pb + (1 - pa) * (1 - pb)
    return float("nan") if c_exp >= 1 else (c_obs - c_exp) / (1 - c_exp)


def game_sample(num_images: int, n: int, *, practice: int = 0, seed: int = 0) -> tuple[list[int], list[int]]:
    """(the counted images, the practice images): disjoint index lists from one seeded permutation of
    ``num_images`` (the counted ones first, so sessions of one seed share their first images)."""
    for name, v, lo in (("n", n, 1), ("practice", practice, 0), ("seed", seed, 0)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise expect(name, f"an int >= {lo}", v)
    if n + practice > num_images:
        raise expect("n + practice", f"at most {num_images} (the images there are)", n + practice)
    order = np.random.default_rng([int(seed), 18]).permutation(num_images)
    return order[:n].tolist(), order[n:n + practice].tolist()


def _get(row, key: str, default=None):
    return row.get(key, default) if isinstance(row, Mapping) else getattr(row, key, default)


@dataclass(eq=False)
class HumanVsCNN:
    """The answers of the labeling game and the paired statistics of human vs CNN (module docstring).

    One entry per answer: ``images`` (ids), ``truth`` (class names), ``human_labels`` (the annotator's 1 to 5
    labels, best first), ``model_top5`` (the CNN's 5 best classes), ``seconds`` (NaN when not timed),
    ``annotators``, ``categories`` (a key of CATEGORIES, or None where untagged)."""

    images: list[str]
    truth: list[str]
    human_labels: list[list[str]]
    model_top5: list[list[str]]
    seconds: np.ndarray
    annotators: list[str]
    categories: list[str | None]
    annotator: str | None = None  # whose answers (None: pooled over everyone)
    class_names: list[str] | None = field(default=None, repr=False)

    @property
    def n(self) -> int:
        return len(self.images)

    def human_correct(self, k: int = 5) -> np.ndarray:
        """(N,) bool: the truth among the annotator's first ``k`` labels."""
        return np.array([t in labels[:k] for t, labels in zip(self.truth, self.human_labels)], bool)

    def cnn_correct(self, k: int = 5) -> np.ndarray:
        """(N,) bool: the truth among the CNN's ``k`` best classes."""
        return np.array([t in top[:k] for t, top in zip(self.truth, self.model_top5)], bool)

    def cell_of(self, k: int = 5) -> np.ndarray:
        """(N,) the 2x2 cell of each answer (a name of CELLS)."""
        h, c = self.human_correct(k), self.cnn_correct(k)
        index = np.where(h, np.where(c, 0, 1), np.where(c, 2, 3))  # CELLS' order
        return np.array(CELLS, dtype=object)[index]

    def table(self, k: int = 5) -> dict[str, int]:
        cells = self.cell_of(k)
        return {name: int(np.sum(cells == name)) for name in CELLS}

    def cells(self, k: int = 5) -> dict[str, list[str]]:
        """The image ids of each cell."""
        cells = self.cell_of(k)
        return {name: [im for im, c in zip(self.images, cells) if c == name] for name in CELLS}

    def error(self, who: str, k: int) -> dict[str, Any]:
        """{"error", "ci": [lo, hi], "wrong", "n"} of "human" or "cnn" at top-``k``."""
        right = self.human_correct(k) if who == "human" else self.cnn_correct(k)
        wrong = int(self.n - right.sum())
        return {"error": wrong / self.n if self.n else float("nan"), "ci": list(wilson(wrong, self.n)),
                "wrong": wrong, "n": self.n}

    def mcnemar_p(self, k: int = 5) -> float:
        t = self.table(k)
        return mcnemar_exact(t["human_only_correct"], t["cnn_only_correct"])

    def kappa(self, k: int = 5) -> float:
        return error_consistency(self.human_correct(k), self.cnn_correct(k))

    def per_class(self) -> list[dict]:
        """Per true class (in class order, then first seen): n, and human and CNN top-1 and top-5 accuracy."""
        order = list(self.class_names or [])
        order += [t for t in dict.fromkeys(self.truth) if t not in set(order)]
        h1, h5, c1, c5 = (self.human_correct(1), self.human_correct(5), self.cnn_correct(1), self.cnn_correct(5))
        truth = np.array(self.truth, dtype=object)
        rows = []
        for name in order:
            m = truth == name
            if m.any():
                rows.append({"class": name, "n": int(m.sum()), "human_top1": float(h1[m].mean()),
                             "cnn_top1": float(c1[m].mean()), "human_top5": float(h5[m].mean()),
                             "cnn_top5": float(c5[m].mean())})
        return rows

    def time_histogram(self, *, bins: int | None = None) -> dict:
        """Seconds per image: a histogram (``edges`` (B+1,), ``counts`` (B,)) from 0 to the slowest answer, and
        the median, mean and total."""
        s = np.asarray(self.seconds, float)
        s = s[np.isfinite(s)]
        if not len(s):
            return {"n": 0, "edges": [], "counts": [], "median": None, "mean": None, "total": 0.0}
        bins = bins or int(min(24, max(4, math.ceil(math.sqrt(len(s))))))
        counts, edges = np.histogram(s, bins=bins, range=(0.0, max(float(s.max()), 1e-9)))
        return {"n": int(len(s)), "edges": edges.tolist(), "counts": counts.tolist(), "median": float(np.median(s)),
                "mean": float(s.mean()), "total": float(s.sum())}

    def categories_by_cell(self, k: int = 5) -> dict[str, dict[str, int]]:
        """{cell: {category key: count}} of the tagged answers (cells other than both_correct), with
        "untagged" counting the rest of the cell."""
        cells = self.cell_of(k)
        out = {}
        for name in CELLS[1:]:
            tags = [c for c, cell in zip(self.categories, cells) if cell == name]
            counts = {key: sum(t == key for t in tags) for key in CATEGORIES}
            counts["untagged"] = sum(t is None for t in tags)
            out[name] = counts
        return out

    def by_annotator(self) -> list["HumanVsCNN"]:
        """One comparison per annotator (in order of first answer)."""
        return [self.subset(a) for a in dict.fromkeys(self.annotators)]

    def subset(self, annotator: str) -> "HumanVsCNN":
        keep = [i for i, a in enumerate(self.annotators) if a == annotator]
        pick = lambda xs: [xs[i] for i in keep]  # noqa: E731
        return HumanVsCNN(pick(self.images), pick(self.truth), pick(self.human_labels), pick(self.model_top5),
                          np.asarray(self.seconds, float)[keep], pick(self.annotators), pick(self.categories),
                          annotator=annotator, class_names=self.class_names)

    def summary(self) -> dict:
        """The headline numbers (one row of the per-annotator table)."""
        return {"annotator": self.annotator, "n": self.n,
                "human": {"top1_error": self.error("human", 1)["error"], "top5_error": self.error("human", 5)["error"]},
                "cnn": {"top1_error": self.error("cnn", 1)["error"], "top5_error": self.error("cnn", 5)["error"]},
                "mcnemar_p": self.mcnemar_p(5), "kappa": self.kappa(5)}

    def to_dict(self, *, per_annotator: bool = True) -> dict:
        """Everything, as JSON-ready values (NaN where undefined)."""
        out = {"n": self.n, "annotator": self.annotator, "annotators": list(dict.fromkeys(self.annotators))}
        for who in ("human", "cnn"):
            e1, e5 = self.error(who, 1), self.error(who, 5)
            out[who] = {"top1_error": e1["error"], "top5_error": e5["error"], "top1_ci": e1["ci"],
                        "top5_ci": e5["ci"], "top1_wrong": e1["wrong"], "top5_wrong": e5["wrong"]}
        out.update(table=self.table(5), table_top1=self.table(1), cells=self.cells(5), cells_top1=self.cells(1),
                   mcnemar_p=self.mcnemar_p(5), mcnemar_p_top1=self.mcnemar_p(1), kappa=self.kappa(5),
                   kappa_top1=self.kappa(1), per_class=self.per_class(), seconds=self.time_histogram(),
                   categories=self.categories_by_cell(5), category_names=dict(CATEGORIES))
        if per_annotator:
            out["per_annotator"] = [s.summary() for s in self.by_annotator()]
        return out

    def plot(self):
        """The 2x2 table, the errors with their intervals and the time histogram (a matplotlib Figure)."""
        from ..plots.human_vs_cnn import human_vs_cnn_figure

        return human_vs_cnn_figure(self.to_dict(per_annotator=False))

    def __repr__(self) -> str:
        if not self.n:
            return "HumanVsCNN(no answers)"
        d = self.to_dict(per_annotator=False)
        t = d["table"]
        return (f"HumanVsCNN({self.annotator or 'pooled'}: {self.n} answers; top-5 error human "
                f"{100 * d['human']['top5_error']:.1f}% CNN {100 * d['cnn']['top5_error']:.1f}%; both right "
                f"{t['both_correct']}, only human {t['human_only_correct']}, only CNN {t['cnn_only_correct']}, "
                f"both wrong {t['both_wrong']}; McNemar p={d['mcnemar_p']:.3g})")


def human_vs_cnn(answers: Iterable, *, annotator: str | None = None,
                 class_names: Sequence[str] | None = None) -> HumanVsCNN:
    """Score the labeling game's ``answers`` (mappings or objects with ``image``, ``truth``, ``labels``,
    ``model_top5``, and optionally ``seconds``, ``annotator``, ``category``) -> ``HumanVsCNN``; only those of
    ``annotator`` when given. ``class_names`` orders the per-class table."""
    rows = [r for r in answers if annotator is None or _get(r, "annotator") == annotator]
    for r in rows:
        labels = _get(r, "labels")
        if not isinstance(labels, (list, tuple)) or not 1 <= len(labels) <= 5:
            raise expect("labels of an answer", "a list of 1 to 5 class names", labels)
    seconds = np.array([np.nan if _get(r, "seconds") is None else float(_get(r, "seconds")) for r in rows], float)
    return HumanVsCNN([str(_get(r, "image")) for r in rows], [str(_get(r, "truth")) for r in rows],
                      [list(_get(r, "labels")) for r in rows], [list(_get(r, "model_top5"))[:5] for r in rows],
                      seconds, [str(_get(r, "annotator", "")) for r in rows], [_get(r, "category") for r in rows],
                      annotator=annotator, class_names=None if class_names is None else list(class_names))
