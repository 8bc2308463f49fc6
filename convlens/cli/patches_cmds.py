"""`convlens top-patches RUN`: a thin wrapper over ``convlens.top_patches``.

Saves ``RUN/results/top-patches.json`` and ``.npz`` (read by the report's "patches" section); with
``--layer``, ``--units``, ``--k`` or ``--data`` the result is kept beside it (``top-patches@<key>.*``).
``demo_patches(run)`` computes the default result (called by ``convlens demo``); ``compute_projections``
the deconvnet projections of every unit's top images (``RUN/results/top-projections.*``, by ``convlens
precompute``). Under ``torchrun`` each
process mines its shard of the images and rank 0 saves the whole (launcher.py).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from .app import app
from .launcher import Launch, launched
from .options import ON_ERROR, SPLIT, given_options, load_data, require_run_dir
from .output import echo_saved, show_progress

RESULT, PROJECTIONS = "top-patches", "top-projections"


def compute(run, dataset=None, layers=None, *, options: dict | None = None, k: int = 9, units=None,
            batch_size: int = 128, out: Path | None = None, progress: bool = False, launch: Launch = Launch()):
    """Top patches of ``run``, saved as the default result, or beside it with ``options`` (the command's, see
    ``given_options``); ``launch``: this process's shard (rank 0 saves). Returns (the result, the saved JSON's
    path or None)."""
    from ..units.patches import top_patches

    with launch.saving(run, RESULT, options) as saver:
        result = top_patches(run, dataset, layers, k=k, units=units, batch_size=batch_size, progress=progress,
                             out=out, **launch.shard)
        saver.save(result)
    return result, saver.path


def compute_projections(run, top, dataset=None, *, options: dict | None = None, progress: bool = False,
                        launch: Launch = Launch()):
    """The deconvnet projections of every unit's top images of ``top`` (mined on ``dataset``; None: the run's
    test split), saved as "top-projections" (beside the default one with ``options``, those of ``top``);
    ``launch``: this process's share of the units (rank 0 saves). Returns ((meta, arrays), the JSON's path)."""
    from ..training.evaluate import run_test_data
    from ..units.projection_sets import projection_sets

    with launch.saving(run, PROJECTIONS, options) as saver:
        result = projection_sets(run, top, run_test_data(run) if dataset is None else dataset, progress=progress,
                                 **launch.shard)
        saver.save(result)
    return result, saver.path


@app.command("top-patches")
def top_patches_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    layer: Optional[List[str]] = typer.Option(None, "--layer", help="A layer to mine (repeat, or comma-separate; "
                                                                    "default: every conv layer, in one pass)."),
    k: int = typer.Option(9, "--k", help="Images kept per unit."),
    units: Optional[str] = typer.Option(None, "--units", help="Comma-separated channel indices (default: all)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split)."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per forward pass."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for progress: rerun with the same --out to resume "
                                                           "after an interruption."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with every array) instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    split: str = SPLIT,
    on_error: str = ON_ERROR,
) -> None:
    """For every unit, the k test images that activate it most, where, and the receptive-field box (Zeiler & Fergus's
    top-9 patches, R-CNN's top regions). Shards the images under torchrun (rank 0 saves and prints)."""
    from ..training.runs import load_run

    loaded = load_run(run)
    with launched(loaded.device) as launch:
        dataset = load_data(loaded, data, split, on_error)
        if isinstance(dataset, str):
            from .. import datasets

            dataset = datasets.load(dataset, split="test")
        names = [n.strip() for item in layer for n in item.split(",") if n.strip()] if layer else None
        result, saved = compute(loaded, dataset, names, options=given_options(ctx, RESULT), k=k,
                                units=_ints(units, "--units"), batch_size=batch_size, out=out,
                                progress=show_progress(quiet), launch=launch)
        typer.echo(json.dumps(result.to_dict(arrays=True), indent=2) if as_json else repr(result))
        if saved is not None:
            echo_saved(f"{saved} (+ .npz)", as_json=as_json)


def _ints(text: str | None, option: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{option} must be ints separated by commas, e.g. 0,3,7; got {text!r}")
    return values


def demo_patches(run) -> None:
    """Top-9 patches of every conv layer over the demo run's test split (1,000 shapes: a few seconds): the
    default result, which the report's "patches" section shows."""
    from ..training.runs import load_run

    loaded = load_run(run) if isinstance(run, (str, Path)) else run
    require_run_dir(loaded, run if isinstance(run, (str, Path)) else loaded.path)
    compute(loaded)
