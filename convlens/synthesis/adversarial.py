"""Adversarial examples: a small, deliberate distortion that changes a correct classification.

Szegedy et al., "Intriguing properties of neural networks", ICLR 2014 (https://arxiv.org/abs/1312.6199),
the lecture's "correct + distort = ostrich" slides; Goodfellow et al., "Explaining and Harnessing
Adversarial Examples", ICLR 2015 (https://arxiv.org/abs/1412.6572) for FGSM; Madry et al., "Towards
Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018 (https://arxiv.org/abs/1706.06083)
for PGD. Every method is one call of the image-optimization core (:func:`convlens.optimize`):

* ``"lbfgs"`` (Szegedy, targeted) -- minimize ``c ||r||² - log P(target | x + r)`` subject to
  ``x + r`` in the pixel box, by L-BFGS (strong-Wolfe line search) with the pixels projected into the
  box after each iteration. The paper states ``c |r|``; the squared L2 norm is used here because it is
  smooth at r = 0 (as in Carlini & Wagner 2017). With ``c=None`` a line search on ``c`` per image
  (``search_steps`` rounds: x10 / /10 until bracketed, then bisection in log c) keeps the largest
  ``c`` -- the smallest distortion -- for which the target is top-1; with ``c`` given, one run.
* ``"fgsm"`` (Goodfellow) -- one step ``x + eps * sign(grad)``: untargeted (``target=None``) ascends
  the cross-entropy of the true class (``labels``, else the class predicted for ``x``); targeted
  descends the cross-entropy of the target. Clipped into the box.
* ``"pgd"`` (Madry) -- ``steps`` such steps of size ``step_size`` (default ``2.5 eps / steps``) from a
  random start in the ball, each followed by the projection onto the L∞ ball of radius ``eps`` around
  ``x`` and onto the box.

Distortion is measured in the model's input units (a Run's pixel model: [0, 1] pixels):
``l2 = ||x_adv - x||_2`` and ``linf = max |x_adv - x|`` over all C*H*W values of each image.
``success``: the target is top-1 after (targeted), or the prediction differs from the label
(untargeted). Probabilities are ``softmax`` of the model's scores. ``result.goal`` states that goal in
the shape every synthesis result shares (:func:`~convlens.synthesis.optimize.goal_record`): per image
whether it was reached, the number kept (P(target) after, or P(label) after when untargeted) and the
distortion (``l2``, ``linf``); ``result.missed`` names the images that missed it and why.

Scale: fgsm and pgd take sign steps of ``eps`` (``step_size``) in input units, whatever the scale of the
scores. L-BFGS's ``c`` weighs ``||r||²`` (input units) against log P (score units); its line search
(``c=None``) moves ``c`` by x10 a round until the target is bracketed, so a net whose scores are 100x
smaller costs two rounds of ``search_steps``, not the search. What does not scale is Szegedy's loss
itself: on scores that small the softmax is nearly flat and log P(target) hardly tells the strongest
competitor from the rest, so such an attack can miss (``result.missed`` says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, expect
from ..taps import eval_mode
from ..synthesis import objectives as O
from ..inputs import as_images, forward_errors
from .optimize import goal_record, optimize
from ..targets import class_names_of, target_indices

__all__ = ["adversarial", "AdversarialResult", "fgsm_sweep", "FGSMSweep", "METHODS"]

METHODS = ("lbfgs", "fgsm", "pgd")


@dataclass(eq=False, repr=False)
class AdversarialResult:
    """Originals and adversarial images (N, C, H, W), what the model said before and after, the distortion."""

    original: np.ndarray         # (N, C, H, W) in the model's input space
    adversarial: np.ndarray      # (N, C, H, W)
    target: np.ndarray | None    # (N,) int; None for an untargeted attack
    labels: np.ndarray           # (N,) int, the true class (or the class predicted before)
    probs_before: np.ndarray     # (N, K) softmax of the scores
    probs_after: np.ndarray      # (N, K)
    l2: np.ndarray               # (N,) ||x_adv - x||_2
    linf: np.ndarray             # (N,) max |x_adv - x|
    method: str
    params: dict = field(default_factory=dict)
    class_names: tuple[str, ...] | None = None
    label_source: str = "labels"  # or "predicted"
    box: tuple[float, float] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    indices: tuple[int, ...] = ()  # rows of the source data (empty for images given directly)
    schema: str = "convlens.adversarial/1"

    @property
    def pred_before(self) -> np.ndarray:
        return self.probs_before.argmax(axis=1)

    @property
    def pred_after(self) -> np.ndarray:
        return self.probs_after.argmax(axis=1)

    @property
    def success(self) -> np.ndarray:
        if self.target is not None:
            return self.pred_after == self.target
        return self.pred_after != self.labels

    @property
    def distortion(self) -> np.ndarray:
        return self.adversarial - self.original  # (N, C, H, W)

    @property
    def goal(self) -> dict:
        """The goal record (:func:`~convlens.synthesis.optimize.goal_record`): targeted, the target is top-1
        (the number: P(target) after); untargeted, the prediction is no longer the label (the number: P(label)
        after); fgsm/pgd within L∞ ``eps``; plus each image's ``l2`` and ``linf`` distortion."""
        rows = np.arange(len(self))
        pa, ok = self.pred_after, self.success
        eps = self.params.get("eps") if self.method != "lbfgs" else None
        within = f" within L∞ {eps:g}" if eps is not None else ""
        hint = "raise eps" if eps is not None else "raise steps or search_steps"
        if self.target is not None:
            values = self.probs_after[rows, self.target]
            keys = [f"[{i}] {self.name(y)} -> {self.name(t)}" for i, (y, t) in enumerate(zip(self.labels, self.target))]
            why = [f"still classified as {self.name(pa[i])} (P {self.probs_after[i, pa[i]]:.3f}), "
                   f"P({self.name(self.target[i])}) = {values[i]:.4f} at L2 {self.l2[i]:.3g}, L∞ {self.linf[i]:.3g}; "
                   + hint for i in rows]
            goal = f"the target class is top-1{within}"
        else:
            values = self.probs_after[rows, self.labels]
            keys = [f"[{i}] {self.name(y)}" for i, y in enumerate(self.labels)]
            why = [f"still classified as {self.name(self.labels[i])} (P {values[i]:.3f}) at L2 {self.l2[i]:.3g}, "
                   f"L∞ {self.linf[i]:.3g}; " + hint for i in rows]
            goal = f"the prediction is no longer the label{within}"
        return goal_record(goal, "P(target)" if self.target is not None else "P(label)", values, ok, keys, why,
                           l2=[float(v) for v in self.l2], linf=[float(v) for v in self.linf])

    @property
    def missed(self) -> dict[str, str]:
        """Image -> why it missed the goal (``goal["missed"]``); empty when every image reached it."""
        return self.goal["missed"]

    def name(self, k: int) -> str:
        k = int(k)
        return self.class_names[k] if self.class_names and 0 <= k < len(self.class_names) else str(k)

    def display(self, images: np.ndarray) -> np.ndarray:
        """(N, C, H, W) in the model's input space -> [0, 1] for showing (un-normalized with mean/std)."""
        x = np.asarray(images, dtype=float)
        if self.mean is not None:
            x = x * np.asarray(self.std).reshape(1, -1, 1, 1) + np.asarray(self.mean).reshape(1, -1, 1, 1)
        return np.clip(x, 0.0, 1.0)

    def __len__(self) -> int:
        return len(self.original)

    def __repr__(self) -> str:
        targets = sorted({self.name(t) for t in self.target}) if self.target is not None else []
        goal = "target " + ", ".join(targets) if targets else "untargeted"
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.params.items()
                           if v is not None and not isinstance(v, (list, dict)))
        lines = [f"AdversarialResult({len(self)} images, {self.method}, {goal}; {params})",
                 f"  success {int(self.success.sum())}/{len(self)}; mean L2 {self.l2.mean():.4g}, "
                 f"mean L∞ {self.linf.mean():.4g}" + (f" ({255 * self.linf.mean():.2f}/255)" if self.box == (0.0, 1.0)
                                                        else "")]
        pb, pa = self.pred_before, self.pred_after
        for i in range(min(len(self), 8)):
            tail = f", L2 {self.l2[i]:.3g}, L∞ {self.linf[i]:.3g}" + ("" if self.success[i] else "  (failed)")
            lines.append(f"  [{i}] {self.name(pb[i])} {self.probs_before[i, pb[i]]:.3f} -> "
                         f"{self.name(pa[i])} {self.probs_after[i, pa[i]]:.3f}{tail}")
        if len(self) > 8:
            lines.append(f"  … ({len(self)} in all)")
        return "\n".join(lines)

    def __getitem__(self, i) -> "AdversarialResult":
        """Image ``i`` as a result of its own (``result[i].plot()`` draws its triptych)."""
        from ..batch import pick

        return pick(self, i, listed=("indices",))

    def plot(self, *, images: Sequence[int] | None = None, magnify: float = 10.0):
        """The lecture's triptych per image: correct image | distortion x``magnify`` around mid-grey | adversarial."""
        from ..plots.adversarial import triptych_figure

        return triptych_figure(self, images=images, magnify=magnify)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot(images=range(min(len(self), 4))))

    # ---- saving ------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Everything but the image and probability arrays (those go in the .npz)."""
        pb, pa, rows = self.pred_before, self.pred_after, np.arange(len(self))
        d = {"schema": self.schema, "method": self.method, "params": self.params,
             "target": None if self.target is None else self.target.tolist(), "labels": self.labels.tolist(),
             "label_source": self.label_source, "pred_before": pb.tolist(), "pred_after": pa.tolist(),
             "p_label_before": self.probs_before[rows, self.labels].tolist(),
             "p_label_after": self.probs_after[rows, self.labels].tolist(),
             "p_pred_before": self.probs_before[rows, pb].tolist(), "p_pred_after": self.probs_after[rows, pa].tolist(),
             "l2": self.l2.tolist(), "linf": self.linf.tolist(), "success": self.success.tolist(),
             "class_names": list(self.class_names) if self.class_names else None,
             "box": list(self.box) if self.box else None, "mean": list(self.mean) if self.mean else None,
             "std": list(self.std) if self.std else None, "indices": list(self.indices), "goal": self.goal}
        if self.target is not None:
            d["p_target_before"] = self.probs_before[rows, self.target].tolist()
            d["p_target_after"] = self.probs_after[rows, self.target].tolist()
        return d

    def save(self, path: str | Path) -> Path:
        """``path``.json (to_dict) + ``path``.npz (original, adversarial, probs_before, probs_after), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path).with_suffix("")
        atomic_write_npz(path.parent / f"{path.name}.npz", original=self.original, adversarial=self.adversarial,
                         probs_before=self.probs_before, probs_after=self.probs_after)
        return atomic_write_json(path.parent / f"{path.name}.json", self.to_dict())

    @classmethod
    def from_saved(cls, d: dict, arrays: dict) -> "AdversarialResult":
        """The inverse of :meth:`save` (``goal`` is recomputed from the arrays: files saved before it load too)."""
        return cls(arrays["original"], arrays["adversarial"], None if d["target"] is None else np.asarray(d["target"]),
                   np.asarray(d["labels"]), arrays["probs_before"], arrays["probs_after"], np.asarray(d["l2"]),
                   np.asarray(d["linf"]), d["method"], dict(d["params"]),
                   tuple(d["class_names"]) if d.get("class_names") else None, d["label_source"],
                   tuple(d["box"]) if d.get("box") else None, tuple(d["mean"]) if d.get("mean") else None,
                   tuple(d["std"]) if d.get("std") else None, tuple(d.get("indices") or ()))

    @classmethod
    def load(cls, path: str | Path) -> "AdversarialResult":
        from ..io import read_json, read_npz

        path = Path(path).with_suffix("")
        return cls.from_saved(read_json(path.parent / f"{path.name}.json"), read_npz(path.parent / f"{path.name}.npz"))


# ---- the attack ------------------------------------------------------------------------------------

def adversarial(model_or_run, x, target=None, *, method: str = "lbfgs", eps: float = 8 / 255, steps: int | None = None,
                c: float | None = None, step_size: float | None = None, search_steps: int = 6,
                random_start: bool = True, labels=None, box: tuple[float, float] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None, seed: int = 0,
                indices: Sequence[int] = (), progress: bool = False) -> AdversarialResult:
    """Make images ``x`` (C, H, W) or (N, C, H, W) be classified as ``target`` (an index, a class name,
    or one per image; None: untargeted, fgsm/pgd only). See the module docstring for the methods.

    ``eps``: the L∞ step (fgsm) or ball radius (pgd), in input units (default 8/255 of [0, 1] pixels);
    ``steps``: L-BFGS iterations per ``c`` (default 50) or PGD steps (default 20); ``labels``: the true
    classes (default: the class predicted for ``x``). A Run's images live in the box [0, 1]; a bare
    model gets ``box`` only when given; ``mean``/``std`` only for display.
    """
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    if method not in METHODS:
        raise expect("method", "one of " + ", ".join(METHODS), method)
    x0 = as_images(x, model)                                                    # (N, C, H, W)
    device = x0.device
    if box is None and run is not None:
        box = (0.0, 1.0)
    if box is not None and (x0.min() < box[0] or x0.max() > box[1]):
        raise expect("x", f"images inside the box {tuple(box)}", f"values in [{x0.min():.3g}, {x0.max():.3g}]")
    names = class_names_of(model)
    probs_before = _probs(model, x0)                                            # (N, K)
    k = probs_before.shape[1]
    n = len(x0)
    label_source = "predicted" if labels is None else "labels"
    y = probs_before.argmax(1) if labels is None else target_indices(labels, n, class_names=names, num_classes=k,
                                                                      device=device)
    t = None if target is None else target_indices(target, n, class_names=names, num_classes=k, device=device)
    if t is None and method == "lbfgs":
        raise InputError("target must be a class for method='lbfgs' (Szegedy's attack is targeted); got None. "
                         "Use method='fgsm' or 'pgd' for an untargeted attack")
    steps = _check(method, eps, steps, c, step_size, search_steps, seed)
    kw = dict(box=box, seed=seed, progress=progress)
    if method == "lbfgs":
        adv, params = _lbfgs(model, x0, t, steps=steps, c=c, search_steps=search_steps, **kw)
    else:
        objective = -O.class_logprob(y) if t is None else O.class_logprob(t)  # ascend CE(y) / descend CE(t)
        if method == "fgsm":
            res = optimize(model, objective, x0, steps=1, lr=eps, momentum=0.0, normalize_grad="sign",
                           desc="fgsm", **kw)
            params = {"eps": eps}
        else:
            size = step_size if step_size is not None else 2.5 * eps / steps
            gen = torch.Generator().manual_seed(int(seed))
            start = x0 + (eps * (2 * torch.rand(x0.shape, generator=gen) - 1)).to(x0) if random_start else x0
            res = optimize(model, objective, start, steps=steps, lr=size, momentum=0.0, normalize_grad="sign",
                           every=[_project_linf(x0, eps)], desc="pgd", **kw)
            params = {"eps": eps, "steps": steps, "step_size": size, "random_start": bool(random_start)}
        adv = res.images
    probs_after = _probs(model, adv)
    r = (adv - x0).reshape(n, -1).double()                                     # (N, C*H*W)
    return AdversarialResult(_np(x0), _np(adv),
                             None if t is None else t.cpu().numpy(), y.cpu().numpy(),
                             probs_before.float().cpu().numpy(), probs_after.float().cpu().numpy(),
                             r.norm(dim=1).cpu().numpy(), r.abs().amax(dim=1).cpu().numpy(), method,
                             params | {"seed": seed}, tuple(names) if names else None, label_source,
                             tuple(float(v) for v in box) if box is not None else None,
                             tuple(float(v) for v in mean) if mean is not None else None,
                             tuple(float(v) for v in std) if std is not None else None,
                             tuple(int(i) for i in indices))


def _lbfgs(model, x0, t, *, steps, c, search_steps, box, seed, progress):
    """Szegedy's box-constrained L-BFGS with a line search on c (see the module docstring)."""
    n = len(x0)
    fixed = c is not None
    cs = torch.full((n,), float(c if fixed else 1.0), dtype=torch.float64)
    lo, hi = torch.zeros(n, dtype=torch.float64), torch.full((n,), math.inf, dtype=torch.float64)
    best = x0.clone()
    best_l2 = torch.full((n,), math.inf, dtype=torch.float64)
    best_p = torch.full((n,), -1.0, dtype=torch.float64)  # highest P(target) among failures
    rounds = 1 if fixed else search_steps
    for _ in range(rounds):
        objective = O.class_logprob(t) + O.distance(x0, 2.0) * cs.to(x0.dtype)  # (N,) c per image
        res = optimize(model, objective, x0, steps=steps, lr=1.0, optimizer="lbfgs", box=box, seed=seed,
                       progress=progress, desc="lbfgs")
        probs = _probs(model, res.images)
        ok = (probs.argmax(1) == t).cpu()
        l2 = (res.images - x0).reshape(n, -1).double().norm(dim=1).cpu()
        p_t = probs.gather(1, t.reshape(-1, 1)).squeeze(1).double().cpu()
        take_ok = ok & (l2 < best_l2)                                   # a smaller successful distortion
        take_fail = ~ok & torch.isinf(best_l2) & (p_t > best_p)         # no success yet: the closest try
        take = (take_ok | take_fail).to(best.device)
        best[take] = res.images[take]
        best_p = torch.where(take_fail, p_t, best_p)
        best_l2 = torch.where(take_ok, l2, best_l2)
        lo = torch.where(ok, cs, lo)      # largest c known to succeed
        hi = torch.where(ok, hi, cs)      # smallest c known to fail
        cs = torch.where(ok, torch.where(torch.isinf(hi), cs * 10, (lo * hi).sqrt()),
                         torch.where(lo == 0, cs / 10, (lo * hi).sqrt()))
    c_used = torch.where(lo > 0, lo, hi).tolist()
    return best, {"steps": steps, "c": c if fixed else None, "search_steps": None if fixed else search_steps,
                  "c_per_image": c_used}


def _project_linf(x0: torch.Tensor, eps: float):
    """Between-step regularizer for the core: clip x into the L∞ ball of radius eps around x0 (in place)."""
    def apply(x: torch.Tensor, step: int, grad) -> None:
        torch.minimum(torch.maximum(x, x0 - eps), x0 + eps, out=x)
    apply.__name__ = f"project_linf({eps:g})"
    return apply


def _np(t: torch.Tensor) -> np.ndarray:
    """On the CPU in the model's precision (float64 stays float64; bfloat16, which numpy lacks, becomes float32)."""
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


def _probs(model, x: torch.Tensor) -> torch.Tensor:
    """softmax of the model's scores (N, K), no gradients, eval mode."""
    with torch.no_grad(), eval_mode(model), forward_errors(model, x):
        out = model(x)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise InputError("the model must return class scores (N, classes); got "
                         + (f"shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__))
    return torch.softmax(out.double(), dim=1)


def _check(method, eps, steps, c, step_size, search_steps, seed) -> int:
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not eps > 0:
        raise expect("eps", "a positive number", eps)
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise expect("steps", "a positive int", steps)
    if c is not None and (not isinstance(c, (int, float)) or not c > 0):
        raise expect("c", "a positive number (or None for the line search)", c)
    if step_size is not None and (not isinstance(step_size, (int, float)) or not step_size > 0):
        raise expect("step_size", "a positive number", step_size)
    if not isinstance(search_steps, int) or isinstance(search_steps, bool) or search_steps < 1:
        raise expect("search_steps", "a positive int", search_steps)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise expect("seed", "an int >= 0", seed)
    return steps if steps is not None else {"lbfgs": 50, "pgd": 20, "fgsm": 1}[method]


# ---- FGSM accuracy vs eps -----------------------------------------------------------------------------

@dataclass(frozen=True)
class FGSMSweep:
    """Accuracy of the model on untargeted adversarial images, against the attack's L∞ budget ``eps``."""

    eps: tuple[float, ...]
    accuracy: tuple[float, ...]   # share of the n images still classified as their label
    n: int
    method: str = "fgsm"

    def to_dict(self) -> dict:
        return {"schema": "convlens.fgsm-sweep/1", "eps": list(self.eps), "accuracy": list(self.accuracy),
                "n": self.n, "method": self.method}

    @classmethod
    def from_dict(cls, d: dict) -> "FGSMSweep":
        return cls(tuple(d["eps"]), tuple(d["accuracy"]), int(d["n"]), d.get("method", "fgsm"))


def fgsm_sweep(model_or_run, images, labels, eps: Sequence[float] = (0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255),
               *, method: str = "fgsm", batch_size: int = 200, **kwargs) -> FGSMSweep:
    """Untargeted ``method`` ("fgsm" or "pgd") on ``images`` (N, C, H, W) with true ``labels`` at each
    ``eps`` (0: the clean accuracy): Goodfellow et al.'s accuracy-vs-eps measurement."""
    from ..training.runs import model_and_run

    if method not in ("fgsm", "pgd"):
        raise expect("method", "'fgsm' or 'pgd'", method)
    model, _ = model_and_run(model_or_run)
    images, labels = as_images(images, model), torch.as_tensor(labels).reshape(-1)
    acc = []
    for e in eps:
        right = 0
        for i in range(0, len(images), batch_size):
            xb, yb = images[i:i + batch_size], labels[i:i + batch_size]
            if e == 0:
                pred = _probs(model, xb).argmax(1).cpu()
            else:
                pred = torch.as_tensor(adversarial(model_or_run, xb, None, method=method, eps=float(e), labels=yb,
                                                   **kwargs).pred_after)
            right += int((pred == yb).sum())
        acc.append(right / max(1, len(images)))
    return FGSMSweep(tuple(float(e) for e in eps), tuple(acc), len(images), method)
