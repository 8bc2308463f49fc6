"""One image-optimization core: objective + image parametrization + transforms + regularizers + loop.

``optimize(model, objective, init, steps=..., lr=...) -> OptimizedImage`` maximizes an
:class:`~convlens.synthesis.objectives.Objective` (one value per image of the batch ``init``) over
the input image by gradient steps. Class model visualization, representation inversion,
adversarial examples and gradient fooling images are all calls of this one loop with different
objectives and options; evolutionary fooling uses :func:`evaluate` only.

One step (Simonyan et al. 2014; Yosinski et al. 2015; Mahendran & Vedaldi 2015)::

    x_seen = transforms(x)                    # e.g. jitter: a random shift, differentiable
    value  = objective(State(model(x_seen)))  # (N,) ; layers captured with gradient
    x     += optimizer step on -value.sum()    # sgd (momentum) | adam | lbfgs
    x      = every(x)                          # between-step regularizers: blur, clipping, decay
    x      = clamp(x, box)                     # projection into the valid pixel range

Parametrization: ``"pixels"`` optimizes the model's input directly (projected into ``box`` after
each step); ``"sigmoid"`` optimizes z with x = lo + (hi - lo) * sigmoid(z), so x stays strictly
inside ``box`` without projection (fooling images). A Run's pixel model takes images in [0, 1], so
the result is directly displayable; for a model taking normalized input give ``mean``/``std`` and
``OptimizedImage.display()`` un-normalizes.

The model is left as found: it runs in eval mode, its parameters' ``requires_grad`` is switched off
during the loop (no parameter gradients are computed) and restored after, hooks are removed in
``finally``, weights are never touched. Device and dtype follow the model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, expect
from ..taps import eval_mode, model_device, resolve_hookable
from ..synthesis import update_rules
from .image_priors import PriorsStep
from .objectives import Objective, State, as_objective

__all__ = ["optimize", "evaluate", "gradient", "OptimizedImage", "goal_record", "jitter", "blur", "clip_small_norm",
           "clip_small_contribution", "decay", "OPTIMIZERS", "PARAMETRIZATIONS"]

OPTIMIZERS = ("sgd", "adam", "lbfgs")
PARAMETRIZATIONS = ("pixels", "sigmoid")


class GoalInfo:
    """``goal`` and ``missed`` of a result that keeps its goal record in ``info["goal"]`` (see :func:`goal_record`)."""

    info: dict

    @property
    def goal(self) -> dict | None:
        """``info["goal"]``: the goal, per image its number and whether it was reached (see :func:`goal_record`);
        None for a result made without one."""
        return self.info.get("goal")

    @property
    def missed(self) -> dict[str, str]:
        """Image label -> why it missed the goal; empty when every image reached it."""
        return dict((self.goal or {}).get("missed", {}))


@dataclass(eq=False)
class OptimizedImage(GoalInfo):
    """The optimized images (N, C, H, W) in the model's input space, and how they were obtained.

    ``history`` (steps, N) is the objective per image at each step; ``final`` (N,) its value on the
    returned images (no transforms); ``info`` holds method-specific numbers (scores, probabilities,
    feature errors ...) set by the caller, and ``info["goal"]`` what the method was after and whether
    each image got there (:func:`goal_record`; ``goal`` and ``missed`` read it).
    """

    images: torch.Tensor
    history: np.ndarray
    final: np.ndarray
    objective: str
    steps: int
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    info: dict = field(default_factory=dict)

    def display(self, *, mode: str = "clip") -> np.ndarray:
        """(N, H, W, C) float in [0, 1]: un-normalized with ``mean``/``std`` when given, then clipped
        (``mode="clip"``) or stretched per image to its own range (``"stretch"``; for images far outside [0, 1])."""
        x = self.images.detach().float().cpu()
        if self.mean is not None:
            x = x * torch.tensor(self.std).reshape(1, -1, 1, 1) + torch.tensor(self.mean).reshape(1, -1, 1, 1)
        x = x.numpy().transpose(0, 2, 3, 1)                                        # (N, H, W, C)
        if mode == "stretch":
            lo = x.reshape(len(x), -1).min(1).reshape(-1, 1, 1, 1)
            hi = x.reshape(len(x), -1).max(1).reshape(-1, 1, 1, 1)
            return (x - lo) / np.maximum(hi - lo, 1e-12)
        if mode != "clip":
            raise expect("mode", "'clip' or 'stretch'", mode)
        return np.clip(x, 0.0, 1.0)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i) -> "OptimizedImage":
        """Image ``i`` as a result of its own: its image, its column of ``history``, and of ``info`` the
        entries that hold one value per image (lists of N values, the goal record) for it alone."""
        from ..batch import index_of, per_image

        n = len(self)
        i = index_of(i, n)
        shared = ("class_names", "box", "input_shape", "position")  # lists that are not one value per image
        info = {k: per_image(v, i, n, listed=k not in shared) for k, v in self.info.items()}
        goal = self.info.get("goal")
        if goal:
            missed = list(goal.get("missed", {}).items())  # in image order, one per image that missed
            rank = sum(1 for r in goal["reached"][:i] if not r)
            info["goal"] = {**goal, **{k: [v[i]] for k, v in goal.items() if isinstance(v, list) and len(v) == n},
                            "missed": dict(missed[rank:rank + 1]) if not goal["reached"][i] else {}}
        if "n_targets" in info:
            info["n_targets"] = 1
        return replace(self, images=self.images[i:i + 1], history=self.history[:, i:i + 1],
                       final=self.final[i:i + 1], info=info)

    def plot(self, *, mode: str = "stretch", title: str | None = None):
        """The images in a row, each with the number its goal is judged by (red where it missed)."""
        from ..plots.optimized import optimized_figure

        return optimized_figure(self, mode=mode, title=title)

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.info.items() if isinstance(v, (int, float, str)))
        if self.goal:
            extra += f", goal reached {sum(self.goal['reached'])}/{len(self.goal['reached'])}"
        return (f"OptimizedImage({len(self)} x {tuple(self.images.shape[1:])}, {self.steps} steps, "
                f"objective {self.objective}, final {np.round(self.final, 4).tolist()}{extra})")


def goal_record(goal: str, measure: str, values, reached, keys: Sequence[str], why: Sequence[str], **extra) -> dict:
    """The one shape in which every synthesis result states its goal (``OptimizedImage.info["goal"]``,
    ``AdversarialResult.goal``), JSON-ready::

        {"goal":     "P(target) >= 0.996",   # one line: what each image was after
         "measure":  "P(target)",            # what "values" holds: the number that decides it
         "values":   [0.998, 0.91],          # per image
         "reached":  [true, false],          # per image
         "missed":   {"star": "P = 0.9100 < 0.996: ..."}}   # key -> why, only the images that missed

    ``keys`` name the images (a key that repeats gets `` [i]``, i the image's index), ``why`` says per
    image why it missed (read only where it did); ``extra``: further per-image numbers of the method
    (e.g. an adversarial image's distortion).
    """
    reached = [bool(r) for r in reached]
    if not len(keys) == len(reached) == len(values) == len(why):
        raise expect("a goal record's values, reached, keys and why", "one entry per image each",
                     (len(values), len(reached), len(keys), len(why)))
    seen = [str(k) for k in keys]
    keys = [k if seen.count(k) == 1 else f"{k} [{i}]" for i, k in enumerate(seen)]
    return {"goal": goal, "measure": measure, "values": [float(v) for v in values], "reached": reached,
            "missed": {k: str(w) for k, r, w in zip(keys, reached, why) if not r}, **extra}


# ---- transforms (before the forward, differentiable) and regularizers (between steps) -------------

def jitter(pixels: int) -> Callable:
    """Shift the image by a random (dy, dx) in [-pixels, pixels] (wrapping around), new each step."""
    if not isinstance(pixels, int) or pixels < 0:
        raise expect("jitter pixels", "an int >= 0", pixels)

    def apply(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        dy, dx = (torch.randint(-pixels, pixels + 1, (2,), generator=gen)).tolist()
        return torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    apply.__name__ = f"jitter({pixels})"
    return apply


def blur(sigma: float = 0.5, every: int = 4) -> Callable:
    """Gaussian blur of width ``sigma`` every ``every`` steps (Yosinski et al. 2015)."""
    radius = max(1, int(math.ceil(3 * sigma)))
    k = [math.exp(-i * i / (2 * sigma ** 2)) for i in range(-radius, radius + 1)] if sigma > 0 else [1.0]
    k = [v / sum(k) for v in k]

    k_of = {np.dtype(d): np.asarray(k, dtype=d) for d in (np.float32, np.float64)}  # for the CPU kernel

    def apply(x: torch.Tensor, step: int, grad: torch.Tensor | None) -> None:
        if sigma <= 0 or (step + 1) % every:
            return
        h, w = x.shape[2:]
        from ..synthesis import cpu_kernels  # imports numba: on first use

        if min(h, w) > radius and cpu_kernels.usable(x):                           # one pass, in place
            xn = x.numpy()
            cpu_kernels.blur_(xn, k_of[xn.dtype])
            return
        y = F.pad(x, (radius, radius, radius, radius), mode="reflect" if min(h, w) > radius else "replicate")
        # separable, as weighted sums of shifted views (4x faster on CPU than a depthwise conv2d)
        rows = torch.mul(y[..., :, 0:w], k[0])                                     # (N, C, H + 2r, W)
        for i in range(1, len(k)):
            rows.add_(y[..., :, i:i + w], alpha=k[i])
        x.copy_(rows[..., 0:h, :]).mul_(k[0])                                      # (N, C, H, W)
        for i in range(1, len(k)):
            x.add_(rows[..., i:i + h, :], alpha=k[i])
    apply.__name__ = f"blur({sigma:g}, every {every})"
    return apply


def clip_small_norm(percentile: float, center=0.0) -> Callable:
    """Reset to ``center`` the pixels whose norm across channels is below this percentile (Yosinski)."""
    def apply(x: torch.Tensor, step: int, grad: torch.Tensor | None) -> None:
        c = _center(center, x)
        norm = (x - c).norm(dim=1, keepdim=True)                                   # (N, 1, H, W)
        _reset_below(x, norm, percentile, c)
    apply.__name__ = f"clip_small_norm({percentile:g}%)"
    return apply


def clip_small_contribution(percentile: float, center=0.0) -> Callable:
    """Reset the pixels whose contribution |Σ_c (x - center) * grad| is below this percentile (Yosinski)."""
    def apply(x: torch.Tensor, step: int, grad: torch.Tensor | None) -> None:
        if grad is None:
            return
        c = _center(center, x)
        contrib = ((x - c) * grad).sum(dim=1, keepdim=True).abs()                  # (N, 1, H, W)
        _reset_below(x, contrib, percentile, c)
    apply.__name__ = f"clip_small_contribution({percentile:g}%)"
    return apply


def decay(rate: float, center=0.0) -> Callable:
    """x <- center + (1 - rate) (x - center) each step (Yosinski's L2 decay)."""
    def apply(x: torch.Tensor, step: int, grad: torch.Tensor | None) -> None:
        c = _center(center, x)
        x.sub_(c).mul_(1 - rate).add_(c)
    apply.__name__ = f"decay({rate:g})"
    return apply


# ---- the loop --------------------------------------------------------------------------------------

def optimize(model: nn.Module, objective: Objective, init: torch.Tensor, *, steps: int = 200, lr: float = 0.1,
             optimizer: str = "sgd", momentum: float = 0.9, lr_decay: float | None = None,
             parametrization: str = "pixels", box: tuple[float, float] | None = None,
             transforms: Sequence[Callable] = (), every: Sequence[Callable] = (), normalize_grad: bool | str = False,
             seed: int = 0, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
             stop: Callable[[State, torch.Tensor], bool] | None = None, progress: bool = False,
             desc: str = "optimize") -> OptimizedImage:
    """Maximize ``objective`` over images starting from ``init`` (N, C, H, W); see the module docstring.

    ``lr_decay``: the learning rate is multiplied by this each step (e.g. 0.99); ``normalize_grad``
    divides each image's gradient by its mean absolute value (Mahendran & Vedaldi's normalized steps),
    or with ``"sign"`` replaces it by its sign (FGSM / PGD steps of exactly ``lr`` per pixel);
    ``stop(state, value)`` ends the loop early when it returns True (e.g. once an attack succeeded);
    with ``optimizer="lbfgs"`` one step is one L-BFGS iteration (line search evaluations not counted).
    """
    objective = as_objective(objective)
    _check(init, steps, lr, optimizer, parametrization, box)
    if normalize_grad not in (False, True, "sign"):
        raise expect("normalize_grad", "True, False or 'sign'", normalize_grad)
    device, dtype = model_device(model)
    x0 = init.detach().to(device=device, dtype=dtype)
    lo, hi = box if box is not None else (None, None)
    z = _to_param(x0, parametrization, lo, hi).requires_grad_(True)
    gen = torch.Generator().manual_seed(int(seed))
    forward = _Forward(model, objective)
    rule = update_rules.make(optimizer, z, lr, momentum)
    # pixels: the priors' gradient is added to z.grad by hand after the model's backward (no autograd node)
    priors = objective.priors if parametrization == "pixels" else ()
    priors_step = PriorsStep(priors, z) if priors else None
    model_term = Objective(objective.fn, objective.name, layers=objective.layers, logits=objective.logits,
                           priors=() if priors else objective.priors)
    history = []                                                                   # (N,) per step
    minus = torch.full((len(x0),), -1.0, device=device, dtype=dtype)               # d(-Σ value)/d value
    from tqdm.auto import tqdm

    done = 0
    with eval_mode(model), _frozen(model), forward:
        state_box = {}
        for step in tqdm(range(steps), disable=not progress, desc=desc, leave=False):
            def closure():
                x = _from_param(z, parametrization, lo, hi)
                seen = x
                for t in transforms:
                    seen = t(seen, gen)
                state = forward(seen, x)
                z.grad = None      # dropped after the forward: glibc then trims its heap less often
                value = model_term(state)                                          # (N,) or None
                if value is not None:
                    value.backward(minus)                                          # gradient of -Σ value
                    value = value.detach()
                if priors:
                    with torch.no_grad():
                        v, z.grad = priors_step(z.detach(), minus, into=z.grad)
                    value = v if value is None else value + v
                if normalize_grad == "sign":
                    z.grad.sign_()
                elif normalize_grad:
                    z.grad.div_(torch.linalg.vector_norm(z.grad, 1, dim=(1, 2, 3), keepdim=True)
                                .div_(z[0].numel()).clamp_min_(1e-12))             # mean |grad| per image
                state_box.update(state=state, value=value)
                return -value.sum() if optimizer == "lbfgs" else None              # the loss L-BFGS reads

            rule.step(closure)
            grad = z.grad.detach() if z.grad is not None else None
            with torch.no_grad():
                history.append(state_box["value"])
                if parametrization == "pixels":
                    for reg in every:
                        reg(z.data, step, grad)
                    if box is not None:
                        z.data.clamp_(lo, hi)
            if lr_decay:
                rule.lr *= lr_decay
            done = step + 1
            if stop is not None and stop(state_box["state"], state_box["value"]):
                break
        with torch.no_grad():
            x = _from_param(z, parametrization, lo, hi).detach()
            final = objective(forward(x, x)).float().cpu().numpy()
    return OptimizedImage(x, torch.stack(history).float().cpu().numpy(), final, objective.name, done,
                          tuple(float(v) for v in mean) if mean is not None else None,
                          tuple(float(v) for v in std) if std is not None else None)


def evaluate(model: nn.Module, objective: Objective, x: torch.Tensor, *, batch_size: int = 256) -> torch.Tensor:
    """The objective's (N,) values on images ``x`` without gradients (eval mode): for search methods
    that use only the model's outputs (evolutionary fooling images)."""
    objective = as_objective(objective)
    device, dtype = model_device(model)
    out = []
    forward = _Forward(model, objective)
    with eval_mode(model), torch.no_grad(), forward:
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size].to(device=device, dtype=dtype)
            out.append(objective(forward(xb, xb)))
    return torch.cat(out) if out else torch.empty(0, device=device)


def gradient(model: nn.Module, objective: Objective, x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) gradient of the objective's (N,) values with respect to images ``x`` (no transforms;
    eval mode, no parameter gradients, the model left as found): e.g. the size of a score's gradient at a
    start image, for defaults that scale with the model."""
    objective = as_objective(objective)
    device, dtype = model_device(model)
    z = x.detach().to(device=device, dtype=dtype).requires_grad_(True)
    with torch.enable_grad(), eval_mode(model), _frozen(model), _Forward(model, objective) as forward:
        value = objective(forward(z, z))                                           # (N,)
        if not value.requires_grad:                                                # constant in x
            return torch.zeros_like(z)
        (g,) = torch.autograd.grad(value.sum(), z, allow_unused=True)
    return torch.zeros_like(z) if g is None else g


# ---- internals -------------------------------------------------------------------------------------

class _Stop(Exception):
    pass


class _Forward:
    """Runs the model and records the objective's layers *with* gradient (a clone, so a following
    in-place ReLU cannot change the recorded value). When the objective needs no logits, the
    forward stops right after its last layer (whose output then needs no clone)."""

    def __init__(self, model: nn.Module, objective: Objective):
        self.model, self.layers, self.need_logits = model, objective.layers, objective.logits
        self.modules = {name: resolve_hookable(model, name)[1] for name in self.layers}
        self.handles, self.acts = [], {}

    def __enter__(self):
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles.clear()
        return False

    def _hook(self, name: str):
        def hook(module, args, output):
            if not isinstance(output, torch.Tensor):
                raise InputError(f"layer {name!r} must output a tensor for an objective; got {type(output).__name__}")
            last = not self.need_logits and len(self.acts) + 1 == len(self.modules) and name not in self.acts
            if last:  # nothing runs after this layer, so nothing can change its output in place: no clone
                self.acts[name] = output
                raise _Stop
            self.acts[name] = output.clone()
        return hook

    def __call__(self, seen: torch.Tensor, raw: torch.Tensor) -> State:
        self.acts = {}
        logits = None
        try:
            logits = self.model(seen)
        except _Stop:
            pass
        if self.need_logits and (not isinstance(logits, torch.Tensor) or logits.ndim != 2):
            raise InputError("the model must return class scores (N, classes) for this objective; got "
                             + (f"shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor)
                                else type(logits).__name__))
        return State(seen, raw, logits, dict(self.acts))


class _frozen:
    """Parameters do not require grad inside the block (no parameter gradients); restored after."""

    def __init__(self, model: nn.Module):
        self.params = list(model.parameters())

    def __enter__(self):
        self.flags = [p.requires_grad for p in self.params]
        for p in self.params:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.params, self.flags):
            p.requires_grad_(flag)
        return False


def _check(init, steps, lr, optimizer, parametrization, box) -> None:
    if not isinstance(init, torch.Tensor) or init.ndim != 4 or not init.is_floating_point():
        got = f"a tensor of shape {tuple(init.shape)}" if isinstance(init, torch.Tensor) else type(init).__name__
        raise expect("init", "a float (N, C, H, W) tensor", got)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise expect("steps", "a positive int", steps)
    if not lr > 0:
        raise expect("lr", "a positive number", lr)
    if optimizer not in OPTIMIZERS:
        raise expect("optimizer", "one of " + ", ".join(OPTIMIZERS), optimizer)
    if parametrization not in PARAMETRIZATIONS:
        raise expect("parametrization", "one of " + ", ".join(PARAMETRIZATIONS), parametrization)
    if box is not None and (len(box) != 2 or not box[0] < box[1]):
        raise expect("box", "a (low, high) pair with low < high", box)
    if parametrization == "sigmoid" and box is None:
        raise InputError("parametrization='sigmoid' needs a box=(low, high) to map into")


def _to_param(x: torch.Tensor, parametrization: str, lo, hi) -> torch.Tensor:
    if parametrization == "pixels":
        return (x.clamp(lo, hi) if lo is not None else x).clone()
    u = ((x - lo) / (hi - lo)).clamp(1e-4, 1 - 1e-4)
    return torch.log(u / (1 - u))                                                 # logit


def _from_param(z: torch.Tensor, parametrization: str, lo, hi) -> torch.Tensor:
    return z if parametrization == "pixels" else lo + (hi - lo) * torch.sigmoid(z)


def _center(center, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(center, device=x.device, dtype=x.dtype)
    return t.reshape(1, -1, 1, 1) if t.ndim == 1 else t


def _reset_below(x: torch.Tensor, score: torch.Tensor, percentile: float, center: torch.Tensor) -> None:
    """Pixels (N, 1, H, W) whose score is below the per-image percentile go back to ``center``."""
    flat = score.reshape(len(score), -1).float()
    cut = torch.quantile(flat, percentile / 100.0, dim=1).reshape(-1, 1, 1, 1).to(score.dtype)
    keep = score >= cut                                                            # (N, 1, H, W)
    x.copy_(torch.where(keep, x, center.expand_as(x)))
