"""`convlens saliency`: saliency maps with their GrabCut segmentation, deconvnet and guided backprop
projections of a few images (thin over ``convlens.units.segment.explain``); with ``--method gradcam``,
``gradcam++``, ``guided-gradcam``, ``smoothgrad`` or ``ig``, the newer maps of the same images (thin over
``convlens.units.attribution_views.attribute``: all five at once).

Saves ``RUN/results/saliency.json`` + ``saliency.npz`` (read by the report's saliency section), or for
the newer maps ``RUN/results/attribution.*`` (the report's attribution section), and a figure of the
chosen ``--method`` (default ``RUN/results/<name>-<method>.png``); with an IMAGE, ``--index``,
``--target``, ``--n`` (or ``--layer``, ``--samples``, ``--noise``, ``--steps``), beside them as
``<name>@<key>.*``. ``demo_saliency(run)`` / ``demo_attribution(run)`` compute the default results (one
image per class).
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
VIEWS = ("gradcam", "gradcam++", "guided-gradcam", "smoothgrad", "ig")  # the attribution result's (attribution_views)


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
    from ..units.segment import explain

    x, rows, labels, masks, data = chosen_images(run, image, indices, n)
    if image is not None:
        return explain(run, x, target, iterations=iterations, data=data)
    return explain(run, x, target, labels=labels, true_masks=masks, indices=rows, iterations=iterations, data=data)


def compute_views(run, *, image: Optional[Path] = None, indices: Optional[List[int]] = None, target=None,
                  n: int = 8, **how):
    """The AttributionResult (Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad, IG) of the images ``compute``
    picks; ``how``: ``attribute``'s layer, samples, noise and steps."""
    from ..units.attribution_views import attribute

    x, rows, labels, _, data = chosen_images(run, image, indices, n)
    return attribute(run, x, target, labels=labels, indices=rows, data=data, **how)


def chosen_images(run, image: Optional[Path], indices: Optional[List[int]], n: int):
    """(images (N, C, H, W), test-split rows, their labels, true masks or None, what the data is called) of
    ``image`` (a file) or rows ``indices`` of the run's test split (default: one correct image per class)."""
    from ..data.images import load_image
    from ..training.evaluate import run_test_data

    if image is not None:
        if indices:
            raise InputError(f"give an IMAGE or --index rows of the test split, not both; got {image} and {indices}")
        c, h, w = run.input_shape
        return load_image(image, size=(h, w), channels=c)[None], (), None, None, str(image)  # (1, C, H, W)
    data = run_test_data(run)
    if indices:
        bad = [i for i in indices if not 0 <= i < len(data.labels)]
        if bad:
            raise InputError(f"--index must be rows of the test split, 0-{len(data.labels) - 1}; got {bad}")
    rows = list(indices) if indices else pick_images(data, run.pixel_model(), n)
    masks = getattr(data, "masks", None)
    return (data.images[rows], rows, data.labels[rows], None if masks is None else masks[rows],
            f"{getattr(data, 'name', 'data')} (test split)")


def run_saliency(run, *, options: dict | None = None, method: str = "saliency", figure: Optional[Path] = None,
                 **how) -> tuple:
    """``compute(run, **how)`` saved as the default result (or beside it with ``options``, the command's) and
    its ``method`` figure (``figure``, else ``RUN/results/<stem>-<method>.png``); returns (the result, the
    JSON's path, the figure's)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png

    views = method in VIEWS
    with saving(run, "attribution" if views else "saliency", options) as saver:
        result = compute_views(run, **how) if views else compute(run, **how)
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
                                                            "deconvnet or guided; or the newer maps (all computed "
                                                            "and saved as the attribution result): gradcam, "
                                                            "gradcam++, guided-gradcam, smoothgrad or ig."),
    n: int = typer.Option(8, "--n", help="Images when no --index is given."),
    layer: Optional[str] = typer.Option(None, "--layer", help="Grad-CAM's layer (default: the last conv layer's "
                                                              "rectified feature maps)."),
    samples: int = typer.Option(50, "--samples", help="SmoothGrad's noisy copies per image."),
    noise: float = typer.Option(0.15, "--noise", help="SmoothGrad's noise std, a fraction of the image's range."),
    steps: int = typer.Option(50, "--steps", help="Integrated Gradients' points on the path (Gauss-Legendre)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Figure path (default RUN/results/saliency-METHOD.png, "
                                                           "or attribution-METHOD.png)."),
) -> None:
    """Class saliency + GrabCut segmentation (Simonyan et al. 2014), deconvnet (Zeiler & Fergus 2014) and
    guided backprop (Springenberg et al. 2015) of a few images; Grad-CAM (Selvaraju et al. 2017), Grad-CAM++
    (Chattopadhay et al. 2018), guided Grad-CAM, SmoothGrad (Smilkov et al. 2017) and Integrated Gradients
    (Sundararajan et al. 2017) with --method gradcam|gradcam++|guided-gradcam|smoothgrad|ig."""
    from ..training.runs import load_run

    if method not in METHODS + VIEWS:
        raise InputError(f"--method must be one of {', '.join(METHODS + VIEWS)}; got {method!r}")
    views = method in VIEWS
    loaded = load_run(run)
    require_run_dir(loaded, run)
    chosen = int(target) if target is not None and target.lstrip("-").isdigit() else target
    how = dict(layer=layer, samples=samples, noise=noise, steps=steps) if views else {}
    result, saved, figure = run_saliency(loaded, options=given_options(ctx, "attribution" if views else "saliency"),
                                         method=method, figure=out, image=image, indices=index, target=chosen, n=n,
                                         **how)
    typer.echo(repr(result))
    echo_saved(f"{saved} (+ .npz)", figure)


def demo_saliency(run) -> None:
    """Saliency, GrabCut masks (with IoU against the true shapes masks), deconvnet and guided backprop of
    one test image per class; saved where the report's saliency section reads them."""
    from ..training.runs import load_run

    run_saliency(run if hasattr(run, "pixel_model") else load_run(run), n=8)


def demo_attribution(run) -> None:
    """Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad and Integrated Gradients of one test image per class;
    saved where the report's attribution section reads them."""
    from ..training.runs import load_run

    run_saliency(run if hasattr(run, "pixel_model") else load_run(run), method="gradcam", n=8)
