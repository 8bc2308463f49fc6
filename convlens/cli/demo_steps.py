"""The analyses `convlens demo` runs after training, so that its report shows every section.

Each step computes one analysis on the demo run with defaults sized for it and saves its result in
``RUN/results/`` (where the report's section reads it). Finished steps are listed in
``RUN/results/demo-steps.json`` (rewritten atomically after each) and skipped on the next run, so an
interrupted demo resumes where it stopped. Ablation is not a step: it retrains the
network several times (minutes); run ``convlens ablate runs/demo --remove conv3 --remove conv4``.
"""
from __future__ import annotations

import importlib
import time
from pathlib import Path
from typing import Callable

# (name, "module:function" taking the Run), in report order
STEPS: list[tuple[str, str]] = [
    ("health", "convlens.cli.demo_steps:demo_health"),
    ("probes", "convlens.cli.demo_steps:demo_probe"),
    ("invariance", "convlens.cli.demo_steps:demo_invariance"),
    ("linear fooling", "convlens.cli.demo_steps:demo_linear_fooling"),
    ("filters", "convlens.cli.filters_cmds:demo_filters"),
    ("top-9 patches", "convlens.cli.patches_cmds:demo_patches"),
    ("saliency", "convlens.cli.backprop_cmds:demo_saliency"),
    ("occlusion", "convlens.cli.occlusion_cmds:demo_occlusion"),
    ("class models", "convlens.cli.class_model_cmds:demo_class_model"),
    ("inversion", "convlens.cli.inversion_cmds:demo_inversion"),
    ("adversarial", "convlens.cli.adversarial_cmds:demo_adversarial"),
    ("fooling images", "convlens.cli.class_model_cmds:demo_fooling"),
    ("code space", "convlens.cli.codes_cmds:demo_codes"),
]
DONE = "demo-steps.json"


def run_steps(run, echo: Callable[[str], None] = print) -> None:
    """Run every step not yet done on ``run`` (a Run with a directory)."""
    from ..io import atomic_write_json, read_json

    record = Path(run.dir) / "results" / DONE
    done = read_json(record) if record.is_file() else {}
    for name, target in STEPS:
        if name in done:
            echo(f"  {name:<16} done before ({done[name]:.1f} s)")
            continue
        module, function = target.split(":")
        t0 = time.perf_counter()
        getattr(importlib.import_module(module), function)(run)
        done[name] = round(time.perf_counter() - t0, 2)
        atomic_write_json(record, done)
        echo(f"  {name:<16} {done[name]:5.1f} s")


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
