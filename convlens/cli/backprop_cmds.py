"""`convlens saliency`: saliency maps with their GrabCut segmentation, deconvnet and guided backprop
projections of a few images (thin over ``convlens.units.segment.explain``).

Saves ``RUN/results/saliency.json`` + ``saliency.npz`` (read by the report's saliency section) and
a figure of the chosen ``--method`` (default ``RUN/results/saliency-<method>.png``); with an IMAGE,
``--index``, ``--target`` or ``--n``, beside them as ``saliency@<key>.*``.
``demo_saliency(run)`` computes the default result (one image per class).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ..results import saving
from .app import app
from .options import given_options, require_run_dir
from .output import echo_saved

METHODS = ("saliency", "deconvnet", "guided")


def pick_images(data, model, n: int) -> list[int]:
    """Up to ``n`` rows of ``data``, one per class in class order, each the first image of its class
    the model classifies correctly (else its first image)."""
    import torch

    from ..taps import eval_mode

    labels = torch.as_tensor(data.labels)
    chosen = []
    for c in torch.unique(labels).tolist():
        rows = torch.nonzero(labels == c).flatten()[:16]
        with torch.no_grad(), eval_mode(model):
            pred = model(data.images[rows]).argmax(1).cpu()
        good = rows[pred == c]
        chosen.append(int(good[0] if len(good) else rows[0]))
        if len(chosen) == n:
            break
    return chosen


def compute(run, *, image: Optional[Path] = None, indices: Optional[List[int]] = None, target=None, n: int = 8,
            iterations: int = 5):
    """The BackpropResult for ``image`` (a file) or rows ``indices`` of the run's test split (default:
    one correctly classified image per class)."""
    from ..data.images import load_image
    from ..training.evaluate import run_test_data
    from ..units.segment import explain

    model = run.pixel_model()
    if image is not None:
        if indices:
            raise InputError(f"give an IMAGE or --index rows of the test split, not both; got {image} and {indices}")
        c, h, w = run.input_shape
        x = load_image(image, size=(h, w), channels=c)[None]  # (1, C, H, W)
        return explain(run, x, target, iterations=iterations, data=str(image))
    data = run_test_data(run)
    if indices:
        bad = [i for i in indices if not 0 <= i < len(data.labels)]
        if bad:
            raise InputError(f"--index must be rows of the test split, 0-{len(data.labels) - 1}; got {bad}")
    rows = list(indices) if indices else pick_images(data, model, n)
    masks = getattr(data, "masks", None)
    return explain(run, data.images[rows], target, labels=data.labels[rows],
                   true_masks=None if masks is None else masks[rows], indices=rows, iterations=iterations,
                   data=f"{getattr(data, 'name', 'data')} (test split)")


def run_saliency(run, *, options: dict | None = None, method: str = "saliency", figure: Optional[Path] = None,
                 **how) -> tuple:
    """``compute(run, **how)`` saved as the default result (or beside it with ``options``, the command's) and
    its ``method`` figure (``figure``, else ``RUN/results/<stem>-<method>.png``); returns (the result, the
    JSON's path, the figure's)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png

    with saving(run, "saliency", options) as saver:
        result = compute(run, **how)
        saved = saver.save(result)
        render = lambda: to_png(result.plot(method))  # noqa: E731
        figure = atomic_write_bytes(figure, render()) if figure is not None else saver.figure(render, f"-{method}")
    return result, saved, figure


@app.command("saliency")
def saliency_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    image: Optional[Path] = typer.Argument(None, help="An image file (default: images of the run's test split)."),
    index: Optional[List[int]] = typer.Option(None, "--index", help="Rows of the test split (repeatable; default: "
                                                                    "one correctly classified image per class)."),
    target: Optional[str] = typer.Option(None, "--target", help="Class index or name (default: the predicted "
                                                                "class of each image)."),
    method: str = typer.Option("saliency", "--method", help="Figure to draw: saliency (with the GrabCut mask), "
                                                            "deconvnet or guided."),
    n: int = typer.Option(8, "--n", help="Images when no --index is given."),
    out: Optional[Path] = typer.Option(None, "--out", help="Figure path (default RUN/results/saliency-METHOD.png)."),
) -> None:
    """Class saliency + GrabCut segmentation (Simonyan et al. 2014), deconvnet (Zeiler & Fergus 2014) and
    guided backprop (Springenberg et al. 2015) of a few images."""
    from ..training.runs import load_run

    if method not in METHODS:
        raise InputError(f"--method must be one of {', '.join(METHODS)}; got {method!r}")
    loaded = load_run(run)
    require_run_dir(loaded, run)
    chosen = int(target) if target is not None and target.lstrip("-").isdigit() else target
    result, saved, figure = run_saliency(loaded, options=given_options(ctx, "saliency"), method=method, figure=out,
                                         image=image, indices=index, target=chosen, n=n)
    typer.echo(repr(result))
    echo_saved(f"{saved} (+ .npz)", figure)


def demo_saliency(run) -> None:
    """Saliency, GrabCut masks (with IoU against the true shapes masks), deconvnet and guided backprop of
    one test image per class; saved where the report's saliency section reads them."""
    from ..training.runs import load_run

    run_saliency(run if hasattr(run, "pixel_model") else load_run(run), n=8)
