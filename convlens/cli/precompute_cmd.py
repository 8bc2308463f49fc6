"""`convlens precompute RUN`: fill ``RUN/results`` ahead of time (for the web explorer and the report).

Runs the steps of precompute_steps.py (evaluation, top-9 patches of every conv layer and their deconvnet
projections, CNN codes and their label agreement, health, filters of every conv layer, t-SNE), one line
each, skipping those whose results are current, so a rerun after an interruption resumes; ``--force``
computes them all again. The results are the commands' own (``convlens top-patches RUN`` reads and
writes the same files). Under ``torchrun`` the sharded steps split the images (the projections: the
units) between the processes and rank 0 writes and prints (launcher.py).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

import typer

from .app import app
from .launcher import launched
from .options import require_run_dir
from .output import show_progress
from .precompute_steps import STEPS, Job, Step


@app.command("precompute")
def precompute_cmd(
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train` or `convlens wrap`)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name or path (its test split; default: the "
                                                            "run's test split), as the commands take it."),
    force: bool = typer.Option(False, "--force", help="Compute every step again, even those already current."),
    quiet: bool = typer.Option(False, "--quiet", help="No line per step and no progress bars; only the summary."),
) -> None:
    """Compute every result the explorer shows into RUN/results: evaluation, top-9 patches of every unit of
    every conv layer and their deconvnet projections, CNN codes and t-SNE, health, filters of every conv layer.

    Steps whose results are current are skipped, so running it again resumes after an interruption. Under
    `torchrun --nproc_per_node N -m convlens.cli precompute RUN` the evaluation, top-9 patches, projections
    and codes are split between the N processes (results equal to one process)."""
    from ..training.runs import load_run

    loaded = load_run(run)
    require_run_dir(loaded, run)
    with launched(loaded.device) as launch:
        job = Job(loaded, data, launch, force=force, progress=show_progress(quiet))
        computed, kept, seconds = run_steps(job, echo=(lambda line: None) if quiet else typer.echo)
        who = f" by {launch.world_size} processes" if launch.world_size > 1 else ""
        typer.echo(f"precompute: {computed} step(s) computed{who}, {kept} current, {seconds:.1f} s; results in "
                   f"{loaded.dir / 'results'} (`convlens results {run}` lists them)")


def run_steps(job: Job, echo: Callable[[str], None] = print, steps: list[Step] = STEPS) -> tuple[int, int, float]:
    """Run each step of ``steps`` not yet current (every one with ``job.force``) and echo one line per step;
    returns (steps computed, steps current, seconds). Rank 0 decides which steps run, for every rank."""
    from ..results import CURRENT, ResultStore

    store = ResultStore.of(job.run)
    plan = None
    if job.launch.leader:
        plan = [[store.entry(name, options) for name, options in step.results(job)] for step in steps]
        plan = [None if job.force or any(e is None or e.state != CURRENT for e in entries) else
                sum(e.seconds or 0 for e in entries) for entries in plan]  # None: to compute; else its seconds
    plan = job.launch.broadcast(plan)
    start, computed = time.perf_counter(), 0
    for i, (step, before) in enumerate(zip(steps, plan), 1):
        head = f"[{i}/{len(steps)}] {step.title:<14}"
        if before is not None:
            echo(f"{head} current ({before:.1f} s when computed)")
            continue
        computed += 1
        if job.launch.leader or step.sharded:
            t = time.perf_counter()
            step.compute(job)
            echo(f"{head} {time.perf_counter() - t:5.1f} s")
    return computed, len(steps) - computed, time.perf_counter() - start
