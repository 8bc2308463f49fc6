"""`convlens filters RUN`: a thin wrapper over ``convlens.filters``.

Prints the diagnosis of every conv layer (good / too noisy / too correlated / lacks structure),
saves the result to ``RUN/results/filters.json`` (+ ``filters.npz``, the weights shown) and the
chosen layer's filter grid to ``RUN/results/filters-<layer>.png`` (or ``--out``). With ``--layer``
the result is kept beside the default one, as ``filters@<key>.*``.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from ..results import saving
from .app import app
from .options import given_options
from .output import echo_saved


def compute(run, layer: str | None = None, *, options: dict | None = None, out: Path | None = None):
    """The filters of ``run`` saved as the default result (or beside it with ``options``, the command's) and
    their figure, at ``out`` or ``RUN/results/<stem>-<layer>.png``; returns (the result, the paths written)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png
    from ..units.filters import filters

    with saving(run, "filters", options) as saver:
        result = filters(run, layer)
        saved = [f"{saver.save(result)} (+ .npz)"] if saver.path is not None else []
        if out is not None:
            saved.append(str(atomic_write_bytes(out, to_png(result.plot()))))
        elif saver.path is not None:
            suffix = "-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", result.layer)
            saved.append(str(saver.figure(lambda: to_png(result.plot()), suffix)))
    return result, saved


@app.command("filters")
def filters_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`) or weight file."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Conv layer to draw (lecture name such as conv2, or "
                                                              "module path; default: the first conv)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG for the figure (default: "
                                                           "RUN/results/filters-<layer>.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """Filter grid and the lecture's quiz per conv layer: good, too noisy, too correlated, lacks structure."""
    from ..training.runs import load_run

    result, saved = compute(load_run(run), layer, options=given_options(ctx, "filters"), out=out)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else _text(result))
    if saved:
        echo_saved(*saved, as_json=as_json)


def _text(result) -> str:
    """The table, then each layer's reasons, then the notes shared by several layers."""
    lines = [repr(result)]
    lines += [f"{d.name}: {r}" for d in result.layers for r in d.reasons]
    notes: dict[str, list[str]] = {}
    for d in result.layers:
        for note in d.notes:
            notes.setdefault(note, []).append(d.name)
    lines += [f"{', '.join(names)}: {note}" for note, names in notes.items()]
    return "\n".join(lines)


def demo_filters(run) -> None:
    """For `convlens demo`: the first layer's filters and every layer's diagnosis, saved under RUN/results
    (well under a second for the demo net: weights only, no data)."""
    compute(run)
