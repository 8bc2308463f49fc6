"""convlens.top_patches over every conv layer at once vs bare ``torch.no_grad()`` forward passes.

Model: the demo run (``runs/demo``, shapesnet on shapes) when it exists, else a shapesnet with
random weights (same cost). Data: the ``shapes`` test split (1,000 images, 3x64x64), fed as [0, 1]
pixels through the pixel model. Both sides use the same images, batch size, thread count and model
in eval mode; the peer is the plain loop ``for batch: model(batch)`` that computes (and discards)
the full forward. convlens additionally hooks the 4 conv layers (their rectified outputs), reduces
each map to its per-channel max and first argmax inside the hook, merges a running top-9 per unit
(a stable sort per batch), stops the forward after the last conv layer, and at the end finds the
receptive-field boxes (a meta-device trace, one gradient probe per layer) of the positions found;
no progress bar (``progress=False``).

Time: median wall time of ``REPEATS`` runs after one warm-up run each, alternating the two sides
so drift affects both. Goal: ratio <= 1.15x.
"""
from __future__ import annotations

from .demo_model import demo_model
from .timing import alternate

REPEATS = 5
BATCH = 128


def run() -> list[dict]:
    import torch

    import convlens
    from convlens import datasets

    threads = torch.get_num_threads()
    torch.set_num_threads(threads)  # the same for both sides, stated in the row
    model, source = demo_model()
    images = datasets.load("shapes", split="test").images  # (1000, 3, 64, 64)

    def bare():
        with torch.no_grad():
            for i in range(0, len(images), BATCH):
                model(images[i:i + BATCH])

    def ours():
        return convlens.top_patches(model, images, k=9, batch_size=BATCH, progress=False)

    layers = ours().layers
    bare()  # warm-up
    ours_s, bare_s = alternate(ours, bare, REPEATS)
    return [{"case": f"top-9 patches of {len(layers)} conv layers ({', '.join(layers)}) in one pass",
             "model": source, "images": len(images), "batch": BATCH, "threads": threads, "convlens_s": ours_s,
             "peer": "torch.no_grad() forward", "peer_s": bare_s, "ratio": ours_s / bare_s, "goal": "<= 1.15x"}]


if __name__ == "__main__":
    for row in run():
        print(row)
        print(f"ratio {row['ratio']:.3f}x (goal {row['goal']})")
