"""`convlens invert`: a thin wrapper over convlens.invert (Mahendran & Vedaldi 2015).

Saves ``RUN/results/inversion.json/.npz`` (the original and its reconstruction from every layer)
and ``RUN/results/inversion-quadrants.json/.npz`` (several reconstructions from one layer's code),
plus a PNG of each next to them; the report's inversion section reads them. With other options
they are kept beside them, as ``inversion@<key>.*`` and ``inversion-quadrants@<key>.*``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import typer

from ..errors import InputError
from ..results import saving
from .app import app
from .options import given_options
from .output import echo_saved, show_progress, warn_missed


def load_inputs(run, image: Path | None, indices: Sequence[int]):
    """(images (N, C, H, W) in [0, 1], labels (N,) or None, test-data rows) from an image file (resized to
    the run's input shape) or from rows of the run's test data (default row 0)."""
    import torch

    if image is not None:
        from ..data.images import load_image

        if indices:
            raise InputError(f"--index must not be given with an IMAGE file; got {list(indices)}")
        c, h, w = run.input_shape
        return load_image(image, size=(h, w), channels=c)[None], None, ()
    from ..training.evaluate import run_test_data

    data = run_test_data(run)
    rows = list(indices) or [0]
    bad = [i for i in rows if not 0 <= i < len(data.images)]
    if bad:
        raise InputError(f"--index must be in [0, {len(data.images) - 1}] (the run's test images); got {bad}")
    idx = torch.as_tensor(rows)
    return data.images[idx], torch.as_tensor(data.labels)[idx], tuple(rows)


def invert_layers(run, image, layers: Sequence[str] | None = None, *, options: dict | None = None, steps: int = 200,
                  seed: int = 0, progress: bool = False) -> tuple[dict, Path | None]:
    """Invert ``image`` (1, C, H, W) from each of ``layers`` (default: every conv/fc), saved with its figure as
    the default result, or beside it with ``options`` (the command's); returns ({layer: result}, the JSON's path)."""
    from ..insight.probes import choose_layers
    from ..plots.common import to_png
    from ..plots.inversion import layers_figure
    from ..synthesis.inversion import invert

    with saving(run, "inversion", options) as saver:
        names = list(layers) if layers else choose_layers(run.pixel_model(), None)[0]
        per_layer = invert(run, image, names, steps=steps, seed=seed, progress=progress)
        saver.save((image, per_layer))
        saver.figure(lambda: to_png(layers_figure(image, per_layer)))
    return per_layer, saver.path


def invert_quadrants(run, image, layer: str, *, options: dict | None = None, steps: int = 200, n_inits: int = 4,
                     seed: int = 0, progress: bool = False):
    """``n_inits`` reconstructions of ``image`` from ``layer``'s code, saved like :func:`invert_layers`
    (``inversion-quadrants``); returns (the result, the JSON's path)."""
    from ..plots.common import to_png
    from ..plots.inversion import quadrants_figure
    from ..synthesis.inversion import invert

    with saving(run, "inversion-quadrants", options) as saver:
        quads = invert(run, image, layer, steps=steps, n_inits=n_inits, seed=seed, progress=progress)
        saver.save((image, {layer: quads}))
        saver.figure(lambda: to_png(quadrants_figure(image, quads)))
    return quads, saver.path


def default_quadrant_layer(run) -> str:
    """The layer whose code the 'multiple reconstructions' panel inverts: the middle conv/fc layer, deep
    enough for the reconstructions to differ, shallow enough for them to still show the object."""
    from ..insight.probes import choose_layers

    names = choose_layers(run.pixel_model(), None)[0]
    return names[len(names) // 2]


@app.command("invert")
def invert_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    image: Optional[Path] = typer.Argument(None, help="An image file (default: a test image of the run)."),
    index: Optional[int] = typer.Option(None, "--index", help="Row of the run's test data (default 0)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: every conv/fc, "
                                                                "read after its ReLU)."),
    steps: int = typer.Option(200, "--steps", help="Gradient steps per reconstruction."),
    quadrants: Optional[str] = typer.Option(None, "--quadrants", help="Layer for the multiple-reconstruction "
                                                                      "panel (default: the middle conv/fc layer; "
                                                                      "'none' to skip)."),
    n_inits: int = typer.Option(4, "--n-inits", help="Random initializations for the multiple reconstructions."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (layer, feature errors) instead of text."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Reconstruct an image from its code at each layer (Mahendran & Vedaldi 2015) and report the feature errors."""
    from ..training.runs import load_run

    loaded = load_run(run)
    x, _, _ = load_inputs(loaded, image, [] if index is None else [index])
    names = None if layers is None else [n.strip() for n in layers.split(",") if n.strip()]
    quad = None if (quadrants or "").lower() == "none" else (quadrants or default_quadrant_layer(loaded))
    per_layer, path = invert_layers(loaded, x, names, options=given_options(ctx, "inversion"), steps=steps,
                                    seed=seed, progress=show_progress(quiet))
    saved, quads = [path], None
    if quad is not None:
        quads, path = invert_quadrants(loaded, x, quad, options=given_options(ctx, "inversion-quadrants"),
                                       steps=steps, n_inits=n_inits, seed=seed, progress=show_progress(quiet))
        saved.append(path)
    rows = [{"layer": k, "tapped": r.info["tapped"], "feature_error": r.info["feature_error"],
             "reached": r.goal["reached"]} for k, r in per_layer.items()]
    if quads is not None:
        rows.append({"layer": quad, "tapped": quads.info["tapped"], "feature_error": quads.info["feature_error"],
                     "reached": quads.goal["reached"], "n_inits": n_inits})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            errs = ", ".join(f"{e:.4f}" for e in row["feature_error"])
            what = f"{row['layer']} ({row['tapped']})" if row["tapped"] != row["layer"] else row["layer"]
            typer.echo(f"{what:24s} ||Φ(x*) - Φ0|| / ||Φ0|| = {errs}" + (f"  ({n_inits} inits)" if "n_inits" in row
                                                                         else ""))
    if loaded.dir is not None:
        echo_saved(*(f"{path} (+ .npz, .png)" for path in saved), as_json=as_json)
    for name, r in per_layer.items():
        warn_missed(f"invert {name}", r)
    if quads is not None:
        warn_missed(f"invert {quad} ({n_inits} inits)", quads)


def demo_inversion(run) -> None:
    """The demo's inversion: a test image reconstructed from every conv/fc layer, and 4 reconstructions
    from the middle layer's code (saved for the report)."""
    from ..training.runs import load_run

    run = load_run(run) if isinstance(run, (str, Path)) else run
    x, _, _ = load_inputs(run, None, [0])
    invert_layers(run, x)
    invert_quadrants(run, x, default_quadrant_layer(run))
