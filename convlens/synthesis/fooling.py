"""Fooling images: images unrecognizable to people that the model puts in a class with >= 99.6% confidence.

Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions for
Unrecognizable Images", CVPR 2015 (https://arxiv.org/abs/1412.1897); the lecture's ">99.6%
confidences" slide. Two ways, both run for a batch of targets (every class) at once:

* ``method="gradient"`` (the paper's Sec. 3.4, after Simonyan et al. 2014): gradient ascent of
  log P(target | x) from uniform noise, with no image prior, until every image reaches ``confidence``
  (checked on the returned image; at most ``steps``). Pixels are kept strictly inside the box by
  the sigmoid parametrization x = lo + (hi - lo) sigmoid(z) (``convlens.optimize``), Adam steps of ``lr`` in z.
* ``method="evolution"``: a search that uses the model's **outputs only** (no gradient is ever
  computed; every forward runs under ``torch.no_grad`` through ``convlens.synthesis.optimize.evaluate``).
  The genome is a CPPN (``encoding="cppn"``, the paper's indirect encoding: a small network mapping
  each pixel's (x, y, r, 1) to its colour; here 2 hidden layers cycling sin / tanh / Gaussian units,
  a sigmoid output, whose weights evolve) or the pixels themselves (``encoding="direct"``, at
  ``direct_size`` and bilinearly resized to the input; the full input size by default). Search:

  1. a random population of ``init_population`` genomes is scored for *every* class at once (one
     softmax each); each target starts from the genome best for it -- the paper's MAP-Elites idea that an
     image found for one class is a good start for another;
  2. each generation, per unfinished target, ``population`` mutants θ ± σε (antithetic Gaussian
     noise) are scored; the genome moves along the rank-weighted noise with Adam (a natural evolution
     strategy, Wierstra et al. 2014 / Salimans et al. 2017); the best image ever seen for each target
     is kept, including mutants made for *other* targets (elites shared across classes);
  3. step size: a target whose best has not improved for ``PATIENCE`` generations restarts its search
     at its best genome with half the mutation size ``sigma`` and half the step ``es_lr`` (down to 1/16;
     after that, at full size again): large steps find the region, small ones climb the last fractions
     of a percent that a fixed step only circles (a (1+1)-ES-style step-size rule);
  4. the search is goal-driven: a target stops once its best reaches ``confidence``; the run stops when
     all have, or when the budget of ``generations`` is spent, and ``info["unreached"]`` then says for
     each class left why (still improving when the budget ran out, or stalled since a generation).

``info`` records per image: ``confidence`` (P(target) of the returned image), ``reached``, and
``steps_to_reach`` (gradient) or ``generation_reached`` (evolution; 0: found in the random
population), plus totals (``steps`` / ``generations``, ``evaluations``: images scored) and
``unreached`` (label -> why, empty when every image reached the goal). ``info["goal"]`` says the same
in the shape every synthesis result shares (:func:`~convlens.synthesis.optimize.goal_record`: goal
``P(target) >= confidence``, measure P(target), ``missed`` = ``unreached``; ``result.missed``).

Scale: log P(target) is what both searches climb, and neither step depends on its scale (Adam's steps
in z; the evolution's ranks), so no default needs scaling with the model. The goal itself does not
scale: a net whose scores are 100x smaller needs scores 100x further apart for the same confidence, and
may miss it in the budget (``info["goal"]["missed"]`` says so).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError, expect
from ..taps import model_device
from ..synthesis import objectives as O
from .class_model import image_shape, logits_of
from .optimize import OptimizedImage, evaluate, goal_record, optimize
from ..targets import class_names_of, target_indices

__all__ = ["fooling_image", "METHODS", "ENCODINGS", "cppn_render"]

METHODS = ("gradient", "evolution")
ENCODINGS = ("cppn", "direct")
PATIENCE = 20        # evolution: generations without a gain before a target's step size is halved
SMALLEST_STEP = 1 / 16  # ... down to this fraction of sigma and es_lr; then a restart at full size


def fooling_image(model_or_run, target=None, *, method: str = "gradient", confidence: float = 0.996,
                  seed: int = 0, steps: int = 500, lr: float = 0.2, generations: int = 2000, population: int = 32,
                  init_population: int = 200, sigma: float = 0.1, es_lr: float = 0.05, encoding: str = "cppn",
                  hidden: int = 16, cppn_scale: float = 3.0, direct_size: tuple[int, int] | None = None,
                  input_shape: Sequence[int] | None = None, box: tuple[float, float] | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                  progress: bool = False) -> OptimizedImage:
    """Fooling images (Nguyen et al. 2015) for ``target``: a class index or name, a list of them, or None
    for every class; see the module docstring. ``steps``/``lr`` are the gradient method's;
    ``generations``, ``population`` (mutants per target and generation), ``init_population``,
    ``sigma`` (mutation std) and ``es_lr`` the evolution's. ``steps`` and ``generations`` are budgets: the
    search stops as soon as every image reaches ``confidence``. A Run's images are pixels in [0, 1]; a bare
    model's are in ``box`` (default (0, 1)), normalized with ``mean``/``std`` when given (the returned
    images are then the normalized ones and ``display()`` un-normalizes them)."""
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    shape = image_shape(model, run, input_shape)
    _check(method, confidence, encoding, population, init_population, sigma, es_lr, generations, hidden, box)
    pixel_model, box, normalize = _pixel_space(model, run, shape, box, mean, std)
    device, dtype = model_device(model)
    k = logits_of(pixel_model, torch.full((1, *shape), (box[0] + box[1]) / 2, device=device, dtype=dtype)).shape[1]
    names = class_names_of(model)
    items = list(range(k)) if target is None else (
        list(target) if isinstance(target, (list, tuple)) or isinstance(target, torch.Tensor) and target.ndim
        else [target])
    targets = target_indices(items, len(items), class_names=names, num_classes=k, device=device)  # (N,)
    log_c = math.log(confidence)
    if method == "gradient":
        result, info = _gradient(pixel_model, targets, shape, box, log_c, steps, lr, seed, progress)
    else:
        result, info = _evolve(pixel_model, targets, shape, box, log_c, seed, generations, population,
                               init_population, sigma, es_lr, encoding, hidden, cppn_scale, direct_size, progress)
    p = torch.softmax(logits_of(pixel_model, result.images), 1)                   # (N, K)
    conf = p[torch.arange(len(p), device=p.device), targets.to(p.device)]
    info.update(method=method, targets=targets.tolist(), confidence_goal=float(confidence),
                labels=[names[t] if names and t < len(names) else str(t) for t in targets.tolist()],
                class_names=list(names) if names else None, confidence=[float(v) for v in conf.cpu()],
                reached=[bool(v >= confidence) for v in conf.cpu()], top1=p.argmax(1).tolist(),
                unreached=_unreached(info, conf.cpu().tolist(), confidence, names, targets.tolist()),
                box=list(box), input_shape=list(shape))
    info["goal"] = fooling_goal(info)
    result.info.update(info)
    if normalize is not None:
        m, s = normalize
        result.images = (result.images - m) / s
        result.mean, result.std = (tuple(float(v) for v in np.ravel(mean)), tuple(float(v) for v in np.ravel(std)))
    return result


# ---- gradient ascent -------------------------------------------------------------------------------

def _gradient(model, targets, shape, box, log_c, steps, lr, seed, progress):
    device, dtype = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    x = box[0] + (box[1] - box[0]) * torch.rand(len(targets), *shape, generator=gen).to(device=device, dtype=dtype)
    objective = O.class_logprob(targets)
    history, used, reached_at = [], 0, np.full(len(targets), -1)
    result = None
    while used < steps:  # optimize stops once all reached; the returned images are re-checked
        result = optimize(model, objective, x, steps=steps - used, lr=lr, optimizer="adam", parametrization="sigmoid",
                          box=box, seed=seed + used, progress=progress, desc="fooling (gradient)",
                          stop=lambda state, value: bool((value >= log_c).all()))
        h = result.history                                                         # (steps, N)
        for i in np.flatnonzero(reached_at < 0):
            hit = np.flatnonzero(h[:, i] >= log_c)
            if len(hit):
                reached_at[i] = used + hit[0] + 1
        history.append(h)
        used += result.steps
        x = result.images
        if (result.final >= log_c).all():
            break
    result.history, result.steps = np.concatenate(history), used
    return result, {"steps": used, "steps_to_reach": [int(v) if v >= 0 else None for v in reached_at],
                    "evaluations": used * len(targets), "lr": float(lr), "init": "uniform noise"}


# ---- evolution (outputs only) ----------------------------------------------------------------------

def _evolve(model, targets, shape, box, log_c, seed, generations, population, init_population, sigma, es_lr,
            encoding, hidden, cppn_scale, direct_size, progress):
    from tqdm.auto import tqdm

    device, dtype = model_device(model)
    gen = torch.Generator().manual_seed(int(seed))
    render, dim = _encoding(encoding, shape, box, hidden, cppn_scale, direct_size, device, dtype)
    n, t = len(targets), targets.to(device)

    def scores(genomes):                                                           # (M, D) -> (M, K) log P
        return torch.log_softmax(logits_of(model, render(genomes)).float(), 1)

    pool = _randn((init_population, dim), gen, device, dtype)                      # (P0, D)
    lp = scores(pool)                                                              # (P0, K)
    start = lp[:, t].argmax(0)                                                     # (N,)
    theta, best, best_f = pool[start].clone(), pool[start].clone(), lp[start, t].clone()
    evaluations = init_population
    reached_at = torch.where(best_f >= log_c, 0, -1)
    history = [best_f.cpu().numpy().copy()]
    adam_m, adam_v = torch.zeros_like(theta), torch.zeros_like(theta)
    adam_t = torch.zeros(n, device=device, dtype=dtype)                            # Adam's step count per target
    step = torch.ones(n, device=device, dtype=dtype)                               # fraction of sigma and es_lr
    improved_at = torch.zeros(n, dtype=torch.long, device=device)                  # generation of the last gain
    restarted_at = torch.zeros(n, dtype=torch.long, device=device)
    restarts = torch.zeros(n, dtype=torch.long, device=device)
    half = max(1, population // 2)
    done = 0
    for g in tqdm(range(1, generations + 1), disable=not progress, desc="fooling (evolution)", leave=False):
        active = torch.nonzero(best_f < log_c).flatten()                           # (A,)
        if not len(active):
            break
        eps = _randn((len(active), half, dim), gen, device, dtype)                 # (A, P/2, D)
        s = sigma * step[active, None, None]                                       # (A, 1, 1)
        cand = torch.cat([theta[active, None] + s * eps, theta[active, None] - s * eps], 1)  # (A, P, D)
        lp = scores(cand.reshape(-1, dim))                                         # (A*P, K)
        evaluations += len(lp)
        for_all = lp[:, t]                                                         # (A*P, N) every target's fitness
        top = for_all.max(0)
        better = top.values > best_f                                               # elites shared across targets
        best[better] = cand.reshape(-1, dim)[top.indices[better]]
        improved_at = torch.where(top.values > best_f + 1e-5, g, improved_at)      # a gain, not float noise
        best_f = torch.maximum(best_f, top.values)
        reached_at = torch.where((reached_at < 0) & (best_f >= log_c), g, reached_at)
        fit = lp.reshape(len(active), -1, lp.shape[1])[torch.arange(len(active), device=device), :, t[active]]  # (A, P)
        rank = fit.argsort(1).argsort(1).to(dtype) / (fit.shape[1] - 1) - 0.5      # centred ranks
        grad = ((rank[:, :half] - rank[:, half:])[..., None] * eps).sum(1) / (fit.shape[1] * s[:, 0])  # (A, D)
        adam_t[active] += 1
        adam_m[active] = 0.9 * adam_m[active] + 0.1 * grad
        adam_v[active] = 0.999 * adam_v[active] + 0.001 * grad ** 2
        k = adam_t[active, None]
        lr_a = es_lr * step[active, None]                                          # (A, 1)
        theta[active] += lr_a * (adam_m[active] / (1 - 0.9 ** k)) / ((adam_v[active] / (1 - 0.999 ** k)).sqrt() + 1e-8)
        since = torch.maximum(improved_at, restarted_at)[active]
        stuck = active[g - since >= PATIENCE]                                      # (S,) no gain for a while
        if len(stuck):  # restart at the elite with half the step (or full size after the smallest)
            theta[stuck], adam_m[stuck], adam_v[stuck], adam_t[stuck] = best[stuck], 0, 0, 0
            step[stuck] = torch.where(step[stuck] > SMALLEST_STEP, step[stuck] / 2, 1.0)
            restarted_at[stuck], restarts[stuck] = g, restarts[stuck] + 1
        history.append(best_f.cpu().numpy().copy())
        done = g
    images = render(best)
    final = evaluate(model, O.class_logprob(t), images).float().cpu().numpy()
    result = OptimizedImage(images, np.stack(history).astype(np.float32), final, "logP[per-image]", done)
    return result, {"generations": done, "evaluations": int(evaluations), "encoding": encoding,
                    "population": population, "init_population": init_population, "sigma": float(sigma),
                    "es_lr": float(es_lr),
                    "generation_reached": [int(v) if v >= 0 else None for v in reached_at.tolist()],
                    "last_gain": improved_at.tolist(), "restarts": restarts.tolist(),
                    **({"hidden": hidden, "cppn_scale": float(cppn_scale)} if encoding == "cppn" else
                       {"direct_size": list(direct_size or shape[1:])})}


def _encoding(encoding, shape, box, hidden, cppn_scale, direct_size, device, dtype):
    """(render: (M, D) genomes -> (M, C, H, W) images in ``box``, D)."""
    c, h, w = shape
    lo, hi = box
    if encoding == "cppn":
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, h, device=device, dtype=dtype),
                                torch.linspace(-1, 1, w, device=device, dtype=dtype), indexing="ij")
        coords = torch.stack([xs, ys, (xs ** 2 + ys ** 2).sqrt(), torch.ones_like(xs)], -1).reshape(-1, 4)  # (HW, 4)
        coords[:, :3] *= cppn_scale
        layers = [(4, hidden), (hidden + 1, hidden), (hidden + 1, c)]
        return (lambda g: lo + (hi - lo) * cppn_render(g, coords, layers).transpose(1, 2).reshape(len(g), c, h, w),
                sum(a * b for a, b in layers))
    size = tuple(direct_size) if direct_size is not None else (h, w)
    if len(size) != 2 or not all(isinstance(v, int) and v >= 1 for v in size):
        raise expect("direct_size", "an (h, w) pair of positive ints", direct_size)

    def direct(g):
        x = torch.sigmoid(g.reshape(len(g), c, *size))                             # (M, C, h, w)
        if size != (h, w):
            x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
        return lo + (hi - lo) * x
    return direct, c * size[0] * size[1]


def cppn_render(genomes: torch.Tensor, coords: torch.Tensor, layers) -> torch.Tensor:
    """(M, D) CPPN weights, (P, 4) pixel inputs -> (M, P, C) in (0, 1): hidden units cycle sin, tanh and
    a Gaussian exp(-z²); a bias input is appended before every layer after the first."""
    h, i = coords.expand(len(genomes), -1, -1), 0                                  # (M, P, 4)
    for li, (a, b) in enumerate(layers):
        weights = genomes[:, i:i + a * b].reshape(len(genomes), a, b)
        i += a * b
        if li:
            h = torch.cat([torch.sin(h[..., 0::3]), torch.tanh(h[..., 1::3]), torch.exp(-h[..., 2::3] ** 2),
                           torch.ones_like(h[..., :1])], -1)                       # (M, P, a): units + bias
        h = h @ weights                                                            # (M, P, b)
    return torch.sigmoid(h)


# ---- helpers ---------------------------------------------------------------------------------------

def fooling_goal(info: dict) -> dict:
    """The goal record (P(target) >= the confidence goal) from a fooling result's ``info``."""
    goal, unreached = info["confidence_goal"], info.get("unreached") or {}
    why = [unreached.get(label, f"P = {p:.4f} < {goal:g}") for label, p in zip(info["labels"], info["confidence"])]
    return goal_record(f"P(target) >= {goal:g}", "P(target)", info["confidence"], info["reached"], info["labels"],
                       why)


def _unreached(info: dict, conf: list[float], goal: float, names, targets: list[int]) -> dict[str, str]:
    """label -> why the image is short of the goal: the budget ran out while it still gained, or it stalled."""
    out = {}
    for i, (p, t) in enumerate(zip(conf, targets)):
        if p >= goal:
            continue
        label = names[t] if names and t < len(names) else str(t)
        if "generations" in info:
            spent, last = info["generations"], info["last_gain"][i]
            why = (f"stalled: no gain since generation {last} of {spent}, through {info['restarts'][i]} "
                   "step-size restarts" if spent - last > 2 * PATIENCE else
                   f"still gaining when the budget of {spent} generations ran out; raise generations")
        else:
            why = f"the budget of {info['steps']} steps ran out; raise steps"
        out[label] = f"P = {p:.4f} < {goal:g}: {why}"
    return out



class _Normalized(nn.Module):
    """(x - mean) / std, then the model: a bare model that takes normalized input, fed pixels."""

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.class_names = getattr(model, "class_names", None)

    def forward(self, x):
        return self.model((x - self.mean) / self.std)


def _pixel_space(model, run, shape, box, mean, std):
    """(the module fed pixels, the pixel box, (mean, std) to normalize the result with, or None)."""
    if run is not None:
        return model, box if box is not None else (0.0, 1.0), None
    box = box if box is not None else (0.0, 1.0)
    if mean is None and std is None:
        return model, box, None
    if mean is None or std is None:
        raise InputError("give both mean and std (the model's input normalization), or neither")
    device, dtype = model_device(model)
    m, s = (torch.as_tensor(v, device=device, dtype=dtype).reshape(1, -1, 1, 1) for v in (mean, std))
    if m.shape[1] not in (1, shape[0]) or s.shape[1] not in (1, shape[0]):
        raise expect("mean and std", f"1 or {shape[0]} numbers (one per channel)", (mean, std))
    return _Normalized(model, m, s), box, (m, s)


def _randn(size, gen, device, dtype) -> torch.Tensor:
    return torch.randn(size, generator=gen).to(device=device, dtype=dtype)


def _check(method, confidence, encoding, population, init_population, sigma, es_lr, generations, hidden, box):
    if method not in METHODS:
        raise expect("method", "'gradient' or 'evolution'", method)
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise expect("confidence", "a probability in (0, 1)", confidence)
    if encoding not in ENCODINGS:
        raise expect("encoding", "'cppn' or 'direct'", encoding)
    for name, v, low in (("population", population, 2), ("init_population", init_population, 1),
                         ("generations", generations, 0), ("hidden", hidden, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise expect(name, f"an int >= {low}", v)
    for name, v in (("sigma", sigma), ("es_lr", es_lr)):
        if not v > 0:
            raise expect(name, "a positive number", v)
    if box is not None and (len(box) != 2 or not box[0] < box[1]):
        raise expect("box", "a (low, high) pair with low < high", box)
