"""Does ``PHOTOS_RECIPE`` give AlexNet-like first-layer filters? Train it on one torch thread and measure.

Trains ``photosnet`` on ``photos`` with ``convlens.training.fit.PHOTOS_RECIPE`` (data generation
included in the time) and compares its conv1 filters with the same net's at initialization (the
``seed`` fixes both). Filter measures, each a mean over the filters:

- high-frequency share: of each filter's spectral energy after removing its mean, the part above
  1/4 cycle per pixel (radially); white noise puts ~3/4 of its energy there, a smooth edge or blob
  a few percent. Lower is smoother ("noisy filters" in the lecture's diagnosis). The function is
  ``convlens.units.filter_diagnosis.high_frequency_share``, the diagnosis' own measure.
- orientedness: ``|sum P(f) exp(2i theta(f))| / sum P(f)`` over the same spectrum: 1 for a single
  orientation (edge, bar, grating), 0 for an isotropic pattern; rows also count filters above 0.5.
- flat-colour share: the energy of each filter's per-channel means (a uniform colour patch), out
  of its total; colour blobs are high, gray edges low.

The PNG grid of the trained filters is ``docs/photos_conv1.png`` (``save_grid``).
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convlens.units.filter_diagnosis import high_frequency_share  # the diagnosis' own measure


def orientedness(w: torch.Tensor) -> torch.Tensor:
    """(F,) in [0, 1]: how much of each filter's non-flat spectrum shares one orientation; w (F, C, k, k)."""
    w = w.detach().double()
    z = w - w.mean((2, 3), keepdim=True)  # per channel: the flat colour says nothing about orientation
    power = torch.fft.fft2(z).abs().pow(2).sum(1)  # (F, k, k)
    fy = torch.fft.fftfreq(w.shape[-2], dtype=torch.float64).view(-1, 1)
    fx = torch.fft.fftfreq(w.shape[-1], dtype=torch.float64).view(1, -1)
    doubled = torch.polar(torch.ones_like(fy * fx), 2 * torch.atan2(fy, fx))  # (k, k): e^{2i theta}
    return (power * doubled).sum((1, 2)).abs() / power.sum((1, 2)).clamp_min(1e-30)


def flat_colour_share(w: torch.Tensor) -> torch.Tensor:
    """(F,) share of each filter's energy in its per-channel means (a uniform colour); w (F, C, k, k)."""
    w = w.detach().double()
    flat = w.mean((2, 3), keepdim=True).expand_as(w)
    return flat.pow(2).sum((1, 2, 3)) / w.pow(2).sum((1, 2, 3)).clamp_min(1e-30)


def save_grid(w: torch.Tensor, path: str | Path, *, scale: int = 6, cols: int = 8) -> None:
    """Filters as RGB tiles, each min-max normalized over its own values (as in Krizhevsky et al. 2012,
    Figure 3; ``convlens.plots.filters.rgb_canvas``), enlarged ``scale`` times with nearest neighbours."""
    from PIL import Image

    from convlens.plots.filters import rgb_canvas

    canvas = rgb_canvas(w.detach().float().cpu().numpy(), cols=cols)  # (H, W, 3) in [0, 1]
    img = Image.fromarray((canvas * 255).round().astype(np.uint8))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path, optimize=True)


def _conv1(net: torch.nn.Module) -> torch.Tensor:
    return next(m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def run(*, grid: str | Path | None = None) -> list[dict]:
    """Train PHOTOS_RECIPE once on one torch thread; rows: time and accuracy, then conv1 trained vs init."""
    from convlens.arch.zoo import create
    from convlens.training.fit import PHOTOS_RECIPE, train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    work = tempfile.mkdtemp(prefix="bench_photos_filters_")
    try:
        t = time.perf_counter()
        result = train(**PHOTOS_RECIPE, out=f"{work}/run", progress=False, device="cpu")
        seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(work, ignore_errors=True)
    with torch.random.fork_rng():
        torch.manual_seed(0)  # train()'s default seed: the very weights training started from
        init = _conv1(create(PHOTOS_RECIPE["arch"], num_classes=len(result.class_names),
                             input_shape=result.input_shape))
    trained = _conv1(result.model)
    if grid is not None:
        save_grid(trained, grid)
    r, side = PHOTOS_RECIPE, PHOTOS_RECIPE["data"]["size"]
    rows = [{"case": f"train photosnet (PHOTOS_RECIPE: {r['data']['n']} patches {side}x{side}, {r['epochs']} epochs, "
                     f"{r['optimizer']} lr {r['lr']} wd {r['weight_decay']}), data generation included",
             "convlens_s": seconds, "test_acc": result.history[-1]["test_acc"], "torch_threads": 1}]
    peer = "same net at initialization"
    hf_t, hf_i = float(high_frequency_share(trained).mean()), float(high_frequency_share(init).mean())
    rows.append({"case": "conv1 high-frequency energy share, mean over filters (lower: smoother)",
                 "trained": hf_t, "peer": peer, "init": hf_i, "ratio": hf_i / hf_t})
    or_t, or_i = orientedness(trained), orientedness(init)
    rows.append({"case": "conv1 orientedness, mean over filters (higher: more edge/bar-like)",
                 "trained": or_t.mean().item(), "peer": peer, "init": or_i.mean().item(),
                 "ratio": (or_t.mean() / or_i.mean()).item()})
    rows.append({"case": f"conv1 filters with orientedness > 0.5, of {len(or_t)}", "trained": int((or_t > 0.5).sum()),
                 "peer": peer, "init": int((or_i > 0.5).sum())})
    rows.append({"case": "conv1 flat-colour energy share, mean over filters (colour blobs: high)",
                 "trained": flat_colour_share(trained).mean().item(), "peer": peer,
                 "init": flat_colour_share(init).mean().item()})
    from convlens.units.filter_diagnosis import diagnose_weights

    rows.append({"case": "conv1 diagnosis (convlens.diagnose_weights)", "trained": diagnose_weights(trained).verdict,
                 "peer": peer, "init": diagnose_weights(init).verdict})
    return rows


if __name__ == "__main__":
    for row in run(grid=Path(__file__).resolve().parents[1] / "docs" / "photos_conv1.png"):
        print(row)
