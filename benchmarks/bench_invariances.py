"""convlens.hessian_invariances: the top-8 invariances of a demo unit at 64x64 from Hessian-vector products
and Lanczos, against forming the full Hessian (estimated: it is never formed).

Case: unit 0 of ``conv4`` (its mean over positions) of ``runs/demo`` (shapesnet 3x64x64: 12,288 input
dimensions; random weights when absent), at the best of ``optimal_stimuli(..., n_inits=2, steps=100)``
(setup, not timed), on the softplus copy (β = 10). Timed (``convlens_s``): building the gradient's graph and
Lanczos (``eigsh``, ``which="LA"``, k = 8, tol 1e-3) -- ``info["eigen_seconds"]`` of a call with
``n_least=0, refine=0``; ``hvps``: the Hessian-vector products it took. The whole call (with 2 least
invariant directions, 50 refining steps, the angle search and the 77 frames' activations) is the second row.

Peer (``peer_s``, an estimate): forming the full Hessian and diagonalizing it -- D = 12,288 Hessian-vector
products, timed as D / 64 batched products of 64 (``torch.autograd.grad(..., is_grads_batched=True)``, the
way ``torch.autograd.functional.hessian`` vectorizes them), plus a dense ``numpy.linalg.eigh`` of the D x D
matrix, timed on a 1,536 x 1,536 one and scaled by (D / 1536)³; the matrix alone takes D² x 8 bytes
(1.2 GB in float64). ``ratio`` = peer_s / convlens_s (how many times longer the full Hessian would take).
Goal: the top-8 invariances in under 30 s on this machine. Each row at 1 and at 2 torch threads (batch-1
products are many small ops: on a shared 2-core machine one thread is often faster), median of
``REPEATS``. Timings on a shared machine are noisy.
"""
from __future__ import annotations

import statistics
import time

from .demo_model import ROOT, demo_model

REPEATS = 3
THREADS = (1, 2)  # one thread is often the faster on a busy 2-core machine (tiny batch-1 ops)
BATCH = 64


def _run():
    """(a Run or pixel model of the demo, a label)."""
    import convlens

    demo = ROOT / "runs" / "demo"
    if (demo / "run.json").exists():
        return convlens.load_run(demo), "runs/demo (shapesnet)"
    model, label = demo_model()
    return model, label


def _full_hessian_estimate(model, objective, x, sphere) -> tuple[float, float]:
    """(seconds for D Hessian-vector products in batches of 64, seconds for a dense eigh of D x D), estimated."""
    import numpy as np
    import torch

    from convlens.synthesis.optimize import _Forward, _frozen
    from convlens.taps import eval_mode

    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model), _frozen(model), _Forward(model, objective) as forward:
        value = objective(forward(z, z))
        (g,) = torch.autograd.grad(value.sum(), z, create_graph=True)
    d = z.numel()
    basis = torch.zeros(BATCH, *z.shape, dtype=z.dtype)
    for i in range(BATCH):
        basis.view(BATCH, -1)[i, i] = 1.0                                             # 64 unit vectors
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        torch.autograd.grad(g, z, grad_outputs=basis, retain_graph=True, is_grads_batched=True)
        times.append(time.perf_counter() - t)
    hvps = statistics.median(times) * d / BATCH
    m = 1536
    a = np.random.default_rng(0).standard_normal((m, m))
    a = a + a.T
    t = time.perf_counter()
    np.linalg.eigh(a)
    return hvps, (time.perf_counter() - t) * (d / m) ** 3


def run() -> list[dict]:
    import torch

    import convlens
    from convlens.synthesis.class_model import unit_objective
    from convlens.synthesis.smooth import Smoothed
    from convlens.training.runs import model_and_run

    before = torch.get_num_threads()
    rows = []
    try:
        model, source = _run()
        torch.set_num_threads(THREADS[-1])
        stimuli = convlens.optimal_stimuli(model, "conv4", 0, n_inits=2, steps=100)
        net, _ = model_and_run(model)
        x = stimuli.images[stimuli.best:stimuli.best + 1]
        unit = unit_objective("conv4", torch.zeros(1, dtype=torch.long))
        for threads in THREADS:
            torch.set_num_threads(threads)
            eig, hvps = [], []
            for _ in range(REPEATS):
                res = convlens.hessian_invariances(model, at=stimuli, k=8, n_least=0, refine=0, n_frames=3)
                eig.append(res.info["eigen_seconds"])
                hvps.append(res.info["hvps"])
            t = time.perf_counter()
            whole = convlens.hessian_invariances(model, at=stimuli)
            whole_s = time.perf_counter() - t
            full_hvps, full_eigh = _full_hessian_estimate(Smoothed(net, 10.0, depthwise_shifts=True), unit, x,
                                                          stimuli.sphere)
            ours, d = statistics.median(eig), res.info["dimensions"]
            peer = full_hvps + full_eigh
            rows += [
                {"case": "top-8 invariances (Lanczos, HVPs)", "model": source, "input": "1x3x64x64", "threads": threads,
                 "dims": d, "hvps": int(statistics.median(hvps)), "convlens_s": ours,
                 "peer": f"full Hessian ({d:,} HVPs, est. {full_hvps:.0f} s) + dense eigh (est. {full_eigh:.0f} s)",
                 "peer_s": peer, "ratio": peer / ours, "goal": "< 30 s"},
                {"case": "the whole call (k=8, 2 least invariant, refine 50, frames)", "model": source,
                 "input": "1x3x64x64", "threads": threads, "dims": d, "hvps": whole.info["hvps"],
                 "convlens_s": whole_s, "goal": ""},
            ]
        return rows
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":
    for row in run():
        print(row)
