"""convlens.occlusion (exact incremental, approximate + adaptive drill-down) vs ``captum.attr.Occlusion`` (issue 20).

Cases: VGG-16 with random weights (``_vgg16``: torchvision's initialization, the last layer scaled to P = 0.7)
on the coffee photo at 224x224, a 32x32 square of value 0 every 8 px (25 x 25 = 625 positions): exact, and
approximate with drill-down (``DRILL``, default coarse stride 32); the pretrained EfficientNet-Lite0
(``convlens.pretrained()``, depthwise convs, SAME padding) on the coffee photo, 224x224, window 32, stride 8:
exact and approximate (plain ``tau``) and approximate + drill-down; the demo shapesnet (``runs/demo``, else
random weights) on one 64x64 test image, window 16, stride 4 (169 positions): exact. Both sides compute P(target) =
softmax(model(x))[target] for the predicted class, on the same model instance.

* Captum: ``Occlusion(f).attribute(x, sliding_window_shapes=(C, w, w), strides=(C, s, s), baselines=0, target=t,
  perturbations_per_eval=k)`` with ``f = softmax(model(.))``. **Its best k**: every k of ``PPE`` (1 ... 64) is timed
  per position on Captum's first ``PPE_TRIAL`` positions (at least one batch of k; the run is stopped there by an
  exception from ``f``); the fastest k per position is then timed on **all** positions, and that full run is the
  time reported (no extrapolation). Its per-position P(target) is read from the batches ``f`` sees.
* convlens: ``occlusion(model, x, target=t, window=w, stride=s, baseline=0, method=...)``; exact includes its one
  re-checked full forward; approximate includes its exact verification.

Printed per row: ``ratio`` = Captum's time / convlens's (higher: convlens faster); ``flop_bound`` = the multiply-adds
of a full forward over those the exact replay must recompute per position (the patches of :mod:`convlens.units.
incremental_plan`, whole maps after the first non-local op): the ratio exact replay could reach at equal
efficiency; ``max_abs_dP`` against Captum's map; for approximate rows ``ssim`` (skimage, data range 1, Wang et al.'s
Gaussian window) of the map against the exact map, ``ssim_reported`` (what the result estimated), ``top5``:
whether the 5 positions where P(target) drops most are the same as the exact map's; peak memory: the largest
resident set (``VmHWM`` of ``/proc/self/status``) of a fresh subprocess running only that side (model
built, then convlens's whole map, or Captum at its best ppe on the trials' subset of positions: its peak is one
batch of ppe occluded images, whatever the number of positions) -- ``BENCH_MEMORY=0`` skips it.
Threads: ``torch.set_num_threads(BENCH_THREADS)`` for both sides.
Goals (issue 20): VGG exact >= 6x, approximate + drill-down >= 40x at SSIM >= 0.9 and the same 5 most sensitive
positions; EfficientNet-Lite0 exact >= 3x, approximate >= 15x.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

PPE = (1, 2, 4, 8, 16, 32, 64)
PPE_TRIAL = 32  # positions each perturbations_per_eval is timed on (at least one batch) before the best's full run
DRILL = dict(method="approximate", drill_down=0.05)  # the drill-down rows' options (tau 1: its default with drill-down)


def _threads():
    import torch

    if os.environ.get("BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_THREADS"]))


def _demo():
    from convlens import datasets

    from .demo_model import demo_model

    model, source = demo_model()
    return model, datasets.load("shapes", split="test", size=64, n=1).images[0], source


def _vgg16():
    """VGG-16 (``convlens.create("vgg16")``) with random weights drawn as torchvision initializes VGG (Kaiming
    normal, fan out, for convolutions; N(0, 0.01) for linear layers; zero biases; seed 0), its last layer scaled
    so that the top class has P = 0.7 on the coffee photo (ImageNet-normalized), which it takes: no ImageNet
    VGG-16 weights can be had here, and with PyTorch's default initialization every logit is ~0.01, so P(target)
    = 1/1000 everywhere and occlusion moves it by 1e-10 (a flat map, nothing to drill into)."""
    import skimage.data
    import torch
    from torch import nn

    import convlens

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = convlens.create("vgg16").eval()
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)
    mean, std = torch.tensor([0.485, 0.456, 0.406])[:, None, None], torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    x = (convlens.photo_batch(skimage.data.coffee())[0] - mean) / std
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        z = model(x[None])[0]
        lo, hi = 1.0, 1e4  # the scale that makes max softmax(scale x z) = 0.7, by bisection
        for _ in range(60):
            mid = (lo * hi) ** 0.5
            lo, hi = (mid, hi) if float(torch.softmax(mid * z, 0).max()) < 0.7 else (lo, mid)
        last.weight.mul_(mid)
        last.bias.mul_(mid)
    return model, x, "random weights (torchvision's init, top class P = 0.7)"


def _model(name):
    """(model, image (C, H, W), source) of a case, built the same way in every process."""
    import torch

    import convlens

    if name == "vgg16":
        return _vgg16()
    if name == "efficientnet_lite0":
        import skimage.data

        run = convlens.pretrained()
        return run.pixel_model(), convlens.photo_batch(skimage.data.coffee())[0], "ImageNet weights"
    return _demo()


class _Stop(Exception):
    """Raised inside Captum's forward once a trial has seen its positions."""


def _captum_run(model, x, target, window, stride, k, limit=None):
    """(seconds, per-position P (R, Q)) of one Captum run on ``x``; with ``limit``, (seconds per position, None)
    of a run stopped once ``limit`` positions were evaluated (the whole last batch counts)."""
    import torch
    from captum.attr import Occlusion

    c, h, w = x.shape
    rows, cols = (h - window) // stride + 1, (w - window) // stride + 1
    seen = []

    def f(batch):
        p = torch.softmax(model(batch), 1)
        seen.append(p[:, target].detach().double())
        if limit is not None and sum(len(s) for s in seen) > limit:  # the first call is the unoccluded image
            raise _Stop
        return p

    t = time.perf_counter()
    try:
        with torch.no_grad():
            Occlusion(f).attribute(x[None], sliding_window_shapes=(c, window, window), strides=(c, stride, stride),
                                   baselines=0.0, target=target, perturbations_per_eval=k)
    except _Stop:
        return (time.perf_counter() - t) / (sum(len(s) for s in seen) - 1), None
    seconds = time.perf_counter() - t
    return seconds, torch.cat(seen)[1:].numpy().reshape(cols, rows).T                  # Captum goes column-major


def _captum(model, x, target, window, stride):
    """(seconds on all positions, best ppe, per-position P (R, Q), {ppe: seconds per position in its trial})."""
    trials = {k: _captum_run(model, x, target, window, stride, k, PPE_TRIAL)[0] for k in PPE}
    best = min(trials, key=trials.get)
    seconds, p = _captum_run(model, x, target, window, stride, best)
    return seconds, best, p, trials


def flop_bound(model, x, window, stride) -> float:
    """Multiply-adds of a full forward / those the exact replay recomputes per position (module docstring)."""
    import numpy as np
    import torch

    from convlens.units.incremental import Incremental
    from convlens.units.opgraph import record

    with torch.no_grad():
        g = record(model, x[None])
    h, w = x.shape[-2:]
    rows, cols = np.arange(0, h - window + 1, stride), np.arange(0, w - window + 1, stride)
    eng = Incremental(g, np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2), window)
    full = replay = 0.0
    for i, op in enumerate(g.ops):
        out = g.nodes[op.outputs[0]].base if op.outputs else None
        if out is None or op.name not in ("conv2d", "linear"):
            continue
        weight = next(g.nodes[leaf.node].base if hasattr(leaf, "node") else leaf for leaf in op.leaves[1:2])
        per_out = weight[0].numel()                                        # MACs per output element
        full += out.numel() * per_out
        if not op.dynamic:
            continue
        region = eng.plan.regions.get(op.outputs[0])
        if region is None or region.full or out.dim() != 4:
            replay += out.numel() * per_out
        else:
            replay += out.shape[1] * region.size[0] * region.size[1] * per_out
    return full / replay


def _ours(model, x, window, stride, options):
    """(seconds, OcclusionMap) of one convlens map of ``model`` (the one Captum ran on), in this process."""
    import torch

    from convlens import occlusion

    with torch.no_grad():
        target = int(model(x[None]).argmax())
    t = time.perf_counter()
    m = occlusion(model, x, target=target, window=window, stride=stride, baseline=0.0, **options)
    return time.perf_counter() - t, m


def _peak_mb(side, name, window, stride, options=None) -> float | None:
    """Peak resident set (MB) of a fresh process computing one side's map (module docstring)."""
    if os.environ.get("BENCH_MEMORY", "1") == "0":
        return None
    code = ("from benchmarks import bench_occlusion as b; b._threads(); "
            f"b._child({side!r}, {name!r}, {window}, {stride}, {json.dumps(options or {})!r}); "
            "print(b._peak_rss_mb())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return float(out.stdout.strip().splitlines()[-1])


def _peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM, MB). Not ``ru_maxrss``: Linux carries that over ``exec`` from the
    parent, so a child of a large benchmark process would report the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) / 1024


def _child(side, name, window, stride, options_json):
    import torch

    model, x, _ = _model(name)
    with torch.no_grad():
        target = int(model(x[None]).argmax())
    if side == "captum":  # stopped as the ppe trials are: its peak is that of one batch of ppe images
        _captum_run(model, x, target, window, stride, json.loads(options_json).get("ppe", 16), PPE_TRIAL)
    else:
        _ours(model, x, window, stride, json.loads(options_json))


def _top5(p, p_clean):
    import numpy as np

    return set(np.argsort(-(p_clean - p).reshape(-1), kind="stable")[:5].tolist())


def _case(label, name, window, stride, methods):
    import numpy as np
    import torch
    from skimage.metrics import structural_similarity

    from convlens import occlusion

    model, x, source = _model(name)
    with torch.no_grad():
        target = int(model(x[None]).argmax())
    occlusion(model, x, target=target, window=window, stride=(window // 2), check=0)  # warm-up (allocator, kernels)
    peer_s, ppe, p_peer, trials = _captum(model, x, target, window, stride)
    peer_mb = _peak_mb("captum", name, window, stride, {"ppe": ppe})
    bound = flop_bound(model, x, window, stride)
    rows, exact = [], None
    for tag, options in methods:
        ours_s, m = _ours(model, x, window, stride, options)
        if tag == "exact":
            exact = m
        row = {"case": f"{label} {tag}", "model": source, "positions": int(m.p_target.size), "convlens_s": ours_s,
               "peer": f"captum Occlusion (best ppe={ppe})", "peer_s": peer_s, "ratio": peer_s / ours_s,
               "flop_bound": bound, "max_abs_dP": float(np.abs(m.p_target - p_peer).max()),
               "used": m.method + (f" tau={m.tau}" if m.tau is not None else "")
               + (f", drill-down {m.drill_down} (coarse {m.coarse_stride}), {int(m.interpolated.sum())} interpolated"
                  if m.interpolated is not None else "")
               + (f", {int(m.verified.sum())} verified" if m.verified is not None else ""),
               "threads": torch.get_num_threads(),
               "captum_ppe_trial_s_per_position": {k: round(v, 4) for k, v in trials.items()},
               "peak_mb": _peak_mb("convlens", name, window, stride, options), "peer_peak_mb": peer_mb}
        if tag != "exact" and exact is not None:
            row["ssim"] = float(structural_similarity(exact.p_target, m.p_target, gaussian_weights=True, sigma=1.5,
                                                      use_sample_covariance=False, data_range=1.0))
            row["ssim_map_range"] = float(structural_similarity(
                exact.p_target, m.p_target, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=max(float(np.ptp(exact.p_target)), 1e-12)))
            row["ssim_reported"] = m.ssim
            row["top5_same"] = _top5(m.p_target, exact.p_clean) == _top5(exact.p_target, exact.p_clean)
            row["max_abs_dP_vs_exact"] = float(np.abs(m.p_target - exact.p_target).max())
        rows.append(row)
    return rows


def run() -> list[dict]:
    _threads()
    rows = _case("shapesnet 64x64, window 16, stride 4", "demo", 16, 4, [("exact", {})])
    if os.environ.get("BENCH_OCCLUSION_VGG", "1") != "0":
        rows += _case("vgg16 224x224, window 32, stride 8", "vgg16", 32, 8,
                      [("exact", {}), ("approximate+drill-down", DRILL)])
    if os.environ.get("BENCH_OCCLUSION_EFFNET", "1") != "0":
        rows += _case("efficientnet_lite0 224x224 (coffee photo), window 32, stride 8", "efficientnet_lite0", 32, 8,
                      [("exact", {}), ("approximate", dict(method="approximate")),
                       ("approximate+drill-down", DRILL)])
    return rows


if __name__ == "__main__":
    for row in run():
        print(row, flush=True)
