"""`convlens report` (the HTML report of a run), `convlens results` (what a run has computed) and
`convlens demo` (the main job, offline)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .app import app
from .output import echo_saved, train_progress


@app.command("report")
def report_cmd(
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default: RUN/report)."),
    data: Optional[str] = typer.Option(None, "--data", help="Test images to evaluate on and show: a dataset name "
                                                             "or path (its test split); default: the run's own."),
) -> None:
    """Write one self-contained HTML report (figures embedded) plus its PNG figures."""
    from ..reporting import report
    from ..results import STALE, ResultStore
    from ..training.runs import load_run

    loaded = load_run(run)
    path = report(loaded, out, data=data)
    store = ResultStore.of(loaded)
    for e in store.listing() if store is not None else []:
        if e.state == STALE:
            typer.echo(f"not shown: {e.path.name}, {e.why} (compute it again, or run `convlens demo`)")
    typer.echo(f"report: {path}")


@app.command("results")
def results_cmd(
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
) -> None:
    """What a run has computed: each result in RUN/results, its options, whether it is current, when, how long."""
    from ..errors import RunError
    from ..results import ResultStore

    if not (Path(run) / "run.json").is_file():
        raise RunError(f"{run}: no run.json; expected a run directory written by convlens.train")
    listing = ResultStore(run).listing()
    typer.echo(json.dumps(listing.to_dict(), indent=2) if as_json else repr(listing))


@app.command("demo")
def demo_cmd(
    out: Optional[Path] = typer.Option(None, "--out", help="Run directory (resumed if it exists; default "
                                                           "runs/demo, with --imagenet runs/imagenet)."),
    analyses: bool = typer.Option(True, "--analyses/--no-analyses", help="Also run every analysis the report "
                                                                         "shows (probes, filters, top-9, ...)."),
    force: bool = typer.Option(False, "--force", help="Run every analysis again, even those already current."),
    imagenet: bool = typer.Option(False, "--imagenet", help="Instead: the lecture's visualizations of a real "
                                                            "ImageNet network (EfficientNet-Lite0, offline) on "
                                                            "scikit-image photos, in one report (2-3 minutes on "
                                                            "2 cores)."),
) -> None:
    """Train the default model on the built-in `shapes` data, evaluate it, analyse it and write the report
    (with --imagenet: analyse a pretrained ImageNet network instead, nothing trained)."""
    if imagenet:
        from .imagenet_demo import imagenet_demo

        imagenet_demo(out or Path("runs/imagenet"), analyses=analyses, force=force, echo=typer.echo)
        return
    out = out or Path("runs/demo")
    from ..reporting import report
    from ..results import saving
    from .demo_steps import run_steps
    from ..training.evaluate import evaluate
    from ..training.fit import DEMO_RECIPE, demo

    typer.echo(f"convlens demo: training {DEMO_RECIPE['arch']} on {DEMO_RECIPE['data']} into {out}")
    run = demo(out=out, **train_progress())
    with saving(run, "evaluation") as saver:
        ev = evaluate(run)
        saved = saver.save(ev)
    typer.echo(repr(ev))
    echo_saved(saved)
    if analyses:
        typer.echo(f"\nanalyses (results in {saved.parent}; current ones are skipped):")
        run_steps(run, echo=typer.echo, force=force)
    path = report(run)
    typer.echo(f"\nreport: {path.resolve()}")
    typer.echo(f"figures: {path.parent.resolve() / 'figures'}")
