"""convlens.integrated_gradients / smoothgrad vs Captum, and convlens.grad_cam vs a bare forward+backward.

Models: the demo run (``runs/demo``, shapesnet, 3x64x64; random weights when it was never built) on
``SHAPES_BATCH`` test images, and the pretrained EfficientNet-Lite0 on ``PHOTOS`` photos at 224x224. Every side
gets the same images, targets, model in eval mode and ``torch.set_num_threads(THREADS)`` (``BENCH_THREADS``,
default 2).

* Integrated Gradients, ``STEPS`` steps, baseline 0, Gauss-Legendre (Captum's default rule): convlens
  ``integrated_gradients(model, x, t, steps=STEPS, batch_size=B)`` vs Captum 0.9
  ``IntegratedGradients(model).attribute(x, target=t, n_steps=STEPS, internal_batch_size=B)``: the same points
  in the same passes of B rows. convlens also runs the images and baselines once, no gradient, for the scores
  it reports (completeness); Captum, without ``return_convergence_delta``, does not;
* SmoothGrad, ``SAMPLES`` samples, of the plain gradient: ``smoothgrad(..., method="gradient", n=SAMPLES,
  batch_size=B)`` vs ``NoiseTunnel(Saliency(model)).attribute(x, nt_type="smoothgrad", nt_samples=SAMPLES,
  nt_samples_batch_size=B // N, stdevs=0.15, target=t, abs=False)``: the same rows per pass, and the same
  noise (both seeded alike; the images span [0, 1], so the relative 0.15 is Captum's absolute 0.15); convlens
  also runs the clean images once, no gradient (the targets are checked against the scores' width);
* Grad-CAM at the default layer vs bare: ``x.requires_grad_()``, ``model(x)``, the target scores summed,
  ``torch.autograd.grad(.., x)`` (what every input-gradient method costs at least); Captum's ``LayerGradCam``
  at the same layer for reference.

``B`` (rows per pass) is ``BATCH[case]``, the same for both sides. How each side runs its passes is its own:
convlens lays the rows out channels-last and differentiates eval-mode batch norm as an affine map
(``units/attribution.py``); Captum runs the model as given. ``max_diff`` is the largest difference between
the two sides' maps relative to the largest value of Captum's (float32 rounding: the layouts sum in different
orders). Time: ``REPEATS`` runs of each side after one warm-up each, alternating and swapping which side goes
first every run (ABBA), so drift of a shared machine affects both; ``convlens_s`` and ``peer_s`` are each
side's median (``vs_captum`` their ratio), ``speedup`` the median of the runs' ratios (Captum's time /
convlens's time in the same run, steadier on a busy machine than the ratio of the medians) and
``speedup_range`` their range. Goals: IG and SmoothGrad at least 1.2x faster than Captum (``speedup`` >= 1.2),
Grad-CAM ``ratio`` <= 1.05x bare.
"""
from __future__ import annotations

import os
import statistics
import time
import warnings

from .bench_backprop import _median_times
from .demo_model import demo_model

THREADS = int(os.environ.get("BENCH_THREADS", "2"))
SHAPES_BATCH = 8
PHOTOS = 2
STEPS = SAMPLES = 50
BATCH = {"shapes": 64, "efficientnet_lite0": 20}
REPEATS = {"shapes": 15, "efficientnet_lite0": 3}


def _cases():
    import skimage.data
    import torch

    import convlens
    from convlens import datasets

    model, source = demo_model()
    data = datasets.load("shapes", split="test", n=SHAPES_BATCH)
    x = data.images.clone()
    x.view(len(x), -1)[:, 0], x.view(len(x), -1)[:, 1] = 0.0, 1.0   # every image spans [0, 1]: one noise std
    yield "shapes", model, source, x, data.labels
    run = convlens.pretrained()
    photos = convlens.photo_batch([skimage.data.coffee(), skimage.data.chelsea()][:PHOTOS])
    photos.view(PHOTOS, -1)[:, 0], photos.view(PHOTOS, -1)[:, 1] = 0.0, 1.0
    yield "efficientnet_lite0", run.pixel_model().eval(), "efficientnet_lite0 (ImageNet weights)", photos, \
        torch.tensor([967, 281][:PHOTOS])


def run() -> list[dict]:
    import torch
    from captum.attr import IntegratedGradients, LayerGradCam, NoiseTunnel, Saliency

    import convlens
    from convlens.units.gradcam import default_layer

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    rows = []
    for case, model, source, x, t in _cases():
        b, n = BATCH[case], len(x)
        layer = default_layer(model, x)
        module = convlens.resolve_layer(model, layer)[1]

        def bare():
            xx = x.detach().requires_grad_()
            torch.autograd.grad(model(xx).gather(1, t[:, None]).sum(), xx)

        def captum_sg():
            torch.manual_seed(0)
            return NoiseTunnel(Saliency(model)).attribute(x.clone(), nt_type="smoothgrad", nt_samples=SAMPLES,
                                                          nt_samples_batch_size=max(1, b // n), stdevs=0.15, target=t,
                                                          abs=False)

        sides = {
            f"integrated gradients, {STEPS} steps": (
                lambda: convlens.integrated_gradients(model, x, t, steps=STEPS, batch_size=b),
                lambda: IntegratedGradients(model).attribute(x.clone(), target=t, n_steps=STEPS, internal_batch_size=b),
                "captum IntegratedGradients"),
            f"smoothgrad, {SAMPLES} samples": (
                lambda: convlens.smoothgrad(model, x, t, method="gradient", n=SAMPLES, noise=0.15, seed=0, batch_size=b),
                captum_sg, "captum NoiseTunnel(Saliency)"),
        }
        for method, (ours, captum, peer) in sides.items():
            got, want = _maps(ours()), captum()  # the warm-up, and the two maps agree
            ours_s, peer_s = _abba(ours, captum, REPEATS[case])
            ratios = [p / o for o, p in zip(ours_s, peer_s)]
            rows.append({"case": f"{method} {case} {tuple(x.shape)}", "model": source, "threads": THREADS,
                         "rows_per_pass": b, "convlens_s": statistics.median(ours_s), "peer": peer,
                         "peer_s": statistics.median(peer_s),
                         "vs_captum": statistics.median(ours_s) / statistics.median(peer_s),
                         "speedup": statistics.median(ratios),
                         "speedup_range": f"{min(ratios):.2f}-{max(ratios):.2f}",
                         "max_diff": float((got - want).abs().max() / want.abs().max()), "goal": "speedup >= 1.2x"})
        s = _median_times({"bare": bare, "convlens": lambda: convlens.grad_cam(model, x, t),
                           "captum": lambda: LayerGradCam(model, module).attribute(x.clone(), target=t,
                                                                                  relu_attributions=True)},
                          REPEATS[case])
        rows.append({"case": f"grad-cam {case} {tuple(x.shape)} at {layer}", "model": source, "threads": THREADS,
                     "bare_s": s["bare"], "convlens_s": s["convlens"], "peer": "captum LayerGradCam",
                     "peer_s": s["captum"], "ratio": s["convlens"] / s["bare"], "vs_captum": s["convlens"] / s["captum"],
                     "goal": "ratio <= 1.05x"})
    return rows


def _maps(result):
    return getattr(result, "attributions", result)


def _abba(ours, peer, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``repeats`` runs of each side (no warm-up here), alternating, the first side swapped each run."""
    times = {ours: [], peer: []}
    for i in range(repeats):
        for fn in (ours, peer) if i % 2 == 0 else (peer, ours):
            t = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - t)
    return times[ours], times[peer]


if __name__ == "__main__":
    for row in run():
        print(row)
