"""The analyses `convlens demo` runs after training, so that its report shows every section.

Each step computes one analysis on the demo run with defaults sized for it and saves its result in
``RUN/results/`` (where the report's section reads it). A step whose result file already exists is
skipped, so an interrupted demo resumes where it stopped. Ablation is not a step: it retrains the
network several times (minutes); run ``convlens ablate runs/demo --remove conv3 --remove conv4``.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Callable

# (name, result file that marks it done, "module:function" taking the Run)
STEPS: list[tuple[str, str, str]] = [
    ("health", "health.json", "convlens.cli.demo_steps:demo_health"),
    ("probes", "probe.json", "convlens.cli.demo_steps:demo_probe"),
    ("invariance", "invariance-rotate.json", "convlens.cli.demo_steps:demo_invariance"),
    ("linear fooling", "eps-vs-dimension.json", "convlens.cli.demo_steps:demo_linear_fooling"),
]


def run_steps(run, echo: Callable[[str], None] = print) -> None:
    """Run every step not yet done on ``run`` (a Run with a directory)."""
    results = Path(run.dir) / "results"
    for name, marker, target in STEPS:
        if (results / marker).exists():
            echo(f"  {name:<16} done before")
            continue
        module, function = target.split(":")
        t0 = time.perf_counter()
        getattr(importlib.import_module(module), function)(run)
        echo(f"  {name:<16} {time.perf_counter() - t0:5.1f} s")


# ---- steps for the insight commands (the visualization commands define their own demo_* functions) --

def demo_health(run) -> None:
    from ..insight.health import health

    health(run, progress=False).save(Path(run.dir) / "results" / "health.json")


def demo_probe(run) -> None:
    from ..insight.probes import probe

    probe(run, per_class=(5, 30), repeats=3, progress=False).save(Path(run.dir) / "results" / "probe.json")


def demo_invariance(run) -> None:
    from ..insight.invariance import TRANSFORMS, invariance

    for t in TRANSFORMS:  # rotate last: its file marks the step done
        invariance(run, transform=t, n_images=5).save(Path(run.dir) / "results" / f"invariance-{t}.json")


def demo_linear_fooling(run) -> None:
    from ..insight.linear_fooling import eps_vs_dimension

    eps_vs_dimension("photos").save(Path(run.dir) / "results" / "eps-vs-dimension.json")
