"""convlens.saliency / deconvnet / guided_backprop vs a bare forward+backward and vs Captum.

Models: the demo run (``runs/demo``, shapesnet on shapes, 3x64x64) when it exists, else a shapesnet
with random weights, at batch ``SHAPES_BATCH``; and ``convlens.create("vgg16")`` with random weights
at 224x224, batch ``VGG_BATCH``; and the pretrained EfficientNet-Lite0 on 8 photos (4 and their mirror
images) at 224x224 (Captum's Deconvolution/GuidedBackprop hook nn.ReLU modules only, so on its ReLU6
they time a plain gradient: the time is comparable, the maps are not). Every side gets the same images, per-image targets and model in eval
mode, and ``torch.set_num_threads(THREADS)``.

* bare: ``x.requires_grad_()``, ``model(x)``, the target scores summed, ``torch.autograd.grad(.., x)``
  -- the least any input-gradient method costs (the same pruned backward: no weight gradients);
* convlens: the public call (input validation, eval-mode guard, the ReLU ``TorchFunctionMode`` for
  deconvnet/guided, ``abs().amax(1)`` for saliency);
* Captum 0.9: ``Saliency(model).attribute(x, target)`` (then the same max over channels),
  ``Deconvolution`` / ``GuidedBackprop`` (backward hooks on nn.ReLU modules; both models use them).

Time: median wall time of ``REPEATS`` runs after one warm-up each, the three sides alternating so
drift affects all. Goal: ``ratio`` (convlens / bare) <= 1.05x and ``vs_captum`` <= 1.0x.
"""
from __future__ import annotations

import statistics
import time
import warnings

from .demo_model import demo_model

THREADS = 2
SHAPES_BATCH = 32
VGG_BATCH = 2
REPEATS = {"shapes": 7, "vgg16": 3, "efficientnet_lite0": 5}


def _cases():
    import torch

    import skimage.data

    import convlens
    from convlens import datasets

    model, source = demo_model()
    data = datasets.load("shapes", split="test", n=SHAPES_BATCH)
    yield "shapes", model, source, data.images, data.labels
    torch.manual_seed(0)
    vgg = convlens.create("vgg16").eval()
    yield "vgg16", vgg, "vgg16 (random weights)", torch.rand(VGG_BATCH, 3, 224, 224), torch.arange(VGG_BATCH) * 7
    run = convlens.pretrained()
    photos = convlens.photo_batch([skimage.data.coffee(), skimage.data.chelsea(), skimage.data.rocket(),
                                   skimage.data.astronaut()])
    x = torch.cat([photos, photos.flip(3)])                                       # (8, 3, 224, 224)
    yield "efficientnet_lite0", run.pixel_model(), "efficientnet_lite0 (ImageNet weights)", x, \
        torch.tensor([967, 281, 657, 834] * 2)


def _median_times(fns: dict, repeats: int) -> dict:
    for fn in fns.values():
        fn()  # warm-up
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def run() -> list[dict]:
    import torch
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    import convlens

    torch.set_num_threads(THREADS)
    warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
    warnings.filterwarnings("ignore", message="Input Tensor 0 did not already require gradients")
    rows = []
    for case, model, source, x, t in _cases():
        def bare():
            xx = x.detach().requires_grad_()
            torch.autograd.grad(model(xx).gather(1, t[:, None]).sum(), xx)

        sides = {
            "saliency": (lambda: convlens.saliency(model, x, t),
                         lambda: Saliency(model).attribute(x.clone(), target=t).amax(1)),
            "deconvnet": (lambda: convlens.deconvnet(model, x, t),
                          lambda: Deconvolution(model).attribute(x.clone(), target=t)),
            "guided": (lambda: convlens.guided_backprop(model, x, t),
                       lambda: GuidedBackprop(model).attribute(x.clone(), target=t)),
        }
        for method, (ours, captum) in sides.items():
            s = _median_times({"bare": bare, "convlens": ours, "captum": captum}, REPEATS[case])
            rows.append({"case": f"{method} {case} {tuple(x.shape)}", "model": source, "threads": THREADS,
                         "bare_s": s["bare"], "convlens_s": s["convlens"], "peer": "captum", "peer_s": s["captum"],
                         "ratio": s["convlens"] / s["bare"], "vs_captum": s["convlens"] / s["captum"],
                         "goal": "ratio <= 1.05x, vs_captum <= 1x"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
