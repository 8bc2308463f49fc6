"""`convlens occlusion`: a thin wrapper over convlens.occlusion.

Saves ``RUN/results/occlusion.json`` + ``.npz`` (read by the report's occlusion section) and the
figure ``RUN/results/occlusion.png``; with other options, beside them as ``occlusion@<key>.*`` (or at
``--out``). ``demo_occlusion(run)`` is what ``convlens demo`` runs.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import expect
from ..results import saving
from .app import app
from .options import given_options
from .output import echo_saved

DEMO_SETTINGS = dict(window=16, stride=4, baseline=0.5)


def pick_images(run, n: int = 3, candidates: int = 200) -> list[int]:
    """Rows of the run's test data: ``n`` images of different classes, correctly classified ones first."""
    import torch

    from ..taps import eval_mode, model_device
    from ..training.evaluate import run_test_data

    data = run_test_data(run)
    model = run.pixel_model()
    m = min(len(data.labels), candidates)
    device, dtype = model_device(model)
    with eval_mode(model), torch.no_grad():
        pred = torch.cat([model(data.images[i:i + 100].to(device, dtype)).argmax(1).cpu() for i in range(0, m, 100)])
    labels = [int(v) for v in data.labels[:m]]
    chosen: list[int] = []
    for want_correct in (True, False):
        for i in range(m):
            if len(chosen) < n and i not in chosen and (int(pred[i]) == labels[i]) == want_correct \
                    and labels[i] not in {labels[j] for j in chosen}:
                chosen.append(i)
    return chosen


def compute(run, indices=None, image: Path | None = None, *, options: dict | None = None, out: Path | None = None,
            **how):
    """Occlusion maps (``maps(run, indices, image, **how)``) with their figure, saved as the default result,
    beside it with ``options`` (the command's), or at ``out``; returns (the maps, the saved JSON's path or None)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png
    from ..plots.occlusion import occlusion_figure
    from ..units.occlusion import save_maps

    if out is not None:
        found = maps(run, indices, image, **how)
        save_maps(found, out)
        atomic_write_bytes(Path(out).with_suffix(".png"), to_png(occlusion_figure(found)))
        return found, Path(out)
    with saving(run, "occlusion", options) as saver:
        found = maps(run, indices, image, **how)
        saver.save(found)
        saver.figure(lambda: to_png(occlusion_figure(found)))
    return found, saver.path


def maps(run, indices=None, image: Path | None = None, *, target=None, layer: str | None = None,
         unit: int | None = None, window: int = 16, stride: int = 4, baseline: float = 0.5,
         method: str = "incremental", batch_size: int = 32, tau: float | None = None, drill_down: float | None = None,
         progress: bool = False) -> list:
    """Occlusion maps of test images ``indices`` (default: 3 of different classes) or of one image file."""
    from ..data.images import load_image
    from ..training.evaluate import run_test_data
    from ..units.occlusion import default_layer, occlusion

    layer = layer or default_layer(run.pixel_model())
    if image is not None:
        c, h, w = run.input_shape
        x = load_image(image, size=(h, w), channels=c)
        return [occlusion(run, x, target, window, stride, baseline, layer, unit, method=method,
                          batch_size=batch_size, tau=tau, drill_down=drill_down, progress=progress)]
    data = run_test_data(run)
    found = []
    for i in (pick_images(run) if not indices else indices):
        if not 0 <= i < len(data.labels):
            raise expect("--index", f"a test image row in [0, {len(data.labels) - 1}]", i)
        m = occlusion(run, data.images[i], target, window, stride, baseline, layer, unit, method=method,
                      batch_size=batch_size, tau=tau, drill_down=drill_down, progress=progress)
        found.append(_with(m, label=int(data.labels[i]), index=int(i)))
    return found


def _with(m, **changes):
    from dataclasses import replace

    return replace(m, **changes)


def demo_occlusion(run) -> None:
    """Occlusion triptychs of 3 demo test images of different classes (last conv layer, strongest unit)."""
    compute(run, **DEMO_SETTINGS)


@app.command("occlusion")
def occlusion_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    image: Optional[Path] = typer.Argument(None, help="An image file (resized to the run's input); default: "
                                                      "test images of the run's data."),
    index: Optional[List[int]] = typer.Option(None, "--index", "-i", help="Test image row; repeat for several "
                                                                          "(default: 3 of different classes)."),
    target: Optional[str] = typer.Option(None, "--target", help="Class index or name (default: the prediction)."),
    window: int = typer.Option(16, "--window", help="Side of the occluding square (pixels)."),
    stride: int = typer.Option(4, "--stride", help="Pixels between positions."),
    baseline: float = typer.Option(0.5, "--baseline", help="Value of the square, in [0, 1] pixel units (0.5: grey)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Feature-map layer (default: a grammar net's last conv "
                                                              "after its ReLU, else the last Conv2d registered)."),
    unit: Optional[int] = typer.Option(None, "--unit", help="Channel of --layer (default: the strongest)."),
    approximate: bool = typer.Option(False, "--approximate", help="Krypton's approximate mode (faster; its error "
                                                                  "is verified on a sample covering the map and "
                                                                  "bounded, or the map is recomputed exactly)."),
    tau: Optional[float] = typer.Option(None, "--tau", help="With --approximate: the largest patch per axis, as a "
                                                            "fraction of its map (default 0.35; with --drill-down "
                                                            "1, no truncation)."),
    drill_down: Optional[float] = typer.Option(None, "--drill-down", help="Approximate mode with adaptive drill-down "
                                               "(implies --approximate): a coarse map, the fine stride only near its "
                                               "top R fraction of positions, the rest interpolated; R in (0, 1]."),
    batch_size: int = typer.Option(32, "--batch-size", help="Positions per forward."),
    out: Optional[Path] = typer.Option(None, "--out", help="Result JSON (default: RUN/results/occlusion.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the summary."),
) -> None:
    """P(target), the most probable class and a feature map's activity per occluder position (Zeiler & Fergus
    Fig. 7), by exact incremental inference."""
    from ..training.runs import load_run

    if drill_down is not None and not 0 < drill_down <= 1:
        raise expect("--drill-down", "a fraction in (0, 1]", drill_down)
    loaded = load_run(run)
    options = given_options(ctx, "occlusion")
    tgt = int(target) if target is not None and target.lstrip("-").isdigit() else target
    found, saved = compute(loaded, index, image, options=options, out=out, target=tgt,
                           layer=layer, unit=unit, window=window, stride=stride, baseline=baseline,
                           method="approximate" if approximate or drill_down is not None else "incremental",
                           batch_size=batch_size, tau=tau, drill_down=drill_down)
    if as_json:
        payload = [m.to_dict() for m in found]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        typer.echo("\n\n".join(repr(m) for m in found) + "\n")
    if saved is not None:
        echo_saved(f"{saved} (+ .npz, .png)", as_json=as_json)
