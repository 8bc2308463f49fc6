"""An explorer image page's saliency request vs the library call it wraps.

The page's saliency picture (``png/images/{id}/saliency?target=T``) is computed on its first request:
``convlens.units.segment.explain`` (saliency, its GrabCut mask, deconvnet and guided backprop) under the
model lock, then drawn to PNG. Here ``convlens serve`` (the command, as a user starts it) runs on a copy of the run (its CLI saliency result
removed, so that nothing is read from the cache) in its own process on 127.0.0.1, and for each of
``IMAGES`` test images (each one the server has not seen: every request computes) the bench process
opens the image's page (``images/{id}``, untimed: it computes the top-5 the request reads its target
from, as in a browser), times the saliency request (connection kept alive), then ``explain(run, x, T)`` on the same image and
target in its own process. Both sides run with the same torch threads (``BENCH_THREADS``, default 1) and
never at the same time. Printed: the median of each side over the images, the spread, and the ratio
request / library (goal: <= 1.2x).

Runs: the demo (``runs/demo``, 64x64; the explain call is short, so the request's fixed cost shows) and,
when there, the ImageNet run (``runs/imagenet``, EfficientNet-Lite0 at 224x224).
"""
from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .bench_web import _port, wait_up

ROOT = Path(__file__).resolve().parents[1]
IMAGES = 12
THREADS = int(os.environ.get("BENCH_THREADS", "1"))


def _case(name: str, source: Path) -> dict:
    import httpx
    import torch

    from convlens.training.evaluate import run_test_data
    from convlens.training.runs import load_run
    from convlens.units.segment import explain

    torch.set_num_threads(THREADS)
    tmp = Path(tempfile.mkdtemp(prefix="bench-web-maps-"))
    run_dir = tmp / source.name
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("report", "uploads", "saliency*"))
    port = _port()
    code = f"import sys, torch; torch.set_num_threads({THREADS}); from convlens.cli import main; sys.exit(main())"
    server = subprocess.Popen([sys.executable, "-c", code, "serve", str(run_dir), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}/"
    run = load_run(run_dir)
    data = run_test_data(run)
    net = run.pixel_model().eval()
    ours, peer = [], []
    try:
        with httpx.Client(timeout=600) as client:
            wait_up(client, base)
            rows = range(1, IMAGES + 2)  # the first: warm-up of both sides (kernels, the server's data)
            for k, row in enumerate(rows):
                x = data.images[row][None]
                with torch.no_grad():
                    target = int(net(x).argmax())
                page = client.get(base + f"images/t{row}")  # the page the request comes from (its top-5)
                if page.status_code != 200:
                    raise RuntimeError(f"{name}: the image page failed ({page.status_code})")
                t = time.perf_counter()
                r = client.get(base + f"png/images/t{row}/saliency?target={target}")
                request_s = time.perf_counter() - t
                if r.status_code != 200 or r.headers["content-type"] != "image/png":
                    raise RuntimeError(f"{name}: the saliency request failed ({r.status_code}): {r.text[:300]}")
                t = time.perf_counter()
                explain(run, x, target, indices=(row,))
                library_s = time.perf_counter() - t
                if k:
                    ours.append(request_s)
                    peer.append(library_s)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    ratios = [a / b for a, b in zip(ours, peer)]
    return {"case": f"{name}: saliency PNG request of a new image ({len(ours)} images)",
            "request_ms": 1000 * statistics.median(ours), "library_ms": 1000 * statistics.median(peer),
            "ratio": statistics.median(ours) / statistics.median(peer),
            "ratio_spread": f"{min(ratios):.2f}-{max(ratios):.2f}", "threads": THREADS,
            "goal": "request <= 1.2x library"}


def run() -> list[dict]:
    rows = [_case("demo 64x64", ROOT / "runs" / "demo")]
    if (ROOT / "runs" / "imagenet" / "run.json").exists():
        rows.append(_case("ImageNet EfficientNet-Lite0 224x224", ROOT / "runs" / "imagenet"))
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
