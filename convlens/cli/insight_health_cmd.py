"""`convlens health RUN`: training-health diagnostics (a thin wrapper over ``convlens.health``).

Saves ``RUN/results/health.json``, which the report's "health" section reads (with ``--layers``,
``--data`` or ``--max-samples``, beside it as ``health@<key>.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..results import saving
from .app import app
from .options import ON_ERROR, SPLIT, given_options, load_data
from .output import echo_saved, show_progress


@app.command("health")
def health_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: every ReLU "
                                                                "output; conv/fc outputs in models without)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split)."),
    max_samples: int = typer.Option(1000, "--max-samples", help="Images measured, spread evenly over the data."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    split: str = SPLIT,
    on_error: str = ON_ERROR,
) -> None:
    """Sparsity, dead units, variance and correlation per layer: is training healthy? (exit 0 either way)"""
    from ..training.runs import load_run

    loaded = load_run(run)
    dataset = load_data(loaded, data, split, on_error)
    if isinstance(dataset, str):
        from .. import datasets

        dataset = datasets.load(dataset, split="test")
    names = None if layers is None else [n.strip() for n in layers.split(",") if n.strip()]
    result, saved = compute(loaded, dataset, options=given_options(ctx, "health"), layers=names,
                            max_samples=max_samples, progress=show_progress(quiet))
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
    if saved is not None:
        echo_saved(saved, as_json=as_json)


def compute(run, dataset=None, *, options: dict | None = None, layers=None, max_samples: int = 1000,
            progress: bool = False):
    """``convlens.health`` of ``run`` on ``dataset`` (None: its test split), saved as the default result (or
    beside it with ``options``, the command's); returns (the HealthReport, the JSON's path or None)."""
    from ..insight.health import health

    with saving(run, "health", options) as saver:
        result = health(run, dataset, layers=layers, max_samples=max_samples, progress=progress)
        saver.save(result)
    return result, saver.path
