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
from .output import echo_saved


def _save(result, run, out: Path | None) -> list[str]:
    """The result JSON/NPZ under RUN/results and the figure PNG (``out`` or RUN/results/filters-<layer>.png);
    returns what was written."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png

    saved = []
    results = Path(run.dir) / "results" if run.dir is not None else None
    if results is not None:
        saved.append(f"{result.save(results / 'filters.json')} (+ .npz)")
    if out is None and results is not None:
        out = results / f"filters-{re.sub(r'[^A-Za-z0-9_.-]+', '_', result.layer)}.png"
    if out is not None:
        atomic_write_bytes(out, to_png(result.plot()))
        saved.append(str(out))
    return saved


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
    from ..units.filters import filters

    loaded = load_run(run)
    result = filters(loaded, layer)
    saved = _save(result, loaded, out)
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
    from ..units.filters import filters

    _save(filters(run), run, None)
