"""Objectives: differentiable scores of an image batch, one value per image, to be *maximized*.

They compose like Lucent's (``class_score(3) + 1e-4 * l2() + 5e-3 * tv()``): ``+``, ``-``, scalar
``*`` and unary ``-`` build new objectives, and the layers each part reads are captured once per
step. An objective is a callable on a :class:`State` (the image the model saw, its outputs and the
captured activations) returning an ``(N,)`` tensor.

Model terms
    ``class_score(c)``       S_c(I), the class score *before* softmax (Simonyan et al. 2014)
    ``class_logprob(c)``     log softmax_c: pushes the other classes down too (adversarial, fooling)
    ``channel(layer, u)``    mean activation of feature map ``u`` (activation maximization of a channel)
    ``neuron(layer, u)``     the activation at the centre of map ``u`` (or a given (row, col)), or of
                             unit ``u`` of a flat (N, D) layer (Erhan et al. 2009; Yosinski et al. 2015)
    ``feature_match(layer, target)``  -||Φ(x) - Φ0||² / ||Φ0||²   (Mahendran & Vedaldi 2015, eq. 1)
Image priors (computed on the image itself)
    ``l2(center)``           -||x - center||²          (Simonyan's λ||I||², I mean-subtracted)
    ``alpha_norm(alpha)``    -||x - center||_α^α       (Mahendran & Vedaldi's R_α, α = 6)
    ``tv(beta)``             -Σ ((x_{i,j+1} - x_ij)² + (x_{i+1,j} - x_ij)²)^{β/2}   (R_TV^β, β = 2;
                             a difference past the last row/column counts as 0, so every pixel is tied)
    ``distance(x0, p)``      -||x - x0||_p^p           (distortion of an adversarial image)

Priors carry their sign already: *adding* them to a model term penalizes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from ..errors import InputError, expect
from .image_priors import FeatureError, ImagePriors, as_ref, scaled

__all__ = ["State", "Objective", "class_score", "class_logprob", "channel", "neuron", "feature_match", "l2",
           "alpha_norm", "tv", "distance", "as_objective"]


@dataclass
class State:
    """What an objective can read at one step: ``image`` (N, C, H, W) as the model saw it (after the
    transforms), ``logits`` (N, K) or None when the forward stopped early, ``acts`` layer -> output
    (with gradient), ``raw`` the untransformed image being optimized."""

    image: torch.Tensor
    raw: torch.Tensor
    logits: torch.Tensor | None = None
    acts: dict[str, torch.Tensor] = field(default_factory=dict)

    def act(self, layer: str) -> torch.Tensor:
        if layer not in self.acts:
            raise InputError(f"layer {layer!r} did not run during the forward pass; an objective needs its output")
        return self.acts[layer]


class Objective:
    """``fn(state) -> (N,)`` to maximize, with the layers it reads and whether it needs the logits.

    ``priors``: image priors (``l2``, ``alpha_norm``, ``tv``, ``distance``) summed into this objective,
    as (kind, weight, ...) terms; composition keeps them apart from ``fn`` so that all of them run as
    one fused autograd function (:class:`~convlens.synthesis.image_priors.ImagePriors`) however they were combined.
    """

    def __init__(self, fn: Callable[[State], torch.Tensor] | None, name: str, *, layers=(), logits: bool = False,
                 priors: tuple = ()):
        self.fn, self.name, self.layers, self.logits = fn, name, tuple(dict.fromkeys(layers)), bool(logits)
        self.priors = tuple(priors)

    def __call__(self, state: State) -> torch.Tensor:
        value = self.fn(state) if self.fn is not None else None
        if self.priors:
            p = ImagePriors.apply(state.raw, self.priors)
            value = p if value is None else value + p
        return value

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    # ---- composition -----------------------------------------------------------------------------
    def _join(self, other: "Objective", sign: float) -> "Objective":
        other = as_objective(other)
        op = "+" if sign > 0 else "-"
        fa, fb = self.fn, other.fn
        if fb is None:
            fn = fa
        elif fa is None:
            fn = fb if sign > 0 else (lambda s: -fb(s))
        elif sign > 0:
            fn = lambda s: fa(s) + fb(s)  # noqa: E731
        else:
            fn = lambda s: fa(s) - fb(s)  # noqa: E731
        return Objective(fn, f"{self.name} {op} {other.name}", layers=self.layers + other.layers,
                         logits=self.logits or other.logits, priors=self.priors + scaled(other.priors, sign))

    def __add__(self, other):
        return self._join(other, 1.0)

    def __radd__(self, other):
        return self if isinstance(other, (int, float)) and other == 0 else as_objective(other) + self

    def __sub__(self, other):
        return self._join(other, -1.0)

    def __mul__(self, k):
        """``k * objective``: ``k`` a number, or an (N,) float tensor weighting each image of the batch."""
        if isinstance(k, torch.Tensor) and k.ndim == 1 and k.is_floating_point():
            w = k.detach()
            return Objective(lambda s: w.to(s.raw.device, s.raw.dtype) * self(s), f"w * ({self.name})",
                             layers=self.layers, logits=self.logits)
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            raise expect("an objective's factor", "a number or an (N,) float tensor (one weight per image)", k)
        fa = self.fn
        return Objective(None if fa is None else (lambda s: k * fa(s)), f"{k:g} * ({self.name})",
                         layers=self.layers, logits=self.logits, priors=scaled(self.priors, k))

    __rmul__ = __mul__

    def __neg__(self):
        return self * -1.0


def as_objective(obj) -> Objective:
    if isinstance(obj, Objective):
        return obj
    raise expect("objective", "a convlens Objective (e.g. class_score(3) - 1e-4 * l2())", type(obj).__name__)


def _per_image(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(len(t), -1).sum(dim=1)  # (N, ...) -> (N,)


# ---- model terms -----------------------------------------------------------------------------------

def class_score(c) -> Objective:
    """S_c: the score of class ``c`` before softmax; ``c`` an int or an (N,) tensor (one per image)."""
    return Objective(lambda s: _pick(s.logits, c), f"score[{_label(c)}]", logits=True)


def class_logprob(c) -> Objective:
    """log P(c | x) = log softmax of the scores."""
    return Objective(lambda s: _pick(torch.log_softmax(s.logits, dim=1), c), f"logP[{_label(c)}]", logits=True)


def channel(layer: str, unit: int) -> Objective:
    """Mean over positions of feature map ``unit`` of ``layer``."""
    def fn(s: State) -> torch.Tensor:
        a = s.act(layer)                                          # (N, C, H, W) or (N, D)
        _check_unit(a, unit, layer)
        return a[:, unit].reshape(len(a), -1).mean(dim=1)
    return Objective(fn, f"{layer}:{unit}", layers=[layer])


def neuron(layer: str, unit: int, position: tuple[int, int] | None = None) -> Objective:
    """One unit: map ``unit`` at ``position`` (default its centre) of a conv layer, or unit ``unit`` of a flat layer."""
    def fn(s: State) -> torch.Tensor:
        a = s.act(layer)
        _check_unit(a, unit, layer)
        if a.ndim == 2:
            return a[:, unit]
        r, c = position if position is not None else (a.shape[2] // 2, a.shape[3] // 2)
        return a[:, unit, r, c]
    return Objective(fn, f"{layer}:{unit}@{position or 'centre'}", layers=[layer])


def feature_match(layer: str, target: torch.Tensor) -> Objective:
    """-||Φ(x) - Φ0||² / ||Φ0||² for ``layer``'s output Φ; ``target`` Φ0 is (N, ...) or one (1, ...) for all."""
    target = target.detach()
    wide = target.to(torch.promote_types(target.dtype, torch.float32))         # no float16 overflow
    inv = -1.0 / _per_image(wide ** 2).clamp_min(1e-12)                       # -1/||Φ0||², (N,) or (1,)
    scales = inv.to(target.dtype), (2 * inv).to(target.dtype)

    def fn(s: State) -> torch.Tensor:
        a = s.act(layer)
        if a.shape[1:] != target.shape[1:]:
            raise InputError(f"feature_match: layer {layer!r} outputs {tuple(a.shape[1:])} per image but the target "
                             f"has {tuple(target.shape[1:])}")
        return FeatureError.apply(a, target, *scales)
    return Objective(fn, f"-||{layer} - Φ0||²/||Φ0||²", layers=[layer])


# ---- image priors ----------------------------------------------------------------------------------

def l2(center=0.0) -> Objective:
    """-||x - center||², ``center`` a number or a (C,) / broadcastable tensor (e.g. the mean pixel)."""
    return Objective(None, "||x||²", priors=(("pow", 1.0, as_ref(center), 2.0),))


def alpha_norm(alpha: float = 6.0, center=0.0) -> Objective:
    """-Σ |x - center|^α (Mahendran & Vedaldi's R_α; α = 6 keeps the range bounded)."""
    if not alpha > 0:
        raise expect("alpha", "a positive number", alpha)
    return Objective(None, f"||x||_{alpha:g}^{alpha:g}", priors=(("pow", 1.0, as_ref(center), float(alpha)),))


def tv(beta: float = 2.0) -> Objective:
    """-R_TV^β: Σ over pixels of ((x_{i,j+1} - x_ij)² + (x_{i+1,j} - x_ij)²)^(β/2), channels summed;
    differences past the last row or column are 0 (the bottom-right pixel is tied to its neighbours too)."""
    if not beta > 0:
        raise expect("beta", "a positive number", beta)
    return Objective(None, f"TV^{beta:g}", priors=(("tv", 1.0, float(beta)),))


def distance(x0: torch.Tensor, p: float = 2.0) -> Objective:
    """-Σ |x - x0|^p: how far the optimized image moved from ``x0`` (N, C, H, W)."""
    return Objective(None, f"||x - x0||_{p:g}^{p:g}", priors=(("pow", 1.0, as_ref(x0), float(p)),))


# ---- helpers ---------------------------------------------------------------------------------------

def _pick(scores: torch.Tensor | None, c) -> torch.Tensor:
    if scores is None:
        raise InputError("this objective needs the model's class scores, but the forward stopped early")
    if isinstance(c, torch.Tensor) and c.ndim == 1:
        return scores.gather(1, c.to(scores.device).reshape(-1, 1)).squeeze(1)  # (N,)
    return scores[:, int(c)]


def _label(c) -> str:
    return "per-image" if isinstance(c, torch.Tensor) and c.ndim == 1 else str(int(c))


def _check_unit(a: torch.Tensor, unit: int, layer: str) -> None:
    if a.ndim < 2 or not 0 <= unit < a.shape[1]:
        raise InputError(f"unit must be in [0, {a.shape[1] - 1}] for layer {layer!r} ({a.shape[1]} channels); "
                         f"got {unit}")
