"""Class model visualization: the image that maximizes a class score (or a hidden unit).

Simonyan, Vedaldi & Zisserman, "Deep Inside Convolutional Networks: Visualising Image Classification
Models and Saliency Maps", ICLR workshop 2014 (https://arxiv.org/abs/1312.6034), Sec. 2; the
lecture's "Gradient based ConvNet visualisation" slides (dumbbell, cup, dalmatian)::

    I* = argmax_I  S_c(I) - λ ||I||²          S_c: the score of class c *before* the softmax

found by gradient ascent from the zero image (the training images are mean-subtracted, so "zero" is
the mean image). With the regularizers of Yosinski, Clune, Nguyen, Fuchs & Lipson, "Understanding
Neural Networks Through Deep Visualization", ICML DL workshop 2015 (https://arxiv.org/abs/1506.06579):
a random shift of the image each step (jitter), a Gaussian blur every few steps, and resetting
pixels of small norm or small contribution to the mean. With ``layer``/``unit`` a hidden unit's
activation is maximized instead (activation maximization, Erhan, Bengio, Courville & Vincent 2009).

What is computed (stated in the result's ``info``):

* **model input** -- a Run (or run directory) is optimized in pixels through its normalization, so
  the "zero" image is the run's mean pixel, ``||I||²`` is ``||x - mean||²`` and pixels stay in [0, 1].
  A bare ``nn.Module`` is assumed to take normalized input: the zero image is 0, there is no box
  unless ``box`` is given, and ``mean``/``std`` (when given) only un-normalize for display.
* **start** -- the zero image plus Gaussian noise of std ``noise`` drawn from each seed: a ReLU
  network's gradient at an exactly constant image can be exactly zero (every first-layer unit sees
  the same value), and the seeds give the several different class models the paper shows.
* **objective** -- ``S_c + logprob * T log softmax(S / T)_c - λ ||x - zero||²`` (λ and T below; at
  ``T = 1`` the middle term is ``logprob * log P(c)``). ``logprob=0`` with a number for ``l2`` is the
  paper's objective exactly. The default ``logprob = 3`` also pushes the *other* scores down: maximizing a
  score alone can raise a competitor's score faster (on the demo shapes model, the "square" score
  alone raises "star" more, both liking corners), and then the class model is not even classified
  as its class. For a hidden unit: its mean activation over positions (``position=None``, a channel)
  or its value at one position (``"center"`` or ``(row, col)``; a flat layer's unit), minus the L2
  prior. The layer is the module named (a lecture name such as ``conv3`` or a module path), read as
  it outputs (``relu3`` names the rectified output). A rectified unit that is 0 everywhere at the start
  has no gradient and stays 0 (``activation_after`` = 0): name the layer before its ReLU.
* **defaults that scale with the model** -- λ and the log P term mean something only against the size of
  the scores: with a fixed λ a net whose scores are 100x smaller hardly leaves its start (the prior pulls
  100x harder than the score), and its softmax is so flat that log P(c) no longer singles out the
  strongest competitor. Both are set against ``g``, the norm ``||∇ S||₂`` of each image's score
  gradient at its start (a unit's: its activation's): ``l2=None`` (the default) gives each image
  ``λ = L2_RELATIVE * g``; ``temperature=None`` reads the log P term as ``T log softmax(S / T)_c`` (in
  score units) at one ``T = median(g) / SCORE_SCALE`` for the call (the median over its images).
  Multiply every score by ``a`` and ``g``, λ, T and the objective are multiplied by ``a`` while Adam's
  steps do not change: the same images. The constants were chosen on the two trained runs the tests use
  (median ``g`` 2.1 on the digits run, 5.7 on the demo), where the fixed λ = 0.05, T = 1 of before
  worked: ``L2_RELATIVE = 0.014`` (λ 0.03 and 0.08 there), ``SCORE_SCALE = 2.5`` (T 0.85 and 2.3). Against
  a score alone, linear along its gradient, the prior would hold the image at an L2 distance of
  ``1 / (2 L2_RELATIVE)`` ≈ 36 from its start, whatever the scale. A number for ``l2`` or
  ``temperature`` is used as given (``l2=0.05, temperature=1`` is the fixed setting of before).
  ``info``: ``score_gradient`` (g per image), ``l2`` (the median λ), ``l2_per_image``, ``temperature``.
* **plain steps** -- jitter and blur favour the smooth patterns a trained net responds to; an untrained
  net's evidence for a class is pixel-fine and the blur wipes it out. A class image that is not top-1
  after ``steps`` continues for up to ``plain_steps`` more (default: ``steps``; 0: none) with the same
  objective but no jitter, blur or clipping, until every such image is top-1 (``info["plain_steps"]``
  per image). With the default ``steps``, every class model of the two trained runs is top-1 before it.
* **optimizer** -- Adam (``lr`` in the units of the model's input) by default: its steps do not
  depend on the scale of the score, so one ``lr`` suits any model; ``optimizer="sgd"`` uses momentum 0.9
  (its ``lr`` multiplies the gradient: scale it with the model yourself).
* **before / after** -- ``info["score_before"]``/``["prob_before"]`` at the zero image (no noise),
  ``["score_after"]``/``["prob_after"]``/``["top1"]`` on the returned images (no jitter); for units
  ``["activation_before"]``/``["activation_after"]``.
* **goal** -- ``info["goal"]`` (:func:`~convlens.synthesis.optimize.goal_record`; ``result.missed``):
  a class model's goal is to be classified as its class (top-1; the number kept is P(class)), a hidden
  unit's to rise above its activation at the zero image (the number kept is the activation). Images are
  named by label, with `` (seed s)`` when there are several seeds.

Images are ordered seed-major: ``n_seeds`` rows of ``len(targets)`` images (``info["seeds"]``,
``info["targets"]`` per image).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError, expect
from ..taps import model_device
from ..synthesis import objectives as O
from .optimize import (OPTIMIZERS, OptimizedImage, blur as blur_every_k, clip_small_contribution, clip_small_norm,
                       decay as decay_to, evaluate, goal_record, gradient, jitter as jitter_by, optimize)
from ..targets import class_names_of, target_indices

__all__ = ["class_model", "save_optimized", "load_optimized", "logits_of", "image_shape", "L2_RELATIVE",
           "SCORE_SCALE"]

L2_RELATIVE = 0.014  # l2=None: λ per image = this x the norm of its score's gradient at the start (see above)
SCORE_SCALE = 2.5  # temperature=None: the log P term's T = the median of those norms / this (see above)


def class_model(model_or_run, target=None, *, layer: str | None = None, unit=None, position=None,
                steps: int = 100, lr: float = 0.05, optimizer: str = "adam", l2: float | None = None,
                logprob: float = 3.0, temperature: float | None = None, plain_steps: int | None = None, seed: int = 0,
                n_seeds: int = 1, noise: float = 0.02, jitter: int | None = None, blur: float = 0.8,
                blur_every: int = 2, clip_norm: float | None = None, clip_contribution: float | None = None,
                decay: float | None = None,
                input_shape: Sequence[int] | None = None, box: tuple[float, float] | None = None,
                mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                progress: bool = False) -> OptimizedImage:
    """Class model visualization (Simonyan et al. 2014) of ``target``; see the module docstring.

    ``target``: a class index or name, a list of them (optimized together as one batch), or None for
    every class. ``layer`` + ``unit`` (an int or a list of ints): maximize hidden units instead
    (``target`` must then be None). ``l2=None`` / ``temperature=None``: the L2 prior's weight and the
    log P term's temperature relative to each image's score gradient at its start (see the module
    docstring); numbers are used as given. ``plain_steps``: the most steps without jitter, blur or
    clipping for class images not yet top-1 (None: ``steps``; 0: none). ``jitter=None`` shifts by up to
    1/16 of the image side;
    ``blur``: the Gaussian's sigma in pixels, applied every ``blur_every`` steps (0 for none);
    ``clip_norm``/``clip_contribution``: percentiles of pixels reset to the zero image after each step;
    ``decay``: the fraction of ``x - zero`` removed each step. ``input_shape`` (C, H, W) is needed only
    for a model that does not carry one.
    """
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    shape = image_shape(model, run, input_shape)
    _check(l2, logprob, temperature, plain_steps, n_seeds, noise, jitter, blur, blur_every, clip_norm,
           clip_contribution, decay, optimizer)
    device, dtype = model_device(model)
    center, box, mean, std = _space(run, shape, box, mean, std, device, dtype)
    zero = center.expand(1, *shape).clone()                                        # (1, C, H, W)
    seeds = [int(seed) + i for i in range(n_seeds)]

    if layer is None:
        if unit is not None or position is not None:
            raise InputError("unit and position go with layer=...: the hidden unit to maximize; got layer=None")
        scores0 = logits_of(model, zero)[0]                                        # (K,)
        names = class_names_of(model)
        k = len(scores0)
        items = list(range(k)) if target is None else (
            list(target) if isinstance(target, (list, tuple)) or isinstance(target, torch.Tensor) and target.ndim
            else [target])
        targets = target_indices(items, len(items), class_names=names, num_classes=k).tolist()
        per_image = torch.tensor(targets * n_seeds, device=device)                # (N,)
        score = O.class_score(per_image)
        labels = [names[t] if names and t < len(names) else str(t) for t in targets]
    else:
        if target is not None:
            raise InputError(f"give either target (a class) or layer + unit (a hidden unit); got target={target!r} "
                             f"and layer={layer!r}")
        targets = _units(unit)
        per_image = torch.tensor(targets * n_seeds, device=device)
        score = unit_objective(layer, per_image, position)
        labels = [f"{layer}:{u}" for u in targets]
    init = torch.cat([zero + noise * torch.randn(1, *shape, generator=torch.Generator().manual_seed(s)).to(
        device=device, dtype=dtype) for s in seeds for _ in targets])              # (S*T, C, H, W)
    if box is not None:
        init = init.clamp(*box)
    # the model's scale: the size of each image's score gradient at its start (the module docstring)
    size = torch.linalg.vector_norm(gradient(model, score, init).double(), dim=(1, 2, 3))  # (N,)
    temps = torch.full_like(size, float(temperature) if temperature is not None else
                            max(float(np.median(size.cpu().numpy())) / SCORE_SCALE, 1e-12))  # (N,) one T
    weights = L2_RELATIVE * size if l2 is None else torch.full_like(size, float(l2))  # (N,) λ per image

    def objective_of(rows: torch.Tensor) -> O.Objective:                          # for images ``rows``
        picked = per_image[rows.to(per_image.device)]
        score_i = O.class_score(picked) if layer is None else unit_objective(layer, picked, position)
        if layer is None and logprob:
            score_i = score_i + logprob * _tempered_logprob(picked, temps[rows])
        if l2 is None:
            return score_i + O.l2(_flat(center)) * weights[rows].to(dtype)
        return score_i + l2 * O.l2(_flat(center)) if l2 else score_i
    everyone = torch.arange(len(init))
    pixels = jitter if jitter is not None else max(1, round(min(shape[1:]) / 16))
    every = []
    if blur:
        every.append(blur_every_k(blur, blur_every))
    if clip_norm:
        every.append(clip_small_norm(clip_norm, _flat(center)))
    if clip_contribution:
        every.append(clip_small_contribution(clip_contribution, _flat(center)))
    if decay:
        every.append(decay_to(decay, _flat(center)))
    result = optimize(model, objective_of(everyone), init, steps=steps, lr=lr, optimizer=optimizer, box=box,
                      transforms=[jitter_by(pixels)] if pixels else [], every=every, seed=seed, mean=mean, std=std,
                      progress=progress, desc="class model")
    plain = steps if plain_steps is None else plain_steps
    extra = np.zeros(len(init), dtype=int)
    if layer is None and plain:                                                    # images not yet top-1
        missed = torch.nonzero(logits_of(model, result.images).argmax(1).cpu() != per_image.cpu()).flatten()
        if len(missed):
            extra[missed.numpy()] = _plain_phase(model, result, objective_of(missed), missed,
                                                 per_image[missed.to(per_image.device)], steps=plain, lr=lr,
                                                 optimizer=optimizer, box=box)

    info = {"kind": "class" if layer is None else "unit", "targets": [int(t) for t in per_image.tolist()],
            "labels": labels * n_seeds, "seeds": [s for s in seeds for _ in targets], "n_targets": len(targets),
            "n_seeds": n_seeds, "input_shape": list(shape), "l2": float(np.median(weights.cpu().numpy())),
            "l2_per_image": _floats(weights), "l2_relative": L2_RELATIVE if l2 is None else None,
            "score_gradient": _floats(size), "noise": float(noise), "lr": float(lr),
            "optimizer": optimizer, "jitter": pixels, "blur": float(blur), "blur_every": int(blur_every),
            "clip_norm": clip_norm, "clip_contribution": clip_contribution, "decay": decay,
            "box": list(box) if box is not None else None, "plain_steps": extra.tolist()}
    if layer is None:
        after = logits_of(model, result.images)                                    # (N, K)
        rows = torch.arange(len(after), device=after.device)
        t = per_image.to(after.device)
        info.update(logprob=float(logprob), temperature=float(temps[0]), score_before=_floats(scores0[t]),
                    prob_before=_floats(torch.softmax(scores0, 0)[t]), score_after=_floats(after[rows, t]),
                    prob_after=_floats(torch.softmax(after, 1)[rows, t]), top1=after.argmax(1).tolist(),
                    class_names=list(names) if names else None)
    else:
        unit_only = unit_objective(layer, per_image, position)
        info.update(layer=layer, position=list(position) if isinstance(position, tuple) else position,
                    activation_before=_floats(evaluate(model, unit_only, zero.expand(len(per_image), *shape))),
                    activation_after=_floats(evaluate(model, unit_only, result.images)))
    info["goal"] = class_model_goal(info, steps)
    result.info.update(info)
    return result


def _plain_phase(model, result: OptimizedImage, objective: O.Objective, rows: torch.Tensor, targets: torch.Tensor, *,
                 steps: int, lr: float, optimizer: str, box) -> np.ndarray:
    """Continue images ``rows`` of ``result`` with the same objective but no jitter, blur or clipping until
    each is top-1 (at most ``steps``); writes their images, history and final values into ``result`` in
    place and returns the steps each took."""
    def all_top1(state: O.State, value) -> bool:
        return bool((state.logits.argmax(1) == targets.to(state.logits.device)).all())

    more = optimize(model, objective, result.images[rows.to(result.images.device)], steps=steps, lr=lr,
                    optimizer=optimizer, box=box, stop=all_top1, desc="class model (plain)")
    result.images[rows.to(result.images.device)] = more.images
    tail = np.repeat(result.history[-1:], more.steps, axis=0)                     # (more, N): the others held
    tail[:, rows.numpy()] = more.history
    result.history = np.concatenate([result.history, tail])
    result.final[rows.numpy()] = more.final
    result.steps += more.steps
    return np.full(len(rows), more.steps)


def class_model_goal(info: dict, steps: int) -> dict:
    """The goal record of a class model (top-1) or hidden-unit maximization (above the zero image's
    activation) from its ``info``; see the module docstring."""
    several = info.get("n_seeds", 1) > 1
    keys = [f"{label} (seed {s})" if several else label for label, s in zip(info["labels"], info["seeds"])]
    if info["kind"] == "unit":
        before, after = info["activation_before"], info["activation_after"]
        why = [f"activation {a:.4g} did not rise above {b:.4g} (its value at the zero image) in {steps} steps"
               + ("; a rectified unit that is 0 at the start has no gradient: name the layer before its ReLU"
                  if a == 0 == b else "") for a, b in zip(after, before)]
        return goal_record("each unit's activation rises above its value at the zero image", "activation", after,
                           [a > b for a, b in zip(after, before)], keys, why)
    names = info.get("class_names")

    def name(k: int) -> str:
        return names[k] if names and 0 <= k < len(names) else str(k)
    plain = info.get("plain_steps") or [0] * len(keys)
    why = [f"classified as {name(top)}, not {name(t)} (P({name(t)}) = {p:.4f}), after {steps} steps"
           + (f" and {more} without regularizers" if more else "") + "; raise steps"
           for top, t, p, more in zip(info["top1"], info["targets"], info["prob_after"], plain)]
    return goal_record("each image is classified as its class (top-1)", "P(class)", info["prob_after"],
                       [top == t for top, t in zip(info["top1"], info["targets"])], keys, why)


def _tempered_logprob(targets: torch.Tensor, temps: torch.Tensor) -> O.Objective:
    """T log softmax(S / T)_c per image (T (N,)): log P(c) of scores read at temperature T, in score units."""
    def fn(s: O.State) -> torch.Tensor:
        t = temps.to(device=s.logits.device, dtype=s.logits.dtype).reshape(-1, 1)   # (N, 1)
        logp = torch.log_softmax(s.logits / t, dim=1)                               # (N, K)
        return t[:, 0] * logp.gather(1, targets.to(s.logits.device).reshape(-1, 1)).squeeze(1)
    return O.Objective(fn, "T logP_T[per-image]", logits=True)


def unit_objective(layer: str, units: torch.Tensor, position=None) -> O.Objective:
    """Hidden unit ``units[i]`` of ``layer`` for image i: its mean over positions (``position=None``), its
    value at ``"center"`` or ``(row, col)``, or unit ``units[i]`` of a flat (N, D) layer."""
    if position is not None and position != "center" and not (
            isinstance(position, (tuple, list)) and len(position) == 2 and all(isinstance(v, int) for v in position)):
        raise expect("position", "None, 'center' or a (row, col) pair of ints", position)

    def fn(s: O.State) -> torch.Tensor:
        a = s.act(layer)                                                            # (N, C, H, W) or (N, D)
        u = units.to(a.device)
        if a.ndim < 2 or int(u.max()) >= a.shape[1]:
            raise InputError(f"unit must be in [0, {a.shape[1] - 1}] for layer {layer!r} ({a.shape[1]} channels); "
                             f"got {int(u.max())}")
        m = a[torch.arange(len(a), device=a.device), u]                             # (N,) or (N, H, W)
        if m.ndim == 1:
            return m
        if position is None:
            return m.reshape(len(m), -1).mean(dim=1)
        r, c = (m.shape[1] // 2, m.shape[2] // 2) if position == "center" else position
        if not (0 <= r < m.shape[1] and 0 <= c < m.shape[2]):
            raise InputError(f"position must be inside layer {layer!r}'s {m.shape[1]}x{m.shape[2]} map; got {(r, c)}")
        return m[:, r, c]
    return O.Objective(fn, f"{layer}:unit{'' if position is None else '@' + str(position)}", layers=[layer])


# ---- shared with fooling images ---------------------------------------------------------------------

def logits_of(model, x: torch.Tensor) -> torch.Tensor:
    """(N, K) class scores of ``x`` through :func:`~convlens.synthesis.optimize.evaluate` (eval mode, no grad)."""
    out = []

    def grab(s: O.State) -> torch.Tensor:
        out.append(s.logits.detach())
        return s.logits[:, 0]
    evaluate(model, O.Objective(grab, "scores", logits=True), x)
    return torch.cat(out)


def image_shape(model, run, input_shape) -> tuple[int, int, int]:
    """(C, H, W): ``input_shape`` when given, else the run's or the model's ``input_shape``."""
    from ..arch.grammar import check_input_shape

    shape = input_shape or (run.input_shape if run is not None else None) or getattr(model, "input_shape", None)
    if shape is None:
        raise InputError(f"input_shape must be given (C, H, W): this {type(model).__name__} does not say what "
                         "input size it takes; got None")
    return check_input_shape(shape)


def save_optimized(path: str | Path, result: OptimizedImage, *, schema: str) -> Path:
    """``path``.json (objective, steps, final values, mean/std, info) + ``path``.npz (images, history), atomically."""
    from ..io import atomic_write_json, atomic_write_npz

    path = Path(path).with_suffix("")
    atomic_write_npz(path.parent / f"{path.name}.npz", images=result.images.detach().float().cpu().numpy(),
                     history=np.asarray(result.history, dtype=np.float32))
    return atomic_write_json(path.parent / f"{path.name}.json", to_dict(result, schema=schema))


def to_dict(result: OptimizedImage, *, schema: str) -> dict:
    return {"schema": schema, "objective": result.objective, "steps": int(result.steps),
            "final": np.asarray(result.final, dtype=float).tolist(), "mean": result.mean, "std": result.std,
            "info": result.info}


def load_optimized(path: str | Path) -> OptimizedImage:
    """The :class:`OptimizedImage` that :func:`save_optimized` wrote (``path`` with or without suffix)."""
    from ..io import read_json, read_npz

    path = Path(path).with_suffix("")
    return from_saved(read_json(path.parent / f"{path.name}.json"), read_npz(path.parent / f"{path.name}.npz"))


def from_saved(d: dict, arrays: dict) -> OptimizedImage:
    """The inverse of :func:`save_optimized` from its JSON dict and npz arrays (for report sections). A
    result saved before goals were recorded gets its goal record from the numbers it kept."""
    info = dict(d.get("info") or {})
    if "goal" not in info:
        info.update(_old_goal(info, int(d["steps"])))
    return OptimizedImage(torch.from_numpy(np.asarray(arrays["images"])), np.asarray(arrays["history"]),
                          np.asarray(d["final"], dtype=float), d["objective"], int(d["steps"]),
                          tuple(d["mean"]) if d.get("mean") else None, tuple(d["std"]) if d.get("std") else None,
                          info)


def _old_goal(info: dict, steps: int) -> dict:
    """{"goal": ...} for a class model, unit model or fooling result saved without one ({} if unknown)."""
    if "confidence_goal" in info and "reached" in info:  # fooling images
        from .fooling import fooling_goal

        return {"goal": fooling_goal(info)}
    need = ("activation_before", "activation_after") if info.get("kind") == "unit" else ("top1", "prob_after")
    if info.get("kind") in ("class", "unit") and all(k in info for k in (*need, "labels", "seeds")):
        return {"goal": class_model_goal(info, steps)}
    return {}


# ---- helpers ---------------------------------------------------------------------------------------

def _space(run, shape, box, mean, std, device, dtype):
    """(zero image (1, C, 1, 1) or scalar tensor, box, display mean, display std) for a Run or a bare model."""
    if run is not None:
        c = torch.as_tensor(run.mean, dtype=dtype, device=device).reshape(-1)
        center = (c if c.numel() == shape[0] else c.expand(shape[0])).reshape(1, -1, 1, 1)
        return center, box if box is not None else (0.0, 1.0), None, None
    for name, v in (("mean", mean), ("std", std)):
        if v is not None and len(v) not in (1, shape[0]):
            raise expect(name, f"{shape[0]} numbers (one per channel)", v)
    return torch.zeros(1, 1, 1, 1, dtype=dtype, device=device), box, mean, std


def _flat(center: torch.Tensor):
    return center.reshape(-1) if center.numel() > 1 else float(center)


def _units(unit) -> list[int]:
    items = (unit.reshape(-1).tolist() if isinstance(unit, torch.Tensor)
             else list(unit) if isinstance(unit, (list, tuple)) else [unit])
    if not items or any(isinstance(u, bool) or not isinstance(u, int) or u < 0 for u in items):
        raise expect("unit", "a channel index (int >= 0) or a non-empty list of them, with layer=", unit)
    return items


def _floats(t: torch.Tensor) -> list[float]:
    return [float(v) for v in t.detach().float().cpu().tolist()]


def _check(l2, logprob, temperature, plain_steps, n_seeds, noise, jitter, blur, blur_every, clip_norm,
           clip_contribution, decay, optimizer) -> None:
    if l2 is not None and (isinstance(l2, bool) or not isinstance(l2, (int, float)) or l2 < 0):
        raise expect("l2", "a number >= 0 or None (relative to the score's gradient)", l2)
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))
                                    or not temperature > 0):
        raise expect("temperature", "a positive number or None (relative to the score's gradient)", temperature)
    if plain_steps is not None and (isinstance(plain_steps, bool) or not isinstance(plain_steps, int)
                                    or plain_steps < 0):
        raise expect("plain_steps", "an int >= 0 or None (as many as steps)", plain_steps)
    for name, v in (("logprob", logprob), ("noise", noise), ("blur", blur)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise expect(name, "a number >= 0", v)
    if isinstance(n_seeds, bool) or not isinstance(n_seeds, int) or n_seeds < 1:
        raise expect("n_seeds", "a positive int", n_seeds)
    if jitter is not None and (isinstance(jitter, bool) or not isinstance(jitter, int) or jitter < 0):
        raise expect("jitter", "an int >= 0 (pixels) or None", jitter)
    if isinstance(blur_every, bool) or not isinstance(blur_every, int) or blur_every < 1:
        raise expect("blur_every", "a positive int (steps)", blur_every)
    for name, v in (("clip_norm", clip_norm), ("clip_contribution", clip_contribution)):
        if v is not None and not 0 <= v < 100:
            raise expect(name, "a percentile in [0, 100) or None", v)
    if decay is not None and not 0 <= decay < 1:
        raise expect("decay", "a fraction in [0, 1) or None", decay)
    if optimizer not in OPTIMIZERS:
        raise expect("optimizer", "one of " + ", ".join(OPTIMIZERS), optimizer)
