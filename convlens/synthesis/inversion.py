"""Representation inversion: which images does a layer see as the same as a given one?

Mahendran & Vedaldi, "Understanding Deep Image Representations by Inverting Them", CVPR 2015
(https://arxiv.org/abs/1412.0035), and "Visualizing Deep Convolutional Neural Networks Using Natural
Pre-images", IJCV 2016 (https://arxiv.org/abs/1512.02017); the lecture's "Inverse of CNN image
representation" slides. Given the code Φ0 = Φ(x0) of an image at one layer, find

    x* = argmin_x  ||Φ(x) - Φ0||² / ||Φ0||²  +  λ_α R_α(x)  +  λ_TV R_TV^β(x)

with R_α(x) = Σ |x - m|^α / (H W B^α) (α = 6 keeps the range bounded) and
R_TV^β(x) = Σ ((x_{i,j+1} - x_ij)² + (x_{i+1,j} - x_ij)²)^{β/2} / (H W V^β) (β = 2 prefers piecewise
smooth images), by gradient descent with momentum 0.9 and a decaying learning rate, from random
initializations. As in the IJCV paper the priors are normalized so that the same λ's suit any
image size and range: ``m`` is the mean pixel (the Run's ``mean``; for a bare model, the image's
per-channel mean), ``B`` the image's largest deviation from ``m`` and ``V = B / 6.5``.

What is computed (stated in the result's ``info``):

* **layer** -- a grammar network's conv/fc name stands for its output after its ReLU (as in
  ``convlens.probe``; the paper inverts the ReLU outputs too); any other name is inverted exactly as
  its module outputs. ``info["tapped"]`` names the layer read.
* **steps** -- each step moves the image by ``lr`` times the gradient divided by its mean absolute
  value (steps in pixel units whatever the layer's scale), momentum 0.9, the learning rate decaying
  geometrically to ``lr * final_lr`` at the last step; pixels are projected into the valid box (a
  Run's images: [0, 1]) after each step.
* **multiple reconstructions** -- ``n_inits`` random initializations (mean pixel + Gaussian noise of
  std ``B / 4``), optimized together as one batch; they differ where the layer is invariant ("images in
  quadrants all look the same to the CNN").
* **feature error** -- ``info["feature_error"]`` per reconstruction: ||Φ(x*) - Φ0|| / ||Φ0|| recomputed
  on the returned image (the paper's "normalized reconstruction error").
* **goal** -- a reconstruction reaches its goal when its feature error is at most ``error_goal``
  (default ``ERROR_GOAL = 0.3``): ``info["goal"]`` (:func:`~convlens.synthesis.optimize.goal_record`,
  measure: the feature error; ``result.missed``). Why 0.3: with the defaults, every conv/fc layer of the
  two trained runs the tests use (the digits run, the demo shapes) is matched to 0.04-0.25, while an
  image still near its random start is at 0.5-1.2 (15 steps leave 0.1-0.55): 0.3 tells a finished
  reconstruction from an unfinished one on both, with room on either side. The error is relative to
  ||Φ0||, and the step is normalized, so neither the goal nor a default depends on the layer's scale.
* **defaults** -- λ_α = 1e-3 (inert inside the image's range, it only stops pixels running away when
  there is no box); λ_TV rises geometrically with the layer's depth among the conv/fc layers, from
  0.01 at the first conv to 0.3 at the last layer (the paper also raises it with depth). On the demo
  model this reconstructs conv1 to a feature error of about 0.05 and the error then rises through the
  conv layers (about 0.08, 0.12, 0.17); the class scores, a code of only K numbers, are matched more
  easily again (about 0.1), though the image they give is a blob.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, expect
from ..taps import eval_mode, model_device
from ..synthesis import objectives as O
from ..inputs import as_images, forward_errors
from .optimize import OptimizedImage, goal_record, optimize

__all__ = ["invert", "save_inversions", "load_inversions", "feature_error", "ERROR_GOAL"]

LAMBDA_TV_FIRST = 0.01  # λ_TV at the first conv layer
LAMBDA_TV_RISE = 30.0  # ... and this many times that at the last layer
ERROR_GOAL = 0.3  # a reconstruction's goal: ||Φ(x*) - Φ0|| / ||Φ0|| at most this (see the module docstring)


def invert(model_or_run, x, layer: str | Sequence[str], *, steps: int = 200, alpha: float = 6.0, beta: float = 2.0,
           lambda_alpha: float = 1e-3, lambda_tv: float | None = None, n_inits: int = 1, seed: int = 0,
           lr: float = 0.01, final_lr: float = 0.1, momentum: float = 0.9, box: tuple[float, float] | None = None,
           mean: Sequence[float] | None = None, std: Sequence[float] | None = None, error_goal: float = ERROR_GOAL,
           progress: bool = False) -> OptimizedImage | dict[str, OptimizedImage]:
    """Reconstruct ``x`` (C, H, W) or (B, C, H, W) from its code at ``layer``; see the module docstring.

    ``layer`` a name, or a list of names (then a dict layer -> result, in the order given). Each result
    holds ``B * n_inits`` images (image-major: the inits of image 0 first). ``lambda_tv=None`` picks
    λ_TV by depth as the IJCV paper does (a larger weight for deeper, more invariant layers: 0.01 at
    the first conv up to 0.3 at the last layer; see :func:`default_lambda_tv`). ``lr`` is the first step in units
    of the mean pixel move; ``final_lr`` the fraction of it left at the last step. A bare model gets
    ``box`` only when given; ``mean``/``std`` are only for display (``OptimizedImage.display``).
    ``error_goal``: the feature error a reconstruction must reach (``info["goal"]``, ``result.missed``).
    """
    from ..insight.probes import choose_layers
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    names = [layer] if isinstance(layer, str) else list(layer) if isinstance(layer, (list, tuple)) else None
    if not names or not all(isinstance(n, str) for n in names):
        raise expect("layer", "a layer name or a non-empty list of layer names", layer)
    shown, tapped = choose_layers(model, names)
    _check(steps, alpha, beta, lambda_alpha, lambda_tv, n_inits, seed, lr, final_lr, momentum)
    if isinstance(error_goal, bool) or not isinstance(error_goal, (int, float)) or not error_goal > 0:
        raise expect("error_goal", "a positive number (the largest feature error that reaches the goal)", error_goal)
    x0 = as_images(x, model, input_shape=run.input_shape if run is not None else None)  # (B, C, H, W)
    if box is None and run is not None:
        box = (0.0, 1.0)
    center = _center(run, x0)                                                   # (B, C, 1, 1)
    depth = _depths(model, tapped)
    out = {}
    for name, tap in zip(shown, tapped):
        lam_tv = lambda_tv if lambda_tv is not None else default_lambda_tv(depth[tap])
        out[name] = _invert_one(model, x0, name, tap, center, steps=steps, alpha=alpha, beta=beta,
                                lambda_alpha=lambda_alpha, lambda_tv=lam_tv, n_inits=n_inits, seed=seed, lr=lr,
                                final_lr=final_lr, momentum=momentum, box=box, progress=progress,
                                mean=mean, std=std)
        out[name].info["goal"] = inversion_goal(out[name].info, out[name].steps, error_goal)
    return out[shown[0]] if isinstance(layer, str) else out


def inversion_goal(info: dict, steps: int, error_goal: float = ERROR_GOAL) -> dict:
    """The goal record (feature error <= ``error_goal``) from an inversion's ``info``; images are named
    ``image b`` (with ``, init j`` for several initializations)."""
    rows, n = info["image_index"], int(info.get("n_inits", 1))
    keys = [f"image {b}" + (f", init {i % n}" if n > 1 else "") for i, b in enumerate(rows)]
    errors = info["feature_error"]
    why = [f"feature error {e:.3f} > {error_goal:g} after {steps} steps; raise steps" for e in errors]
    return goal_record(f"||Φ(x*) - Φ0|| / ||Φ0|| <= {error_goal:g} at {info.get('layer')}", "feature error", errors,
                       [e <= error_goal for e in errors], keys, why)


def default_lambda_tv(depth: float) -> float:
    """λ_TV for a layer at relative depth ``depth`` in [0, 1] (0: the first conv, 1: the last layer),
    geometric from ``LAMBDA_TV_FIRST`` to ``LAMBDA_TV_RISE`` times that (Mahendran & Vedaldi, IJCV 2016,
    raise λ_TV with depth too). Chosen on the demo model: the first conv is reconstructed to a feature
    error of about 0.05 and the deep layers' reconstructions stay smooth."""
    return float(LAMBDA_TV_FIRST * LAMBDA_TV_RISE ** min(max(depth, 0.0), 1.0))


def feature_error(model_or_run, images: torch.Tensor, layer: str, target: torch.Tensor) -> np.ndarray:
    """(N,) ||Φ(x) - Φ0|| / ||Φ0|| at ``layer`` (read exactly as named: a module path or lecture name),
    ``target`` Φ0 (N, ...) or (1, ...); no gradients, the model left as found."""
    from ..training.runs import model_and_run

    model, _ = model_and_run(model_or_run)
    device, dtype = model_device(model)
    phi = _code(model, images.to(device=device, dtype=dtype), layer).reshape(len(images), -1).float()  # (N, D)
    t = target.reshape(len(target), -1).to(phi)                                # (N or 1, D)
    return ((phi - t).norm(dim=1) / t.norm(dim=1).clamp_min(1e-12)).cpu().numpy()


# ---- one layer -------------------------------------------------------------------------------------

def _invert_one(model, x0, name, tap, center, *, steps, alpha, beta, lambda_alpha, lambda_tv, n_inits, seed, lr,
                final_lr, momentum, box, progress, mean, std) -> OptimizedImage:
    phi0 = _code(model, x0, tap)                                                # (B, ...)
    rep = torch.arange(len(x0), device=x0.device).repeat_interleave(n_inits)    # (N,) image of each row
    target, c = phi0[rep], center[rep]                                          # (N, ...), (N, C, 1, 1)
    _, _, h, w = x0.shape
    b = (x0 - center).abs().reshape(len(x0), -1).amax(dim=1).clamp_min(1e-3)[rep]  # (N,) the image's range
    v = b / 6.5
    objective = (O.feature_match(tap, target)
                 + (lambda_alpha / (h * w * b ** alpha)) * O.alpha_norm(alpha, c)
                 + (lambda_tv / (h * w * v ** beta)) * O.tv(beta))
    gen = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(tuple(target.shape[:1]) + tuple(x0.shape[1:]), generator=gen)  # (N, C, H, W)
    init = c + (b / 4).reshape(-1, 1, 1, 1) * noise.to(x0)
    res = optimize(model, objective, init, steps=steps, lr=lr, optimizer="sgd", momentum=momentum,
                   lr_decay=final_lr ** (1.0 / max(1, steps - 1)), box=box, normalize_grad=True, seed=seed,
                   mean=mean, std=std, progress=progress, desc=f"invert {name}")
    res.info.update(layer=name, tapped=tap, feature_error=feature_error(model, res.images, tap, target).tolist(),
                    image_index=rep.tolist(), alpha=alpha, beta=beta, lambda_alpha=lambda_alpha, lambda_tv=lambda_tv,
                    B=b.tolist(), n_inits=n_inits, lr=lr, final_lr=final_lr, momentum=momentum, seed=seed,
                    box=list(box) if box is not None else None)
    return res


def _code(model, x0, tap) -> torch.Tensor:
    """Φ(x0) at ``tap``, (B, ...), without gradients and in eval mode."""
    from ..taps import activations

    with eval_mode(model), forward_errors(model, x0):
        return activations(model, x0, [tap])[tap].detach().to(x0.dtype).clone()


def _depths(model, tapped: Sequence[str]) -> dict[str, float]:
    """Relative depth in [0, 1] of each tapped layer among the model's conv/fc layers (by registration order)."""
    from ..insight.probes import choose_layers
    from ..layers import resolve

    paths = [p for p, _ in model.named_modules() if p]
    try:
        _, every = choose_layers(model, None)
    except InputError:
        every = []
    order = [paths.index(resolve(model, t)[0]) for t in every]
    out = {}
    for t in tapped:
        pos = paths.index(resolve(model, t)[0])
        if len(order) < 2:
            out[t] = 0.0
            continue
        out[t] = float(np.interp(pos, order, np.linspace(0.0, 1.0, len(order))))
    return out


def _center(run, x0: torch.Tensor) -> torch.Tensor:
    if run is not None:
        m = run.mean.to(x0).reshape(1, -1, 1, 1)
        return m.expand(len(x0), x0.shape[1], 1, 1).clone()
    return x0.mean(dim=(2, 3), keepdim=True)                                   # (B, C, 1, 1)


def _check(steps, alpha, beta, lambda_alpha, lambda_tv, n_inits, seed, lr, final_lr, momentum) -> None:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise expect("steps", "a positive int", steps)
    if not isinstance(n_inits, int) or isinstance(n_inits, bool) or n_inits < 1:
        raise expect("n_inits", "a positive int", n_inits)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise expect("seed", "an int >= 0", seed)
    for key, value in (("alpha", alpha), ("beta", beta), ("lr", lr)):
        if not isinstance(value, (int, float)) or not value > 0:
            raise expect(key, "a positive number", value)
    for key, value in (("lambda_alpha", lambda_alpha), ("lambda_tv", lambda_tv)):
        if value is not None and (not isinstance(value, (int, float)) or value < 0):
            raise expect(key, "a number >= 0", value)
    if not isinstance(final_lr, (int, float)) or not 0 < final_lr <= 1:
        raise expect("final_lr", "a number in (0, 1]", final_lr)
    if not isinstance(momentum, (int, float)) or not 0 <= momentum < 1:
        raise expect("momentum", "a number in [0, 1)", momentum)


# ---- saving --------------------------------------------------------------------------------------

def save_inversions(path: str | Path, original: torch.Tensor, results: dict[str, OptimizedImage]) -> Path:
    """``path``.json (layers, objectives, feature errors, parameters) + ``path``.npz (the original
    (B, C, H, W), each layer's images and history), written atomically."""
    from ..io import atomic_write_json, atomic_write_npz

    path = Path(path).with_suffix("")
    arrays = {"original": as_images(original).float().cpu().numpy()}
    layers = []
    for i, (name, r) in enumerate(results.items()):
        arrays[f"images_{i}"] = r.images.detach().float().cpu().numpy()
        arrays[f"history_{i}"] = np.asarray(r.history, dtype=np.float32)
        layers.append({"layer": name, "objective": r.objective, "steps": r.steps, "final": np.asarray(r.final).tolist(),
                       "mean": r.mean, "std": r.std, "info": r.info})
    atomic_write_npz(path.parent / f"{path.name}.npz", **arrays)
    atomic_write_json(path.parent / f"{path.name}.json", {"schema": "convlens.inversion/1", "layers": layers})
    return path.parent / f"{path.name}.json"


def load_inversions(path: str | Path) -> tuple[torch.Tensor, dict[str, OptimizedImage]]:
    """(original (B, C, H, W), layer -> OptimizedImage) as :func:`save_inversions` wrote them."""
    from ..io import read_json, read_npz

    path = Path(path).with_suffix("")
    d = read_json(path.parent / f"{path.name}.json")
    arrays = read_npz(path.parent / f"{path.name}.npz")
    return from_saved(d, arrays)


def from_saved(d: dict, arrays: dict) -> tuple[torch.Tensor, dict[str, OptimizedImage]]:
    """The inverse of :func:`save_inversions` from its JSON dict and npz arrays (for report sections). A
    result saved before goals were recorded gets the default goal (``ERROR_GOAL``) from its feature errors."""
    out = {}
    for i, e in enumerate(d["layers"]):
        info = dict(e["info"])
        if "goal" not in info and "feature_error" in info and "image_index" in info:
            info["goal"] = inversion_goal(info, int(e["steps"]))
        out[e["layer"]] = OptimizedImage(torch.from_numpy(arrays[f"images_{i}"]), arrays[f"history_{i}"],
                                         np.asarray(e["final"], dtype=float), e["objective"], int(e["steps"]),
                                         tuple(e["mean"]) if e.get("mean") else None,
                                         tuple(e["std"]) if e.get("std") else None, info)
    return torch.from_numpy(arrays["original"]), out
