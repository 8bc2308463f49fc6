"""`convlens filters RUN`: a thin wrapper over ``convlens.filters``.

Prints the diagnosis of every conv layer (good / too noisy / too correlated / lacks structure),
saves the chosen layer's filter grid to ``RUN/results/filters-<layer>.png`` (or ``--out``) and the
result to ``RUN/results/filters.json`` (+ ``filters.npz``, the weights shown).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer

from .app import app


def _save(result, run, out: Path | None) -> Path | None:
    """The result JSON/NPZ under RUN/results and the figure PNG (``out`` or RUN/results/filters-<layer>.png)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png

    results = Path(run.dir) / "results" if run.dir is not None else None
    if results is not None:
        result.save(results / "filters.json")
    if out is None and results is not None:
        out = results / f"filters-{re.sub(r'[^A-Za-z0-9_.-]+', '_', result.layer)}.png"
    if out is not None:
        atomic_write_bytes(out, to_png(result.plot()))
    return out


@app.command("filters")
def filters_cmd(
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`) or weight file."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Conv layer to draw (lecture name such as conv2, or "
                                                              "module path; default: the first conv)."),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG for the figure (default: "
                                                           "RUN/results/filters-<layer>.png)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """Filter grid and the lecture's quiz per conv layer: good, too noisy, too correlated, lacks structure."""
    from ..training.runs import load_run
    from ..visualize.filters import filters

    loaded = load_run(run)
    result = filters(loaded, layer)
    png = _save(result, loaded, out)
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
        return
    lines = [repr(result)]
    lines += [f"{d.name}: {r}" for d in result.layers for r in d.reasons]
    notes: dict[str, list[str]] = {}
    for d in result.layers:
        for note in d.notes:
            notes.setdefault(note, []).append(d.name)
    lines += [f"{', '.join(names)}: {note}" for note, names in notes.items()]
    if png is not None:
        lines.append(f"figure: {png}")
    typer.echo("\n".join(lines))


def demo_filters(run) -> None:
    """For `convlens demo`: the first layer's filters and every layer's diagnosis, saved under RUN/results
    (well under a second for the demo net: weights only, no data)."""
    from ..visualize.filters import filters

    _save(filters(run), run, None)
