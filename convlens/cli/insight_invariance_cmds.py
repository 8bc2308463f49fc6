"""`convlens invariance` and `convlens fool-linear`: thin wrappers over convlens.invariance,
convlens.fool_linear and convlens.eps_vs_dimension.

`invariance` saves ``RUN/results/invariance-<transform>.json`` (read by the report's invariance
section; with other options, beside it as ``invariance-<transform>@<key>.json``); `fool-linear --dims`
saves to ``--out`` (`convlens demo` keeps the report's ``RUN/results/eps-vs-dimension.json``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError, expect
from ..results import saving
from .app import app
from .options import ON_ERROR, SPLIT, given_options, load_data
from .output import echo_saved


def _floats(text: str | None, option: str) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InputError(f"{option} must be numbers separated by commas, e.g. 2,-1,3; got {text!r}")
    return values


@app.command("invariance")
def invariance_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    transform: str = typer.Option("translate", "--transform", help="translate, scale, rotate, or all."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: first, middle "
                                                                "and last conv, and the last fc)."),
    n: int = typer.Option(5, "--n", help="Images (of different classes, correctly classified first)."),
    amounts: Optional[str] = typer.Option(None, "--amounts", help="Comma-separated amounts (px, factor or degrees; "
                                                                  "default: the paper-like sweep)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split)."),
    fill: str = typer.Option("border", "--fill", help="Resampling fill for non-shapes data: border, zeros, "
                                                      "reflection."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    split: str = SPLIT,
    on_error: str = ON_ERROR,
) -> None:
    """Feature distance per layer, P(true class), prediction vs translation/scale/rotation (Zeiler & Fergus Fig. 5)."""
    from ..insight.invariance import TRANSFORMS, invariance
    from ..training.runs import load_run

    chosen = list(TRANSFORMS) if transform == "all" else [transform]
    loaded = load_run(run)
    images = load_data(loaded, data, split, on_error)
    names = None if layers is None else [s.strip() for s in layers.split(",") if s.strip()]
    out, saved = [], []
    for t in chosen:
        if t not in TRANSFORMS:
            raise expect("--transform", ", ".join(TRANSFORMS) + " or all", t)
        with saving(loaded, f"invariance-{t}", given_options(ctx, f"invariance-{t}")) as saver:
            result = invariance(loaded, images, transform=t, amounts=_floats(amounts, "--amounts"), layers=names,
                                n_images=n, fill=fill)
            saved.append(saver.save(result))
        out.append(result)
    if as_json:
        payload = [r.to_dict() for r in out]
        typer.echo(json.dumps(payload[0] if len(payload) == 1 else payload, indent=2))
    else:
        typer.echo("\n\n".join(repr(r) for r in out))
    if loaded.dir is not None:
        echo_saved(*saved, as_json=as_json)


@app.command("fool-linear")
def fool_linear_cmd(
    x: Optional[str] = typer.Option(None, "--x", help="Input, comma-separated (default: the lecture's 10 numbers)."),
    w: Optional[str] = typer.Option(None, "--w", help="Weights, comma-separated (default: the lecture's)."),
    b: float = typer.Option(0.0, "--b", help="Bias."),
    eps: float = typer.Option(0.5, "--eps", help="Nudge per dimension."),
    target: int = typer.Option(1, "--target", help="Class to push towards (1: x + eps*sign(w), 0: x - eps*sign(w))."),
    dims: bool = typer.Option(False, "--dims", help="Instead: the smallest flipping nudge vs input dimension, "
                                                    "measured with logistic regressions on images."),
    data: str = typer.Option("photos", "--data", help="With --dims: dataset name or path."),
    classes: Optional[str] = typer.Option(None, "--classes", help="With --dims: the two classes, comma-separated "
                                                                  "(default: cat,coffee, else the first two)."),
    sizes: str = typer.Option("4,8,16,32,64", "--sizes", help="With --dims: square resolutions."),
    n_per_class: int = typer.Option(100, "--n-per-class", help="With --dims: training images per class."),
    out: Optional[Path] = typer.Option(None, "--out", help="With --dims: write the result JSON here (e.g. "
                                                           "RUN/results/eps-vs-dimension.json for the report)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the text."),
) -> None:
    """The lecture's "fool a binary linear classifier" walk-through (or, with --dims, nudge vs dimension)."""
    from ..insight.linear_fooling import LECTURE_W, LECTURE_X, eps_vs_dimension, fool_linear

    if dims:
        size_list = [int(v) for v in _floats(sizes, "--sizes")]
        pair = None if classes is None else [c.strip() for c in classes.split(",") if c.strip()]
        pair = None if pair is None else [int(c) if c.isdigit() else c for c in pair]
        result = eps_vs_dimension(data, classes=pair, sizes=size_list, n_per_class=n_per_class)
    else:
        result = fool_linear(_floats(x, "--x") or LECTURE_X, _floats(w, "--w") or LECTURE_W, b, eps, target=target)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
    if dims and out is not None:
        echo_saved(result.save(out), as_json=as_json)
