"""The model most benchmarks time: the demo run's shapesnet (``runs/demo``, built by `make demo`), or
the same architecture with random weights when the demo was never built."""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def demo_model():
    """(a pixel model in eval mode taking [0, 1] images of 3x64x64, a label saying which weights)."""
    import torch

    import convlens
    from convlens.training.runs import PixelModel

    demo = ROOT / "runs" / "demo"
    if (demo / "run.json").exists():
        return convlens.load_run(demo).pixel_model().eval(), "runs/demo (shapesnet)"
    net = convlens.create("shapesnet").eval()
    return PixelModel(net, torch.full((3,), 0.5), torch.full((3,), 0.25)).eval(), "shapesnet (random weights)"
