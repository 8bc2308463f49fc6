"""convlens.occlusion (exact incremental and approximate) vs ``captum.attr.Occlusion``.

Cases (the issue's): VGG-16 with random weights (``convlens.create("vgg16")``), one 224x224 image
(uniform noise, seed 0), a 32x32 square of value 0 every 16 px (13 x 13 = 169 positions); and the demo
shapesnet (``runs/demo``, else random weights) on one 64x64 test image, a 16x16 square every 4 px
(169 positions). Both sides compute P(target) = softmax(model(x))[target] for the predicted class.

* Captum: ``Occlusion(f).attribute(x, sliding_window_shapes=(C, w, w), strides=(C, s, s), baselines=0,
  target=t, perturbations_per_eval=k)`` with ``f = softmax(model(.))``, for each k in ``PPE`` (one
  timed run each after a warm-up); the fastest k is the peer. Its per-position P(target) is read from
  the batches ``f`` sees (Captum evaluates positions column by column).
* convlens: ``occlusion(model, x, target=t, window=w, stride=s, baseline=0)`` -- exact incremental
  inference, including its one re-checked position -- and ``method="approximate"`` (default ``tau``;
  its error verified exactly on a sample covering the map, recomputed exactly when it cannot be kept
  within ``max_error=0.02``; ``used`` says which, with the bound and how many positions were verified).

``ratio`` = Captum's time / convlens's time (higher: convlens faster). ``max_abs_dP`` compares each
convlens map with Captum's per-position P(target); ``max_abs_dattr`` compares Captum's attribution
with the one rebuilt from the convlens map (mean of P(clean) - P(occluded) over the windows covering
each pixel). Threads: ``torch.set_num_threads(BENCH_THREADS)`` for both sides (env, default: torch's).
The pretrained EfficientNet-Lite0 (depthwise convs, SAME padding, ReLU6) on the coffee photo, through its
normalization, is the third case. Goals: VGG exact >= 4x, approximate >= 10x with max |dP| <= 0.02;
EfficientNet-Lite0 exact >= 3x.
"""
from __future__ import annotations

import os
import time

PPE = (16, 32, 64)


def _demo():
    from convlens import datasets

    from .demo_model import demo_model

    model, source = demo_model()
    return model, datasets.load("shapes", split="test", size=64, n=1).images[0], source


def _captum(model, x, target, window, stride):
    """(seconds, ppe, per-position P (R, Q), attribution (H, W)) of Captum's fastest perturbations_per_eval."""
    import torch
    from captum.attr import Occlusion

    c, h, w = x.shape
    rows, cols = (h - window) // stride + 1, (w - window) // stride + 1
    best = None
    for k in PPE:
        seen = []

        def f(batch):
            p = torch.softmax(model(batch), 1)
            seen.append(p[:, target].detach().double())
            return p

        occ = Occlusion(f)
        t = time.perf_counter()
        with torch.no_grad():
            attr = occ.attribute(x[None], sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                 baselines=0.0, target=target, perturbations_per_eval=k)
        seconds = time.perf_counter() - t
        p = torch.cat(seen)[1:].numpy().reshape(cols, rows).T                       # Captum goes column-major
        if best is None or seconds < best[0]:
            best = (seconds, k, p, attr[0, 0].double().numpy())
    return best


def _attribution(m, hw):
    """Captum's attribution rebuilt from an OcclusionMap: mean (P clean - P occluded) over covering windows."""
    import numpy as np

    total, count = np.zeros(hw), np.zeros(hw)
    for i, r in enumerate(m.rows):
        for j, c in enumerate(m.cols):
            total[r:r + m.window, c:c + m.window] += m.p_clean - m.p_target[i, j]
            count[r:r + m.window, c:c + m.window] += 1
    return np.where(count > 0, total / np.maximum(count, 1), 0.0)


def _case(name, model, x, window, stride, source):
    import numpy as np
    import torch

    from convlens import occlusion

    with torch.no_grad():
        target = int(model(x[None]).argmax())
    occlusion(model, x, target=target, window=window, stride=stride, check=0)  # warm-up (allocator, kernels)
    peer_s, ppe, p_peer, attr_peer = _captum(model, x, target, window, stride)
    rows = []
    for method in ("incremental", "approximate"):
        t = time.perf_counter()
        m = occlusion(model, x, target=target, window=window, stride=stride, baseline=0.0, method=method)
        ours_s = time.perf_counter() - t
        rows.append({"case": f"{name} {method}", "model": source, "positions": int(m.p_target.size),
                     "convlens_s": ours_s, "peer": f"captum Occlusion (ppe={ppe})", "peer_s": peer_s,
                     "ratio": peer_s / ours_s, "max_abs_dP": float(np.abs(m.p_target - p_peer).max()),
                     "max_abs_dattr": float(np.abs(_attribution(m, x.shape[-2:]) - attr_peer).max()),
                     "used": m.method + (f" (tau={m.tau}, {m.bound} bound {m.approx_error:.2g}, "
                                         f"{int(m.verified.sum())}/{m.p_target.size} verified)"
                                         if m.approx_error is not None else ""),
                     "threads": torch.get_num_threads(),
                     "goal": (">= 3x" if "efficientnet" in name and method == "incremental" else
                              "" if "vgg" not in name else ">= 4x" if method == "incremental" else
                              ">= 10x, |dP| <= 0.02")})
    return rows


def run() -> list[dict]:
    import torch

    import convlens

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
    rows = []
    model, image, source = _demo()
    rows += _case("shapesnet 64x64, window 16, stride 4", model, image, 16, 4, source)
    if os.environ.get("BENCH_OCCLUSION_VGG", "1") != "0":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            vgg = convlens.create("vgg16").eval()
            x = torch.rand(3, 224, 224)
        rows += _case("vgg16 224x224, window 32, stride 16", vgg, x, 32, 16, "random weights")
    if os.environ.get("BENCH_OCCLUSION_EFFNET", "1") != "0":
        import skimage.data

        run = convlens.pretrained()
        x = convlens.photo_batch(skimage.data.coffee())[0]  # the run's pixel model: [0, 1] photos
        rows += _case("efficientnet_lite0 224x224 (coffee photo), window 32, stride 16", run.pixel_model(), x, 32, 16,
                      "ImageNet weights")
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
