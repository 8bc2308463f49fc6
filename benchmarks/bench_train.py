"""convlens.train's loop vs a minimal hand-written PyTorch loop: same model, data, batches, optimizer.

Both loops: weights initialized from the same seed, SGD with momentum 0.9 and weight decay, batch
64, inputs normalized per channel, a fresh random order each epoch, augmentation OFF in both
(convlens's augmentation is extra work the bare loop would not do). convlens additionally runs its
cosine learning-rate schedule, keeps loss/accuracy on the fly and writes its checkpoint, weights
and manifest atomically after each epoch; the progress bar is off (``progress=False``). No test
set in either. Each side runs ``REPEATS`` times, alternating; the best time of each is reported
(noise on a shared machine only ever adds time). Goal: ratio <= 1.1.
"""
from __future__ import annotations

import shutil
import tempfile
import time

import torch
import torch.nn.functional as F

EPOCHS = 2
BATCH = 64
REPEATS = 3
CASES = (  # (name, arch, dataset, n training images)
    ("demo net, shapes 64x64", "shapesnet", "shapes", 1024),
    ("tiny net, digits 32x32", "CONV3-8-RELU-POOL2,CONV3-16-RELU-POOL2,FC", "digits", 1024),
)


def bare_loop(arch: str, ds, *, epochs: int, batch: int, seed: int = 0) -> torch.nn.Module:
    """The loop a PyTorch user writes by hand."""
    from convlens.arch.grammar import parse
    from convlens.arch.zoo import create, is_zoo_name
    from convlens.training.fit import channel_stats

    torch.manual_seed(seed)
    k = len(ds.class_names)
    net = create(arch, num_classes=k, input_shape=ds.input_shape) if is_zoo_name(arch) else \
        parse(arch, input_shape=ds.input_shape, num_classes=k)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    mean, std = channel_stats(ds.images)
    mean, std = mean.view(1, -1, 1, 1), std.view(1, -1, 1, 1)
    images, labels = ds.images, ds.labels
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(labels))
        for i in range(len(labels) // batch):
            idx = order[i * batch:(i + 1) * batch]
            x = (images[idx] - mean) / std  # (B, C, H, W)
            loss = F.cross_entropy(net(x), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return net


def convlens_loop(arch: str, ds, *, epochs: int, batch: int, out: str) -> None:
    from convlens.training.fit import train

    train(arch, ds, out=out, test_data=False, epochs=epochs, batch_size=batch, optimizer="sgd", lr=0.05,
          momentum=0.9, weight_decay=5e-4, augment=False, progress=False, device="cpu", overwrite=True)


def run() -> list[dict]:
    from convlens import datasets

    rows = []
    for name, arch, data, n in CASES:
        ds = datasets.load(data, "train", n=n)
        work = tempfile.mkdtemp(prefix="bench_train_")
        try:
            bare_loop(arch, ds.subset(range(2 * BATCH)), epochs=1, batch=BATCH)  # warm-up (allocator, kernels)
            ours, peer = [], []
            for _ in range(REPEATS):
                t = time.perf_counter()
                bare_loop(arch, ds, epochs=EPOCHS, batch=BATCH)
                peer.append(time.perf_counter() - t)
                t = time.perf_counter()
                convlens_loop(arch, ds, epochs=EPOCHS, batch=BATCH, out=f"{work}/run")
                ours.append(time.perf_counter() - t)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        images = EPOCHS * (n // BATCH) * BATCH
        rows.append({"case": f"train {name}, {EPOCHS} epochs x {n} images, batch {BATCH}, no augmentation",
                     "convlens_s": min(ours), "peer": "hand-written PyTorch loop", "peer_s": min(peer),
                     "ratio": min(ours) / min(peer), "convlens_img_per_s": images / min(ours),
                     "peer_img_per_s": images / min(peer), "torch_threads": torch.get_num_threads()})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
