"""`convlens class-model` and `convlens fooling`: thin wrappers over convlens.class_model and
convlens.fooling_image.

`class-model` saves ``RUN/results/class-model.json/.npz/.png`` (or, with ``--layer``,
``unit-model.*``); `fooling` saves ``RUN/results/fooling-<method>.json/.npz/.png``: the default results,
which the report's class-model and fooling sections show. With other options (``--class star``,
``--steps 50``) a result is kept beside them, as ``<name>@<key>.*`` (convlens.results).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError, expect
from ..results import saving
from .app import app
from .options import given_options
from .output import echo_saved, show_progress, table, warn_missed

CLASS_MODEL, UNIT_MODEL = "class-model", "unit-model"


def fooling_name(method: str) -> str:
    return f"fooling-{method}"


def compute_class_model(run, targets=None, *, options: dict | None = None, n_seeds: int = 3, steps: int = 100,
                        layer: str | None = None, units=None, progress: bool = False):
    """Class models (or hidden-unit maximizations) of ``run``, saved as the default result, or beside it with
    ``options`` (the command's, see ``given_options``); returns (the result, the saved JSON's path or None)."""
    from ..plots.class_model import class_model_figure
    from ..plots.common import to_png
    from ..synthesis.class_model import class_model

    with saving(run, UNIT_MODEL if layer else CLASS_MODEL, options) as out:
        result = class_model(run, targets, layer=layer, unit=units, n_seeds=n_seeds, steps=steps, progress=progress)
        out.save(result)
        out.figure(lambda: to_png(class_model_figure(result)))
    return result, out.path


def compute_fooling(run, targets=None, *, method: str = "gradient", options: dict | None = None,
                    progress: bool = False, **kwargs):
    """Fooling images of ``run`` by ``method``, saved as the default result, or beside it with ``options``;
    returns (the result, the saved JSON's path or None)."""
    from ..plots.common import to_png
    from ..plots.fooling import fooling_figure
    from ..synthesis.fooling import fooling_image

    with saving(run, fooling_name(method), options) as out:
        result = fooling_image(run, targets, method=method, progress=progress, **kwargs)
        out.save(result)
        out.figure(lambda: to_png(fooling_figure(result)))
    return result, out.path


def last_conv(run) -> str:
    """The lecture name (or module path) of the run's last nn.Conv2d: the demo's hidden units to maximize."""
    from torch import nn

    model = run.pixel_model()
    paths = [p for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not paths:
        raise InputError("this model has no nn.Conv2d layer whose units could be maximized; give --layer")
    names = {path: name for name, path in getattr(model, "lecture_names", {}).items()}
    return names.get(paths[-1], paths[-1])


def demo_class_model(run) -> None:
    """The demo's class models: every class, 3 seeds (rows), 100 steps; and 8 units of the last conv layer."""
    from ..training.runs import load_run

    run = run if hasattr(run, "pixel_model") else load_run(run)
    compute_class_model(run, n_seeds=3, steps=100)
    compute_class_model(run, n_seeds=1, steps=100, layer=last_conv(run), units=list(range(8)))


def demo_fooling(run) -> None:
    """The demo's fooling images: one per class by gradient ascent from noise, and one per class by CPPN
    evolution (outputs only; 16 mutants per class and generation), each until every class reaches 99.6% or
    its budget is spent."""
    from ..training.runs import load_run

    run = run if hasattr(run, "pixel_model") else load_run(run)
    compute_fooling(run, method="gradient")
    compute_fooling(run, method="evolution", population=16)


# ---- commands ------------------------------------------------------------------------------------------

def _targets(run, classes: list[str], every: bool):
    if every and classes:
        raise InputError("give either --class (one or more) or --all, not both")
    if every or not classes:
        return None
    return [int(c) if c.isdigit() and not (run.class_names and c in run.class_names) else c for c in classes]


def _units(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InputError(f"--unit must be channel indices separated by commas, e.g. 0,3,7; got {text!r}") from None


@app.command("class-model")
def class_model_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    classes: List[str] = typer.Option([], "--class", help="Class name or index; repeat for more."),
    every: bool = typer.Option(False, "--all", help="Every class (one column each)."),
    seeds: int = typer.Option(3, "--seeds", help="Random starts per class (one row each)."),
    steps: int = typer.Option(100, "--steps", help="Gradient steps."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Maximize hidden units of this layer instead."),
    unit: Optional[str] = typer.Option(None, "--unit", help="With --layer: channel indices, comma-separated."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Class model visualization: the image maximizing a class score (Simonyan et al. 2014) or a hidden unit."""
    from ..training.runs import load_run
    from ..synthesis.class_model import to_dict

    loaded = load_run(run)
    if layer is None and (unit is not None):
        raise InputError("--unit goes with --layer (the layer whose channels to maximize)")
    if layer is not None and (classes or every):
        raise InputError("give either --class/--all (class models) or --layer with --unit (hidden units)")
    if layer is None and not classes and not every:
        raise InputError("give --class NAME (repeatable) or --all")
    units = _units(unit) if layer is not None else None
    if layer is not None and units is None:
        units = list(range(8))
    result, saved = compute_class_model(loaded, None if layer else _targets(loaded, classes, every),
                                        options=given_options(ctx, UNIT_MODEL if layer else CLASS_MODEL),
                                        n_seeds=seeds, steps=steps, layer=layer, units=units,
                                        progress=show_progress(quiet))
    if as_json:
        typer.echo(json.dumps(to_dict(result, schema="convlens.class_model/1"), indent=2))
    else:
        typer.echo(_class_model_text(result, steps))
    if saved is not None:
        echo_saved(f"{saved} (+ .npz, .png)", as_json=as_json)
    warn_missed(UNIT_MODEL if layer else CLASS_MODEL, result)


def _class_model_text(result, steps: int) -> str:
    """Per image: class (or unit) and seed, score and P(class) (or activation) before -> after, top-1 or not."""
    info = result.info
    seeds = f"{info['n_seeds']} seed{'s' if info['n_seeds'] > 1 else ''}, {steps} steps"
    if info["kind"] == "unit":
        rows = [[info["labels"][i], str(info["seeds"][i]),
                 f"{info['activation_before'][i]:.3f} -> {info['activation_after'][i]:.3f}"]
                for i in range(len(result))]
        return (f"hidden-unit maximization: {info['n_targets']} unit{'s' if info['n_targets'] > 1 else ''} x {seeds}\n"
                + table(["unit", "seed", "activation before -> after"], rows))
    top1 = [t == c for t, c in zip(info["top1"], info["targets"])]
    rows = [[info["labels"][i], str(info["seeds"][i]),
             f"{info['score_before'][i]:.2f} -> {info['score_after'][i]:.2f}",
             f"{100 * info['prob_before'][i]:.2f}% -> {100 * info['prob_after'][i]:.2f}%",
             "yes" if top1[i] else "no"] for i in range(len(result))]
    return (f"class models (Simonyan et al. 2014): {info['n_targets']} class{'es' if info['n_targets'] > 1 else ''} "
            f"x {seeds}\n"
            + table(["class", "seed", "score before -> after", "P(class) before -> after", "top-1"], rows)
            + f"\n  {sum(top1)}/{len(result)} images are classified as their class")


@app.command("fooling")
def fooling_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    classes: List[str] = typer.Option([], "--class", help="Class name or index; repeat for more (default: all)."),
    every: bool = typer.Option(False, "--all", help="Every class (the default)."),
    method: str = typer.Option("gradient", "--method", help="gradient (ascent from noise) or evolution "
                                                            "(outputs only)."),
    encoding: str = typer.Option("cppn", "--encoding", help="evolution: cppn or direct."),
    confidence: float = typer.Option(0.996, "--confidence", help="Goal: P(class) of each image."),
    steps: int = typer.Option(500, "--steps", help="gradient: the budget (it stops once every image reaches "
                                                   "the confidence)."),
    generations: int = typer.Option(2000, "--generations", help="evolution: the budget (it stops once every "
                                                               "image reaches the confidence)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Fooling images (Nguyen et al. 2015): unrecognizable images classified with >= 99.6% confidence."""
    from ..training.runs import load_run
    from ..synthesis.class_model import to_dict
    from ..synthesis.fooling import METHODS

    if method not in METHODS:
        raise expect("--method", " or ".join(METHODS), method)
    loaded = load_run(run)
    settings = {"steps": steps} if method == "gradient" else {"generations": generations, "encoding": encoding}
    result, saved = compute_fooling(loaded, _targets(loaded, classes, every), method=method,
                                    options=given_options(ctx, fooling_name(method)), confidence=confidence,
                                    seed=seed, progress=show_progress(quiet), **settings)
    if as_json:
        typer.echo(json.dumps(to_dict(result, schema="convlens.fooling/1"), indent=2))
    else:
        typer.echo(_fooling_text(result))
    if saved is not None:
        echo_saved(f"{saved} (+ .npz, .png)", as_json=as_json)
    warn_missed(fooling_name(method), result)


def _fooling_text(result) -> str:
    """Per image: class, P(class) at the start (the noise, or the best random CPPN) -> on the returned image,
    top-1 or not, and whether (when) it reached the goal."""
    import numpy as np

    info = result.info
    gradient = info["method"] == "gradient"
    when, unit = (info["steps_to_reach"], "step") if gradient else (info["generation_reached"], "generation")
    start = np.exp(result.history[0])  # (N,) the objective is log P(class)
    rows = [[info["labels"][i], f"{100 * start[i]:.2f}% -> {100 * info['confidence'][i]:.2f}%",
             "yes" if info["top1"][i] == info["targets"][i] else "no",
             f"at {unit} {when[i]}" if info["reached"][i] else "no"] for i in range(len(result))]
    goal = f"{100 * info['confidence_goal']:.1f}%"
    total = f"{info['steps']} steps" if gradient else f"{info['generations']} generations"
    how = "gradient ascent from noise" if gradient else f"evolution of {info['encoding']} images (outputs only)"
    return (f"fooling images (Nguyen et al. 2015) by {how}; goal P(class) >= {goal}\n"
            + table(["class", "P(class) start -> end", "top-1", f"reached {goal}"], rows)
            + f"\n  {sum(info['reached'])}/{len(result)} reached {goal} in {total}, "
              f"{info['evaluations']:,} images scored")  # why each missed: warn_missed, on stderr
