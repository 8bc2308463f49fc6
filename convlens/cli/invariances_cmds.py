"""`convlens invariances`: a thin wrapper over convlens.optimal_stimuli and convlens.hessian_invariances (the
lecture's "other methods": Erhan et al. 2009; Le et al. 2010). Not `convlens invariance`, the curves of
a layer's response to translated, scaled and rotated images.

Saves ``RUN/results/optimal-stimuli.json/.npz/.png`` (the optima from several random starts, by cluster) and
``RUN/results/hessian-invariances.json/.npz/.png`` (the invariances of the best optimum as image sequences):
the default results, which the report's "optimal stimuli" section shows. With other options (``--layer``,
``--unit``, ``--k`` ...) they are kept beside them, as ``<name>@<key>.*`` (convlens.results).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from ..results import saving
from .app import app
from .options import given_options
from .output import echo_saved, show_progress, table, warn_missed

STIMULI, INVARIANCES = "optimal-stimuli", "hessian-invariances"


def compute_invariances(run, layer=None, unit=None, *, target=None, n_inits: int = 8, norm=None, steps: int = 200,
                        k: int = 8, beta: float | None = 10.0, refine: int = 50, seed: int = 0, options: dict | None = None,
                        stimuli_options: dict | None = None, progress: bool = False):
    """The optima of one unit (or class score) from ``n_inits`` starts and the invariances of the best, each
    saved as the default result or beside it with ``stimuli_options`` / ``options`` (the command's, see
    ``given_options``); returns (optima, invariances, [the saved JSON paths])."""
    from ..plots.common import to_png
    from ..plots.invariances import invariances_figure, optimal_stimuli_figure
    from ..synthesis.invariances import hessian_invariances
    from ..synthesis.optimal_stimuli import optimal_stimuli

    if layer is None and target is None:
        from .class_model_cmds import last_conv

        layer = last_conv(run)
    if target is None and unit is None:
        unit = 0
    saved = []
    with saving(run, STIMULI, stimuli_options) as out:
        stimuli = optimal_stimuli(run, layer, unit, target=target, n_inits=n_inits, norm=norm, steps=steps, seed=seed,
                                  progress=progress)
        saved.append(out.save(stimuli))
        out.figure(lambda: to_png(optimal_stimuli_figure(stimuli)))
    with saving(run, INVARIANCES, options) as out:
        result = hessian_invariances(run, at=stimuli, k=k, beta=beta, refine=refine, seed=seed)
        saved.append(out.save(result))
        out.figure(lambda: to_png(invariances_figure(result)))
    return stimuli, result, [p for p in saved if p is not None]


def demo_invariances(run) -> None:
    """The demo's optimal stimuli and invariances: unit 0 of the last conv layer, 4 starts of 100 steps, the 8
    most invariant directions of the best optimum (softplus copy, β = 10)."""
    from ..training.runs import load_run

    run = run if hasattr(run, "pixel_model") else load_run(run)
    compute_invariances(run, n_inits=4, steps=100)


@app.command("invariances")
def invariances_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    layer: Optional[str] = typer.Option(None, "--layer", help="The unit's layer (default: the last conv layer)."),
    unit: Optional[int] = typer.Option(None, "--unit", help="The channel (its mean over positions; default 0)."),
    target: Optional[str] = typer.Option(None, "--class", help="Maximize this class score instead of a unit."),
    n_inits: int = typer.Option(8, "--inits", help="Random starts on the sphere (>= 2)."),
    norm: Optional[float] = typer.Option(None, "--norm", help="The fixed norm ||x - mean|| (default: a typical "
                                                              "image's, sqrt(H W sum std^2))."),
    steps: int = typer.Option(200, "--steps", help="Gradient steps per start."),
    k: int = typer.Option(8, "--k", help="How many invariances (the largest eigenvalues on the sphere)."),
    beta: float = typer.Option(10.0, "--beta", help="Analyse a copy with ReLUs as softplus of this beta (ReLU6 "
                                                    "as a smooth clamp); 0: the model as it is."),
    seed: int = typer.Option(0, "--seed", help="Random seed (starts, Lanczos, the random direction)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Optimal stimuli from several starts (Erhan et al. 2009) and their Hessian invariances (Le et al. 2010)."""
    from ..training.runs import load_run

    if beta < 0 or not math.isfinite(beta):
        raise InputError(f"--beta must be a positive number, or 0 for the model as it is; got {beta!r}")
    if target is not None and (layer is not None or unit is not None):
        raise InputError("give either --class (a class score) or --layer/--unit (a hidden unit), not both")
    loaded = load_run(run)
    cls = None if target is None else (int(target) if target.isdigit() and not (
        loaded.class_names and target in loaded.class_names) else target)
    stimuli, result, saved = compute_invariances(
        loaded, layer, unit, target=cls, n_inits=n_inits, norm=norm, steps=steps, k=k, beta=beta or None, seed=seed,
        options=given_options(ctx, INVARIANCES), stimuli_options=given_options(ctx, STIMULI),
        progress=show_progress(quiet))
    if as_json:
        typer.echo(json.dumps({STIMULI: stimuli.to_dict(), INVARIANCES: result.to_dict()}, indent=2))
    else:
        typer.echo(stimuli_text(stimuli) + "\n\n" + invariances_text(result))
    if saved:
        echo_saved(*(f"{p} (+ .npz, .png)" for p in saved), as_json=as_json)
    warn_missed(STIMULI, stimuli)
    warn_missed(INVARIANCES, result)


def stimuli_text(s) -> str:
    """Per optimum (sorted by cluster): seed, cluster, activation start -> end, tangential gradient."""
    import numpy as np

    info = s.info
    rows = [[str(info["seeds"][j]), str(s.clusters[j]), f"{s.start_activation[j]:.4g} -> {s.activation[j]:.4g}",
             f"{s.tangential_gradient[j]:.3f}"] for j in s.order]
    off = s.cosine[~np.eye(len(s), dtype=bool)]
    return (f"optimal stimuli (Erhan et al. 2009) of {info['label']}: {len(s)} random starts on ||x - mean|| = "
            f"{info['norm']:.4g}, {info['steps']} steps\n"
            + table(["seed", "cluster", "activation start -> end", "||P grad|| / ||grad||"], rows)
            + f"\n  {s.n_clusters} cluster{'s' if s.n_clusters != 1 else ''} (cosine >= {info['same']:g} within one); "
              f"pairwise cosine {off.min():.3f} .. {off.max():.3f}")


def invariances_text(r) -> str:
    """Per direction: kind, eigenvalue, first-order slope, the activation at -max angle / x* / +max angle."""
    info = r.info
    mid = len(r.angles) // 2
    rows = [[r.kinds[i] + (f" {i + 1}" if r.kinds[i] == "invariance" else ""), f"{r.eigenvalues[i]:.4g}",
             f"{r.slope[i]:.3g}", f"{r.activation[i, 0]:.4g} / {r.activation[i, mid]:.4g} / {r.activation[i, -1]:.4g}"]
            for i in range(len(r))]
    sm = info["smooth"]
    how = (f"softplus copy β = {sm['beta']:g} (replaced: {', '.join(f'{n} x{c}' for n, c in sm['replaced'].items())}; "
           f"activation at x* {sm['activation']:.4g} vs the model's {info['activation']:.4g})" if sm["used"]
           else "the model as it is" + (" (its Hessian is zero here: every direction alike; use --beta)"
                                        if info["degenerate"] else ""))
    return (f"invariances at x* (Berkes & Wiskott 2006; Le et al. 2010) of {info['label']}, on {how}\n"
            + table(["direction", "eigenvalue", "slope", f"activation at {-math.degrees(info['max_angle']):.0f}° / "
                                                         f"x* / {math.degrees(info['max_angle']):+.0f}°"], rows)
            + f"\n  {info['hvps']} Hessian-vector products ({info['eigen_seconds']:.1f} s, Lanczos tol "
              f"{info['tol']:g}) on {info['dimensions']:,} input dimensions; ||P grad|| / ||grad|| at x* "
              f"{info['tangential_gradient']:.3f}")
