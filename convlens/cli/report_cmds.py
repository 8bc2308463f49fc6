"""`convlens report` (the HTML report of a run) and `convlens demo` (the main job, offline)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app
from .output import echo_saved, train_progress


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/report)."),
) -> None:
    """Write one self-contained HTML report (figures embedded) plus its PNG figures."""
    from ..report import build_report

    path = build_report(run, out)
    typer.echo(f"report: {path}")


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Run directory (resumed if it exists)."),
    analyses: bool = typer.Option(True, "--analyses/--no-analyses", help="Also run every analysis the report "
                                                                         "shows (probes, filters, top-9, ...)."),
) -> None:
    """Train the default model on the built-in `shapes` data, evaluate it, analyse it and write the report."""
    from ..report import build_report
    from .demo_steps import run_steps
    from ..training.evaluate import evaluate
    from ..training.fit import DEMO_RECIPE, demo

    typer.echo(f"convlens demo: training {DEMO_RECIPE['arch']} on {DEMO_RECIPE['data']} into {out}")
    run = demo(out=out, **train_progress())
    ev = evaluate(run)
    saved = Path(out) / "results" / "evaluation.json"
    ev.save(saved)
    typer.echo(repr(ev))
    echo_saved(saved)
    if analyses:
        typer.echo(f"\nanalyses (results in {saved.parent}; done ones are skipped):")
        run_steps(run, echo=typer.echo)
    path = build_report(run)
    typer.echo(f"\nreport: {path.resolve()}")
    typer.echo(f"figures: {path.parent.resolve() / 'figures'}")
