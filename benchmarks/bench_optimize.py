"""convlens.optimize (the image-optimization core behind class models, fooling images and inversion) vs a
bare PyTorch loop computing the same forward and backward passes.

Cases (ratio = convlens steps/s ÷ bare steps/s; goal >= 0.9x, i.e. objectives, regularizers and
transforms cost <= 10%):

* **class model, demo** -- ``runs/demo`` (shapesnet 3x64x64; random weights when absent), a batch of 10
  images (one per class), ``class_model``'s default 100 steps, ``class_model``'s objective
  S_c + 3 log P(c) - λ||x - mean||², jitter, a Gaussian blur every 2 steps, Adam, box projection. Bare: ``x.requires_grad_()``; ``model(x)``;
  ``score.sum().backward()``; ``x += lr * grad`` -- a forward and a backward of the same model and input.
* **class model, VGG-16** -- ``convlens.create("vgg16")`` (random weights) at 3x224x224, batch 1, same
  objective and regularizers, 6 steps (3 pairs: about 15 s on 2 cores).
* **inversion, demo** -- ``feature_match`` at ``conv3`` (Mahendran & Vedaldi), alone and with the TV and
  α-norm priors, SGD with momentum and normalized steps, ``invert``'s default 200 steps; the core
  stops the forward after conv3. Bare:
  a ``nn.Sequential`` of the layers up to conv3, the same relative squared error, backward, a plain
  gradient step (no priors: with them, the row measures what the priors themselves cost next to a
  forward that stops early). The step is one that keeps the image finite: on NaN images (a diverged
  loop) max-pooling runs twice as fast, so both sides' images are checked to be finite.

Both sides use the same thread count, images and step count, and compute no parameter gradients (the
bare loop runs with ``requires_grad`` off, as ``optimize`` does). **Steps per second** (the goal) is
each side's steady rate: both note the time at the end of every step (``optimize`` through its
``stop`` callback), and a side's seconds per step is the time from its first step's end to its last
step's end over the steps between. The **whole call** ratio also counts what happens once per call:
``optimize``'s setup, hooks, and the extra forward that scores the returned image (on VGG-16 a
no-grad forward is half a step, 8% of 6 steps). After a warm-up, ``REPEATS`` pairs of runs, each
side once per pair; the row shows the pair whose steps/s ratio is the median (a pair runs back to
back, so the machine's drift affects both of its runs alike). The process keeps its C heap
(``python -m benchmarks`` calls :func:`convlens.keep_heap`, as the ``convlens`` command does).
"""
from __future__ import annotations

import time

from .demo_model import demo_model
from .timing import median_pair

REPEATS = 21
THREADS = 2


def _demo():
    """(the demo pixel model, its mean pixel (C,), a label)."""
    model, source = demo_model()
    return model, model.normalize.mean.reshape(-1).clone(), source


def _time(ours, bare, model, repeats: int = REPEATS) -> dict:
    """Time ``ours()`` against ``bare()``, each returning (images, the time at the end of each step); the
    bare loop runs with the model's parameters frozen, as ``optimize`` runs it (no parameter gradients:
    only the image's). The row's timing columns."""
    import torch

    flags = [p.requires_grad for p in model.parameters()]

    def frozen_bare():
        for p in model.parameters():
            p.requires_grad_(False)
        try:
            return bare()
        finally:
            for p, flag in zip(model.parameters(), flags):
                p.requires_grad_(flag)

    for side, (images, _) in (("convlens", ours()), ("bare loop", frozen_bare())):  # warm-up
        # a diverged loop computes on NaN, which some kernels (max-pooling) run twice as fast
        if not torch.isfinite(images).all():
            raise RuntimeError(f"the {side}'s images are not finite: its timing would not be comparable")

    def per_step(side):
        def run():
            stamps = side()[1]
            return (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        return run

    ours_s, bare_s, ours_step, bare_step = median_pair(per_step(ours), per_step(frozen_bare), repeats)
    return {"convlens_steps_s": 1 / ours_step, "peer_steps_s": 1 / bare_step, "ratio": bare_step / ours_step,
            "convlens_s": ours_s, "peer_s": bare_s, "whole_call_ratio": bare_s / ours_s}


def _stamped(stamps: list):
    """An ``optimize`` stop callback that notes the time at the end of each step and never stops."""
    return lambda state, value: stamps.append(time.perf_counter())


def _class_model_case(name, model, mean, shape, n, steps, source, repeats=REPEATS):
    import torch

    from convlens.synthesis import objectives as O
    from convlens.synthesis.optimize import blur, jitter, optimize

    targets = torch.arange(n) % 10
    center = mean.reshape(1, -1, 1, 1) if mean is not None else torch.zeros(1, 1, 1, 1)
    init = center.expand(n, *shape).clone() + 0.02 * torch.randn(n, *shape)      # (N, C, H, W)
    box = (0.0, 1.0) if mean is not None else None
    objective = O.class_score(targets) + 3.0 * O.class_logprob(targets) + 0.05 * O.l2(
        mean if mean is not None else 0.0)

    def ours():
        stamps = []
        images = optimize(model, objective, init, steps=steps, lr=0.05, optimizer="adam", box=box,
                          transforms=[jitter(max(1, shape[1] // 16))], every=[blur(0.8, 2)],
                          stop=_stamped(stamps)).images
        return images, stamps

    def bare():
        x, stamps = init.clone().requires_grad_(True), []
        for _ in range(steps):
            score = model(x)[torch.arange(n), targets].sum()
            x.grad = None
            score.backward()
            with torch.no_grad():
                x += 0.05 * x.grad
            stamps.append(time.perf_counter())
        return x, stamps

    return {"case": name, "model": source, "input": f"{n}x{'x'.join(map(str, shape))}", "steps": steps,
            "peer": "bare forward+backward loop", **_time(ours, bare, model, repeats), "goal": ">= 0.9x"}


def _inversion_case(model, source, priors: bool, steps=200, n=4):
    import torch
    from torch import nn

    from convlens.synthesis import objectives as O
    from convlens.synthesis.optimize import optimize

    net = model.net
    cut = list(net.features._modules).index("conv3") + 1
    prefix = nn.Sequential(model.normalize, *list(net.features)[:cut]).eval()   # the layers up to conv3
    torch.manual_seed(0)
    x0 = torch.rand(n, 3, 64, 64)
    with torch.no_grad():
        target = prefix(x0)                                                         # (N, 128, 8, 8)
    init = torch.rand(n, 3, 64, 64)
    objective = O.feature_match("conv3", target)
    if priors:
        objective = objective + 1e-3 * O.tv() + 1e-5 * O.alpha_norm(6.0, 0.5)

    def ours():
        stamps = []
        images = optimize(model, objective, init, steps=steps, lr=0.02, optimizer="sgd", normalize_grad=True,
                          box=(0.0, 1.0), stop=_stamped(stamps)).images
        return images, stamps

    norm = (target ** 2).flatten(1).sum(1).reshape(-1, 1, 1, 1)                   # ||Φ0||² per image

    def bare():
        x, stamps = init.clone().requires_grad_(True), []
        for _ in range(steps):
            loss = (((prefix(x) - target) ** 2) / norm).sum()
            x.grad = None
            loss.backward()
            with torch.no_grad():
                x -= 10.0 * x.grad
            stamps.append(time.perf_counter())
        return x, stamps

    case = "inversion: feature_match(conv3)" + (" + TV + alpha priors" if priors else "")
    return {"case": case, "model": source, "input": f"{n}x3x64x64", "steps": steps,
            "peer": "bare forward (to conv3) + backward loop", **_time(ours, bare, prefix), "goal": ">= 0.9x"}


def run() -> list[dict]:
    import torch

    import convlens

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        torch.manual_seed(0)
        model, mean, source = _demo()
        rows = [_class_model_case("class model + jitter + blur", model, mean, (3, 64, 64), 10, 100, source)]
        rows += [_inversion_case(model, source, priors=False), _inversion_case(model, source, priors=True)]
        vgg = convlens.create("vgg16").eval()
        rows.append(_class_model_case("class model + jitter + blur", vgg, None, (3, 224, 224), 1, 6,
                                      "vgg16 (random weights)", repeats=3))
        return rows
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    for row in run():
        print(row)
