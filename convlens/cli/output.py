"""How the commands print: progress bars only on a terminal, the paths they saved, small tables, missed goals."""
from __future__ import annotations

import sys
from pathlib import Path

import typer


def show_progress(quiet: bool = False) -> bool:
    """Whether a command draws progress bars: not with --quiet, and only when stderr is a terminal (in a
    log, a bar's carriage returns pile up). The library's own ``progress=`` defaults stay as they are."""
    return not quiet and sys.stderr.isatty()


def train_progress(quiet: bool = False) -> dict:
    """``train()``'s progress options: a bar (and a line per epoch) on a terminal; in a log, only the line
    per epoch; nothing with --quiet."""
    from ..training.fit import epoch_line

    if show_progress(quiet):
        return {"progress": True}
    return {"progress": False,
            "callback": None if quiet else lambda record: typer.echo(epoch_line(record, record["epochs"]))}


def echo_saved(*paths: Path | str, as_json: bool = False) -> None:
    """``saved: PATH, ...``: the files a command wrote; with --json on stderr, so stdout stays one JSON document."""
    typer.echo("saved: " + ", ".join(str(p) for p in paths), err=as_json)


def warn_missed(what: str, result) -> int:
    """One ``warning: WHAT: KEY missed its goal (GOAL): WHY`` line on stderr for each image of ``result`` (an
    OptimizedImage or AdversarialResult: its ``goal`` record) that missed its goal; returns how many did."""
    goal = result.goal or {}
    missed = goal.get("missed") or {}
    for key, why in missed.items():
        typer.echo(f"warning: {what}: {key} missed its goal ({goal.get('goal', '?')}): {why}", err=True)
    return len(missed)


def warn_unwrapped(source, run) -> None:
    """A warning on stderr when a command is given a model file rather than a run directory: nothing then says
    what normalization and input size the model expects, so images go in as they are."""
    if getattr(run, "dir", None) is None and run.mean.abs().max() == 0 and (run.std == 1).all():
        typer.echo(f"warning: {source} is a model file, not a run directory: no normalization or input size is "
                   "known, so images go in as they are; record them with `convlens wrap "
                   f"{source} --out RUN --input HxWxC --mean m1,m2,m3 --std s1,s2,s3`", err=True)


def table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, indented by two spaces: the first left-aligned, the rest right-aligned."""
    widths = [max(len(row[i]) for row in (headers, *rows)) for i in range(len(headers))]
    return "\n".join("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                                      for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in (headers, *rows))
