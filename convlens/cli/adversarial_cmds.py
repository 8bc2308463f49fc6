"""`convlens adversarial`: a thin wrapper over convlens.adversarial (Szegedy et al. 2014; FGSM, PGD).

Saves ``RUN/results/adversarial.json/.npz`` and ``adversarial.png`` (the triptychs; with other options,
beside them as ``adversarial@<key>.*``), and with ``--sweep`` ``RUN/results/fgsm-sweep.json`` (accuracy
vs eps); the report's adversarial section reads them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..results import saving
from .app import app
from .inversion_cmds import load_inputs
from .options import given_options
from .output import echo_saved, show_progress, warn_missed

SWEEP_EPS = (0.0, 1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


def pick_images(run, n: int, *, avoid: int | None = None) -> list[int]:
    """Rows of the run's test data: correctly classified, of different classes, none of class ``avoid``."""
    import torch

    from ..training.evaluate import run_test_data
    from ..synthesis.adversarial import _probs

    data = run_test_data(run)
    rows, seen = [], set()
    head = data.images[:200]
    pred = _probs(run.pixel_model(), head.to(run.device)).argmax(1).cpu()
    labels = torch.as_tensor(data.labels[:200])
    for i in range(len(head)):
        k = int(labels[i])
        if pred[i] == k and k != avoid and k not in seen:
            rows.append(i)
            seen.add(k)
        if len(rows) == n:
            break
    return rows


def attack(run, images, labels, target, *, options: dict | None = None, method: str = "lbfgs", eps: float = 8 / 255,
           steps: int | None = None, c: float | None = None, indices=(), progress: bool = False):
    """The attack on ``images`` with its triptychs, saved as the default result, or beside it with ``options``
    (the command's); returns (the AdversarialResult, the JSON's path or None)."""
    from ..plots.common import to_png
    from ..synthesis.adversarial import adversarial

    with saving(run, "adversarial", options) as saver:
        result = adversarial(run, images, target, method=method, eps=eps, steps=steps, c=c, labels=labels,
                             indices=indices, progress=progress, **({"search_steps": 5} if method == "lbfgs" else {}))
        saver.save(result)
        saver.figure(lambda: to_png(result.plot()))
    return result, saver.path


def sweep(run):
    """Untargeted FGSM accuracy vs eps on the run's first 200 test images, saved with its figure; returns (the
    FGSMSweep, the JSON's path or None)."""
    from ..plots.adversarial import sweep_figure
    from ..plots.common import to_png
    from ..synthesis.adversarial import fgsm_sweep
    from ..training.evaluate import run_test_data

    with saving(run, "fgsm-sweep") as saver:
        data = run_test_data(run)
        swept = fgsm_sweep(run, data.images[:200], data.labels[:200], SWEEP_EPS)
        saver.save(swept)
        saver.figure(lambda: to_png(sweep_figure([swept.to_dict()])))
    return swept, saver.path


@app.command("adversarial")
def adversarial_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    image: Optional[Path] = typer.Argument(None, help="An image file (default: test images of the run)."),
    index: List[int] = typer.Option([], "--index", help="Row of the run's test data; repeat for more (default: "
                                                        "4 correctly classified images of different classes)."),
    target: Optional[str] = typer.Option(None, "--target", help="Class name or index to make them into (default "
                                                                "for lbfgs: the last class; none: untargeted)."),
    method: str = typer.Option("lbfgs", "--method", help="lbfgs (Szegedy), fgsm (Goodfellow) or pgd (Madry)."),
    eps: float = typer.Option(8 / 255, "--eps", help="L∞ budget of fgsm/pgd, in [0, 1] pixel units."),
    steps: Optional[int] = typer.Option(None, "--steps", help="L-BFGS iterations per c (50) or PGD steps (20)."),
    c: Optional[float] = typer.Option(None, "--c", help="lbfgs: the distortion weight (default: line search)."),
    with_sweep: bool = typer.Option(False, "--sweep", help="Also: accuracy under untargeted FGSM vs eps (200 "
                                                           "test images)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Small distortions that change the class (Szegedy et al. 2014: "make anything an ostrich"); L2/L∞ reported."""
    from ..training.runs import load_run

    loaded = load_run(run)
    tgt = _target(loaded, target, method)
    rows = list(index)
    if image is None and not rows:
        rows = pick_images(loaded, 4, avoid=_class(loaded, tgt))
    x, labels, indices = load_inputs(loaded, image, rows)
    result, path = attack(loaded, x, labels, tgt, options=given_options(ctx, "adversarial"), method=method, eps=eps,
                          steps=steps, c=c, indices=indices, progress=show_progress(quiet))
    saved, swept = [f"{path} (+ .npz, .png)"], None
    if with_sweep:
        swept, path = sweep(loaded)
        saved.append(f"{path} (+ .png)")
    if as_json:
        typer.echo(json.dumps(result.to_dict() | ({"sweep": swept.to_dict()} if swept else {}), indent=2))
    else:
        typer.echo(repr(result))
        if swept is not None:
            typer.echo("untargeted FGSM accuracy: " + ", ".join(f"eps {255 * e:g}/255: {100 * a:.1f}%"
                                                                for e, a in zip(swept.eps, swept.accuracy)))
    if loaded.dir is not None:
        echo_saved(*saved, as_json=as_json)
    warn_missed("adversarial", result)


def _target(run, target: str | None, method: str):
    if target is None:
        return (run.class_names[-1] if run.class_names else None) if method == "lbfgs" else None
    if target.lower() == "none":
        return None
    return int(target) if target.lstrip("-").isdigit() else target


def _class(run, target) -> int | None:
    if target is None:
        return None
    if isinstance(target, str):
        return run.class_names.index(target) if run.class_names and target in run.class_names else None
    return int(target)


def demo_target(run) -> str | int:
    """The demo's "ostrich": 'heart' for the shapes demo, else the last class."""
    names = run.class_names or []
    return "heart" if "heart" in names else (names[-1] if names else 0)


def demo_adversarial(run) -> None:
    """The demo's adversarial examples: 4 correctly classified test images of different classes made into
    one class by Szegedy's L-BFGS attack, and untargeted FGSM accuracy vs eps (saved for the report)."""
    from ..training.runs import load_run

    run = load_run(run) if isinstance(run, (str, Path)) else run
    target = demo_target(run)
    rows = pick_images(run, 4, avoid=_class(run, target))
    x, labels, indices = load_inputs(run, None, rows)
    attack(run, x, labels, target, method="lbfgs", eps=8 / 255, steps=30, indices=indices)
    sweep(run)
