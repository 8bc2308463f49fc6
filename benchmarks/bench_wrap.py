"""``convlens wrap`` + the first command on the wrapped run vs loading the model by hand and calling the
library: the overhead the run directory costs a user of their own model (goal: <= 1.1x).

Both sides start from the same files: a factory in a .py file (a residual net with F.relu and BatchNorm,
64x64x3), its weights (.safetensors) and an image folder (10 classes x 40 PNGs). By hand:
``load_run("net.py:make", weights=..., mean=..., std=...)`` then ``evaluate(run, datasets.load(folder,
split="all"))``. convlens: ``wrap("net.py:make", out, weights=..., mean=..., std=..., data=folder)`` then
``evaluate(load_run(out))``, as ``convlens wrap`` followed by ``convlens evaluate RUN`` run them. Each side
runs in a fresh folder every repeat (median of ``REPEATS``, the sides alternating). Where the time goes:
the wrap's own steps are timed separately (building and loading the model, its checks: three forwards of
two images, reading the data folder once to record it, writing the files, loading the run back).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import textwrap
import time
from pathlib import Path

from .timing import alternate

REPEATS = 5
CODE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, x):
            y = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(y)) + self.down(x))


    class Net(nn.Module):
        input_shape = (3, 64, 64)

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 32, 3, 1, 1, bias=False)
            self.bn = nn.BatchNorm2d(32)
            self.layer1 = Block(32, 32, 1)
            self.layer2 = Block(32, 64, 2)
            self.layer3 = Block(64, 128, 2)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            x = F.relu(self.bn(self.stem(x)))
            return self.fc(self.layer3(self.layer2(self.layer1(x))).mean((2, 3)))


    def make():
        return Net().eval()
''')
MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _files(root: Path) -> tuple[Path, Path, Path]:
    import numpy as np
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from convlens import datasets

    code = root / "net.py"
    code.write_text(CODE)
    namespace: dict = {}
    exec(compile(CODE, str(code), "exec"), namespace)
    torch.manual_seed(0)
    save_file(namespace["make"]().state_dict(), str(root / "net.safetensors"))
    ds = datasets.load("shapes", split="test", n=400)
    for i, (x, y) in enumerate(zip(ds.images, ds.labels)):
        folder = root / "images" / ds.class_names[int(y)]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(folder / f"{i}.png")
    return code, root / "net.safetensors", root / "images"


def run() -> list[dict]:
    import convlens
    from convlens import datasets

    root = Path(tempfile.mkdtemp(prefix="bench_wrap_"))
    try:
        code, weights, images = _files(root)
        source = f"{code}:make"

        def by_hand():
            loaded = convlens.load_run(source, weights=weights, mean=MEAN, std=STD)
            return convlens.evaluate(loaded, datasets.load(str(images), split="all"))

        steps: dict[str, list[float]] = {"wrap": [], "load_run(out)": [], "evaluate": []}

        def wrapped():
            out = root / "run"
            shutil.rmtree(out, ignore_errors=True)
            t = time.perf_counter()
            convlens.wrap(source, out, weights=weights, mean=MEAN, std=STD, data=images)
            t1 = time.perf_counter()
            loaded = convlens.load_run(out)
            t2 = time.perf_counter()
            ev = convlens.evaluate(loaded)
            steps["wrap"].append(t1 - t)
            steps["load_run(out)"].append(t2 - t1)
            steps["evaluate"].append(time.perf_counter() - t2)
            return ev

        a, b = by_hand(), wrapped()  # warm-up; and both must score the same images the same way
        assert a.n == b.n and abs(a.top1_error - b.top1_error) < 1e-9, (a.top1_error, b.top1_error)
        for v in steps.values():
            v.clear()
        ours_s, peer_s = alternate(wrapped, by_hand, REPEATS)
        rows = [{"case": f"wrap + evaluate vs load by hand + evaluate ({a.n} images 64x64, median of {REPEATS})",
                 "convlens_s": ours_s, "by_hand_s": peer_s, "ratio": ours_s / peer_s}]
        for name, values in steps.items():
            rows.append({"case": f"  of which {name}", "convlens_s": statistics.median(values)})
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)
