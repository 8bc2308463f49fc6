"""The analyses `convlens demo` runs after training, so that its report shows every section.

Each step computes the default results of one analysis on the demo run (options sized for it) into the
run's results store. A step is done when every result it makes is there and current (convlens.results:
made from these weights and data), so an interrupted demo resumes where it stopped, results computed
with other options (``convlens fooling RUN --class star``) leave it done, and ``force`` recomputes.
Each result's record keeps the seconds it took. Ablation is not a step: it retrains the network several
times (minutes); run ``convlens ablate runs/demo --remove conv3 --remove conv4``.
"""
from __future__ import annotations

import importlib
import time
from typing import Callable

from ..results import CURRENT, ResultStore, saving

# (name, the results it makes, "module:function" taking the Run), in report order
STEPS: list[tuple[str, tuple[str, ...], str]] = [
    ("health", ("health",), "convlens.cli.demo_steps:demo_health"),
    ("probes", ("probe",), "convlens.cli.demo_steps:demo_probe"),
    ("invariance", ("invariance-translate", "invariance-scale", "invariance-rotate"),
     "convlens.cli.demo_steps:demo_invariance"),
    ("linear fooling", ("eps-vs-dimension",), "convlens.cli.demo_steps:demo_linear_fooling"),
    ("filters", ("filters",), "convlens.cli.filters_cmds:demo_filters"),
    ("top-9 patches", ("top-patches",), "convlens.cli.patches_cmds:demo_patches"),
    ("saliency", ("saliency",), "convlens.cli.backprop_cmds:demo_saliency"),
    ("attribution", ("attribution",), "convlens.cli.backprop_cmds:demo_attribution"),
    ("occlusion", ("occlusion",), "convlens.cli.occlusion_cmds:demo_occlusion"),
    ("sanity checks", ("sanity",), "convlens.cli.sanity_cmd:demo_sanity"),
    ("class models", ("class-model", "unit-model"), "convlens.cli.class_model_cmds:demo_class_model"),
    ("optimal stimuli", ("optimal-stimuli", "hessian-invariances"), "convlens.cli.invariances_cmds:demo_invariances"),
    ("inversion", ("inversion", "inversion-quadrants"), "convlens.cli.inversion_cmds:demo_inversion"),
    ("adversarial", ("adversarial", "fgsm-sweep"), "convlens.cli.adversarial_cmds:demo_adversarial"),
    ("fooling images", ("fooling-gradient", "fooling-evolution"), "convlens.cli.class_model_cmds:demo_fooling"),
    ("code space", ("codes-agreement", "codes-neighbors", "codes-tsne"), "convlens.cli.codes_cmds:demo_codes"),
]
RESULTS = tuple(name for _, names, _ in STEPS for name in names)


def run_steps(run, echo: Callable[[str], None] = print, *, force: bool = False,
              steps: list[tuple[str, tuple[str, ...], str]] | None = None) -> None:
    """Run every step of ``run`` (a Run with a directory) whose default results are not all current (every
    step with ``force``); ``steps`` in the form of ``STEPS`` (default: those)."""
    store = ResultStore.of(run)
    for name, results, target in STEPS if steps is None else steps:
        entries = [store.entry(result) for result in results]
        if not force and all(e is not None and e.state == CURRENT for e in entries):
            echo(f"  {name:<16} done before ({sum(e.seconds or 0 for e in entries):.1f} s)")
            continue
        module, function = target.split(":")
        t0 = time.perf_counter()
        getattr(importlib.import_module(module), function)(run)
        echo(f"  {name:<16} {time.perf_counter() - t0:5.1f} s")


# ---- steps for the insight commands (the visualization commands define their own demo_* functions) --

def demo_health(run) -> None:
    from ..insight.health import health

    with saving(run, "health") as saver:
        saver.save(health(run, progress=False))


def demo_probe(run) -> None:
    from ..insight.probes import probe

    with saving(run, "probe") as saver:
        saver.save(probe(run, per_class=(5, 30), repeats=3, progress=False))


def demo_invariance(run) -> None:
    from ..insight.invariance import TRANSFORMS, invariance

    for t in TRANSFORMS:
        with saving(run, f"invariance-{t}") as saver:
            saver.save(invariance(run, transform=t, n_images=5))


def demo_linear_fooling(run) -> None:
    from ..insight.linear_fooling import eps_vs_dimension

    with saving(run, "eps-vs-dimension") as saver:
        saver.save(eps_vs_dimension("photos"))
