"""convlens.features over every conv layer at once vs bare ``torch.no_grad()`` forward passes.

Model: the demo run (``runs/demo``, shapesnet on shapes) when it exists, else a shapesnet with
random weights (same cost). Data: the ``shapes`` test split (1,000 images, 3x64x64), fed as [0, 1]
pixels through ``run.pixel_model()``. Both sides use the same images, batch size and model in eval
mode; the peer is the plain loop ``for batch: model(batch)`` that computes (and discards) the full
forward. convlens additionally hooks the 4 conv layers, max-pools each output per channel inside
the hook, copies the (B, C) results into numpy arrays, shows no progress bar (``progress=False``),
and stops the forward after the last conv layer.

Time: median wall time of ``REPEATS`` runs after one warm-up run each, alternating the two sides
so drift affects both. Goal: ratio <= 1.15x. A second row measures the same with ``pool="flat"``
(full maps copied out: 57 K floats per image) for scale.
"""
from __future__ import annotations

from .demo_model import demo_model
from .timing import alternate

REPEATS = 5
BATCH = 128


def run() -> list[dict]:
    import torch
    from torch import nn

    import convlens
    from convlens import datasets

    model, source = demo_model()
    images = datasets.load("shapes", split="test").images  # (1000, 3, 64, 64)
    convs = [name for name, path in model.lecture_names.items()
             if isinstance(dict(model.named_modules())[path], nn.Conv2d)]

    def bare():
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                model(images[i:i + BATCH])

    rows = []
    for pool in ("max", "flat"):
        def ours():
            convlens.features(model, images, convs, pool=pool, batch_size=BATCH, progress=False)

        ours(), bare()  # warm-up
        ours_s, bare_s = alternate(ours, bare, REPEATS)
        rows.append({"case": f"features {len(convs)} conv layers, pool={pool}", "model": source,
                     "images": len(images), "batch": BATCH, "convlens_s": ours_s,
                     "peer": "torch.no_grad() forward", "peer_s": bare_s, "ratio": ours_s / bare_s,
                     "goal": "<= 1.15x" if pool == "max" else ""})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
