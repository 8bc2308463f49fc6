"""Activation maximization from several random starts under a fixed norm, and how much the optima agree.

Erhan, Bengio, Courville & Vincent, "Visualizing Higher-Layer Features of a Deep Network", Tech. Report
1341, Université de Montréal, 2009 (Sec. 3.1): maximize a unit's activation over inputs of fixed norm,

    x* = argmax_x f(x)   subject to   ||x - c|| = r

by gradient ascent from random starts. A unit's activation is not concave: the optimum found depends on
the start (the lecture: "depend on initialization"). The paper found the optima of a deep belief net's
units nearly identical from every start; one optimum per unit is then a fair picture of it, and several
clusters of optima say the unit responds to several different patterns.

What is computed (``OptimalStimuli.info`` states each):

* **sphere** -- ``c``: a Run's mean pixel (0 for a bare model taking normalized input); ``r``: ``norm``,
  default the root-mean-square norm of a data image's ``x - c`` under the normalization's statistics,
  ``sqrt(H W Σ_c σ_c²)`` (:func:`~convlens.synthesis.sphere.default_norm`). No pixel box, no jitter, no
  blur: the optimum of the unit itself, as in the paper (the images are shown stretched to their range).
* **starts** -- ``n_inits`` points drawn uniformly on the sphere (Gaussian directions, seeds ``seed``,
  ``seed + 1``, ...).
* **steps** -- projected gradient ascent on the optimization core (:func:`~convlens.synthesis.optimize.optimize`):
  each step moves an image by ``lr · r / sqrt(D)`` times its gradient divided by the gradient's mean
  absolute value (a step in units of the sphere's per-pixel RMS, whatever the unit's scale), momentum
  0.9, the step decaying geometrically to 1% of ``lr`` at the last step, then back onto the sphere. Not
  Adam: its per-pixel scaling moves the fixed point of projected ascent away from the points where the
  gradient is normal to the sphere (a linear unit's optimum would come out as the sign of its filter).
* **agreement** -- ``cosine`` (n x n): the cosine similarity of the optima's offsets ``x - c``;
  ``clusters``: average-linkage hierarchical clustering of the optima on the cosine distance, cut at
  ``1 - same`` (default ``same = 0.9``: optima whose average cosine similarity is at least 0.9 are one
  optimum), numbered by size (0 the largest). ``activation`` per optimum and ``start_activation`` at
  its start; ``tangential_gradient``: ||P ∇f|| / ||∇f|| at each optimum (P the projection on the
  sphere's tangent space; 0 at a stationary point; a ReLU net's optimum can sit on a kink, where it
  need not vanish).
* **goal** -- each optimum converged: its activation rose above its start's, and changed over the last
  10% of the steps by at most 1% of its whole rise (``result.goal``, ``result.missed``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, expect
from ..taps import eval_mode, model_device, resolve_hookable
from . import objectives as O
from .class_model import _space, image_shape, logits_of, unit_objective
from .optimize import GoalInfo, _Forward, _frozen, evaluate, goal_record, gradient, optimize
from .sphere import Sphere, check_norm, default_norm, display_images, onto

__all__ = ["optimal_stimuli", "OptimalStimuli", "SAME", "unit_target"]

SAME = 0.9  # optima whose (average-linkage) cosine similarity is at least this are one cluster
FINAL_LR = 0.01  # the step decays geometrically to this fraction of lr at the last step
SCHEMA = "convlens.optimal_stimuli/1"


@dataclass(eq=False)
class OptimalStimuli(GoalInfo):
    """``n_inits`` optima (n, C, H, W) of one unit on the sphere ||x - c|| = r, in the model's input space,
    with their activations, pairwise cosines and clusters; ``order`` sorts them by cluster (largest first),
    then by activation. ``history`` (steps, n): the activation at each step."""

    images: torch.Tensor
    activation: np.ndarray
    start_activation: np.ndarray
    cosine: np.ndarray
    clusters: np.ndarray
    tangential_gradient: np.ndarray
    history: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1 if len(self.clusters) else 0

    @property
    def order(self) -> np.ndarray:
        """Indices sorted by cluster (0: the largest), then by activation (highest first)."""
        return np.lexsort((-self.activation, self.clusters))

    @property
    def best(self) -> int:
        """The index of the optimum with the highest activation."""
        return int(np.argmax(self.activation))

    @property
    def sphere(self) -> Sphere:
        return Sphere.of(self.info, self.images.dtype)

    def __len__(self) -> int:
        return len(self.images)

    def display(self, *, mode: str = "stretch") -> np.ndarray:
        """(n, H, W, C) in [0, 1], each optimum stretched to its own range (see ``sphere.display_images``)."""
        return display_images(self.images, self.info.get("mean"), self.info.get("std"), mode=mode)

    def plot(self, *, title: str | None = None):
        """The optima sorted by cluster, each with its activation, and their cosine-similarity matrix."""
        from ..plots.invariances import optimal_stimuli_figure

        return optimal_stimuli_figure(self, title=title)

    def _repr_png_(self):
        from ..plots.common import to_png

        return to_png(self.plot())

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "activation": self.activation.tolist(),
                "start_activation": self.start_activation.tolist(), "cosine": self.cosine.tolist(),
                "clusters": self.clusters.tolist(), "tangential_gradient": self.tangential_gradient.tolist(),
                "info": self.info}

    def save(self, path: str | Path) -> Path:
        """``path``.json (numbers, info) + ``path``.npz (images, history), atomically."""
        from ..io import write_json_npz

        return write_json_npz(path, self.to_dict(), images=self.images.detach().float().cpu().numpy(),
                              history=np.asarray(self.history, dtype=np.float32))

    @classmethod
    def load(cls, path: str | Path) -> "OptimalStimuli":
        from ..io import read_json_npz

        return cls.from_saved(*read_json_npz(path))

    @classmethod
    def from_saved(cls, d: dict, arrays: dict) -> "OptimalStimuli":
        if d.get("schema") != SCHEMA:
            raise expect("an optimal-stimuli file's schema", SCHEMA, d.get("schema"))
        return cls(torch.from_numpy(np.asarray(arrays["images"])), np.asarray(d["activation"], dtype=float),
                   np.asarray(d["start_activation"], dtype=float), np.asarray(d["cosine"], dtype=float),
                   np.asarray(d["clusters"], dtype=int), np.asarray(d["tangential_gradient"], dtype=float),
                   np.asarray(arrays["history"]), dict(d["info"]))

    def __repr__(self) -> str:
        i = self.info
        off = self.cosine[~np.eye(len(self), dtype=bool)]
        return (f"OptimalStimuli({i['label']}: {len(self)} optima on ||x - c|| = {i['norm']:.4g}, "
                f"{self.n_clusters} cluster{'s' if self.n_clusters != 1 else ''} (sizes "
                f"{np.bincount(self.clusters).tolist()}), activation {self.activation.min():.4g}.."
                f"{self.activation.max():.4g}, pairwise cosine {off.min() if off.size else 1:.3f}.."
                f"{off.max() if off.size else 1:.3f})")


def optimal_stimuli(model_or_run, layer: str | None = None, unit: int | None = None, *, target=None,
                    position=None, n_inits: int = 8, norm: float | None = None, steps: int = 200, lr: float = 0.05,
                    same: float = SAME, seed: int = 0, input_shape=None, mean=None, std=None,
                    progress: bool = False) -> OptimalStimuli:
    """Maximize one unit (``layer`` + ``unit``: a channel's mean over positions, its value at ``position``
    ``"center"`` / ``(row, col)``, or unit ``unit`` of a flat layer) or one class score (``target``, a class
    index or name) from ``n_inits`` random starts on the sphere ||x - c|| = ``norm`` (Erhan et al. 2009);
    see the module docstring. ``mean``/``std``: a bare model's input normalization, for display only."""
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    shape = image_shape(model, run, input_shape)
    _check(n_inits, steps, lr, same)
    norm = check_norm(norm)
    device, dtype = model_device(model)
    center, _, mean, std = _space(run, shape, None, mean, std, device, dtype)
    r = norm if norm is not None else default_norm(shape, run.std.tolist() if run is not None else None)
    sphere = Sphere(center, r)
    init = sphere.random(n_inits, shape, seed, device=device, dtype=dtype)         # (n, C, H, W)
    objective_of, label, kind = unit_target(model, layer, unit, target, position, init[:1])
    objective = objective_of(n_inits)
    check_differentiable(model, objective, init[:1], label)
    step = lr * r / math.sqrt(int(np.prod(shape)))                                 # per-pixel units of the sphere
    result = optimize(model, objective, init, steps=steps, lr=step, optimizer="sgd", momentum=0.9,
                      lr_decay=FINAL_LR ** (1 / max(1, steps - 1)), normalize_grad=True, every=[onto(sphere)],
                      seed=seed, progress=progress, desc="optimal stimuli")
    x = sphere.project_(result.images.clone())
    act = evaluate(model, objective, x).double().cpu().numpy()                     # (n,)
    start = evaluate(model, objective, init).double().cpu().numpy()
    g = gradient(model, objective, x).double()
    tangential = (torch.linalg.vector_norm(sphere.tangent(x.double(), g), dim=(1, 2, 3))
                  / torch.linalg.vector_norm(g, dim=(1, 2, 3)).clamp_min(1e-300)).cpu().numpy()
    d = sphere.offset(x).reshape(n_inits, -1).double()                            # (n, D)
    d = d / torch.linalg.vector_norm(d, dim=1, keepdim=True).clamp_min(1e-300)
    cosine = (d @ d.T).clamp(-1, 1).cpu().numpy()                                  # (n, n)
    clusters = cluster(cosine, same)
    history = np.asarray(result.history, dtype=float)
    info = {"kind": kind, "label": label, "layer": layer, "unit": unit, "target": target if kind == "class" else None,
            "position": list(position) if isinstance(position, tuple) else position, "n_inits": n_inits,
            "norm": float(r), "center": [float(v) for v in center.reshape(-1).tolist()],
            "seeds": [int(seed) + i for i in range(n_inits)], "steps": int(result.steps), "lr": float(lr),
            "step_pixels": float(step), "same": float(same), "input_shape": list(shape),
            "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None}
    info["goal"] = _goal(history, act, start, info["seeds"])
    return OptimalStimuli(x.detach().cpu(), act, start, cosine, clusters, tangential, history, info)


def unit_target(model, layer, unit, target, position, probe: torch.Tensor):
    """(objective for n images, label, "unit" | "class") of a hidden unit or a class score, checked (a class
    against the scores of the image ``probe`` (1, C, H, W))."""
    from ..targets import class_names_of, class_index

    if layer is not None:
        if target is not None:
            raise InputError(f"give either target (a class) or layer + unit (a hidden unit); got target={target!r} "
                             f"and layer={layer!r}")
        resolve_hookable(model, layer)                                             # unknown names: suggestions
        if unit is None:
            raise InputError(f"unit must be given with layer={layer!r}: a channel index (int >= 0); got None")
        if isinstance(unit, bool) or not isinstance(unit, int) or unit < 0:
            raise expect("unit", "one channel index (int >= 0)", unit)
        u = unit
        unit_objective(layer, torch.tensor([u]), position)                         # checks position
        return (lambda n: unit_objective(layer, torch.full((n,), u), position)), \
            f"{layer}:{u}" + ("" if position is None else f"@{position}"), "unit"
    if unit is not None or position is not None:
        raise InputError("unit and position go with layer=...: the hidden unit to maximize; got layer=None")
    if target is None:
        raise InputError("give layer + unit (a hidden unit) or target (a class score); got neither")
    names = class_names_of(model)
    k = len(logits_of(model, probe)[0])                                            # the number of classes
    c = class_index(target, names, k)
    return (lambda n: O.class_score(c)), (names[c] if names and c < len(names) else f"class {c}"), "class"


def check_differentiable(model, objective: O.Objective, x: torch.Tensor, label: str) -> None:
    """InputError when ``objective`` (one value per image) is not a differentiable function of the input
    (the forward detaches it, or computes it without gradient); the model is left as found."""
    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model), _frozen(model), _Forward(model, objective) as forward:
        value = objective(forward(z, z))
        connected = value.requires_grad and torch.autograd.grad(value.sum(), z, allow_unused=True)[0] is not None
    if not connected:
        raise InputError(f"{label} has no differentiable path from the model's input: its value does not depend "
                         "on the input through autograd (a .detach(), torch.no_grad() or a non-differentiable op "
                         "in the forward); got no gradient")


def cluster(cosine: np.ndarray, same: float) -> np.ndarray:
    """(n,) cluster labels: average-linkage clustering on 1 - cosine cut at 1 - ``same``; 0 the largest cluster."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(cosine)
    if n < 2:
        return np.zeros(n, dtype=int)
    dist = squareform(np.clip(1.0 - (cosine + cosine.T) / 2, 0.0, 2.0), checks=False)
    labels = fcluster(linkage(dist, method="average"), t=1.0 - same, criterion="distance") - 1
    sizes = np.bincount(labels)
    first = np.array([np.flatnonzero(labels == k)[0] for k in range(len(sizes))])
    rank = np.lexsort((first, -sizes))                                             # largest first, then first seen
    relabel = np.empty_like(rank)
    relabel[rank] = np.arange(len(rank))
    return relabel[labels].astype(int)


def _goal(history: np.ndarray, act: np.ndarray, start: np.ndarray, seeds: list[int]) -> dict:
    n_last = max(1, len(history) // 10)
    late = np.abs(history[-1] - history[-1 - n_last]) if len(history) > n_last else np.zeros(len(act))
    rise = act - start
    reached = (rise > 0) & (late <= 0.01 * np.abs(rise))
    why = [f"activation {a:.4g} did not rise above its start's {s:.4g} (zero gradient: a dead unit, or a "
           "rectified one that is 0 on the whole sphere)" if r <= 0 else
           f"still changing: {c:.3g} over the last {n_last} steps (> 1% of its rise {r:.3g}); raise steps"
           for a, s, r, c in zip(act, start, rise, late)]
    return goal_record("each optimum converged: above its start, changing < 1% of its rise over the last 10% "
                       "of the steps", "activation", act, reached, [f"seed {s}" for s in seeds], why)


def _check(n_inits, steps, lr, same) -> None:
    if isinstance(n_inits, bool) or not isinstance(n_inits, int) or n_inits < 2:
        raise expect("n_inits", "an int >= 2 (random starts to compare)", n_inits)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise expect("steps", "a positive int", steps)
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
        raise expect("lr", "a positive number (steps in units of the sphere's per-pixel RMS)", lr)
    if isinstance(same, bool) or not isinstance(same, (int, float)) or not -1 < same <= 1:
        raise expect("same", "a cosine similarity in (-1, 1]", same)
