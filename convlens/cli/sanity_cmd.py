"""`convlens sanity RUN`: which saliency maps depend on the model (thin over ``convlens.sanity_check``).

Saves ``RUN/results/sanity.json`` + ``.npz`` (read by the report's sanity section) and the curves
``RUN/results/sanity.png`` (and ``sanity-maps.png``); with other options, beside them as ``sanity@<key>.*``.
``--random-labels-run`` defaults to ``RUN/random-labels`` when that holds a run (``demo_sanity`` trains one
there: the demo net on 1,000 of its images with shuffled labels, in seconds).
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..results import saving
from .app import app
from .options import given_options, require_run_dir
from .output import echo_saved

RANDOM_LABELS = "random-labels"  # RUN/<this>: the run trained on shuffled labels, found by default
# the demo's shuffled-label model: 1,000 training images, 8 epochs without augmentation (memorizing is what it
# can do; its test accuracy stays at chance), about 15 s on 2 CPU cores
DEMO_RANDOM_LABELS = dict(data={"name": "shapes", "n": 1000}, epochs=8, augment=False, lr=3e-3)


def compute(run, *, indices: Optional[List[int]] = None, target=None, n: int = 4, methods=None,
            random_labels=None, **how):
    """The SanityResult of rows ``indices`` of the run's test split (default: ``n`` images, one per class,
    correctly classified where possible) against ``random_labels`` (a run directory, or None)."""
    from ..units.sanity import METHODS, sanity_check
    from .backprop_cmds import chosen_images

    images = chosen_images(run, None, indices, n)[0]
    return sanity_check(run, images, target, methods=tuple(methods or METHODS),
                        random_labels_model=random_labels, **how)


def default_random_labels(run) -> Path | None:
    """``RUN/random-labels`` when it holds a finished run, else None."""
    folder = Path(run.dir) / RANDOM_LABELS
    return folder if (folder / "run.json").is_file() and (folder / "weights.safetensors").is_file() else None


def run_sanity(run, *, options: dict | None = None, figure: Optional[Path] = None, **how) -> tuple:
    """``compute(run, **how)`` saved as the default result (or beside it with ``options``) with its figures;
    returns (the result, the JSON's path, the curves' figure path)."""
    from ..io import atomic_write_bytes
    from ..plots.common import to_png

    with saving(run, "sanity", options) as saver:
        result = compute(run, **how)
        saved = saver.save(result)
        curves = lambda: to_png(result.plot())  # noqa: E731
        path = atomic_write_bytes(figure, curves()) if figure is not None else saver.figure(curves)
        if figure is None:
            saver.figure(lambda: to_png(result.plot_maps()), "-maps")
    return result, saved, path


@app.command("sanity")
def sanity_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    index: Optional[List[int]] = typer.Option(None, "--index", help="Rows of the test split (repeatable; default: "
                                                                    "--n images, one per class)."),
    n: int = typer.Option(4, "--n", help="Images when no --index is given."),
    target: Optional[str] = typer.Option(None, "--target", help="Class index or name (default: the predicted "
                                                                "class of each image)."),
    method: Optional[List[str]] = typer.Option(None, "--method", help="A method to check (repeatable; default: "
                                                                      "saliency, deconvnet, guided, gradcam, "
                                                                      "guided-gradcam, smoothgrad, ig, occlusion; "
                                                                      "also gradcam++)."),
    random_labels_run: Optional[Path] = typer.Option(None, "--random-labels-run", help="A run of the same network "
                                                     "trained on shuffled labels (`convlens.train(..., "
                                                     "shuffle_labels=True)`; default: RUN/random-labels if there)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Merge neighbouring layers into at most this "
                                                                      "many randomization steps."),
    samples: int = typer.Option(20, "--samples", help="SmoothGrad's noisy copies per image (inside the cascade: "
                                                      "the papers' 50 gave the demo net the same verdicts)."),
    steps: int = typer.Option(20, "--steps", help="Integrated Gradients' points on the path."),
    seed: int = typer.Option(0, "--seed", help="Seed of the re-initialization and of SmoothGrad's noise."),
    out: Optional[Path] = typer.Option(None, "--out", help="Figure path (default RUN/results/sanity.png)."),
) -> None:
    """Adebayo et al. 2018's sanity checks: each map against the model's layers re-initialized from the top,
    and against a model trained on shuffled labels; a verdict per method."""
    from ..training.runs import load_run

    loaded = load_run(run)
    require_run_dir(loaded, run)
    chosen = int(target) if target is not None and target.lstrip("-").isdigit() else target
    other = random_labels_run if random_labels_run is not None else default_random_labels(loaded)
    result, saved, figure = run_sanity(loaded, options=given_options(ctx, "sanity"), figure=out, indices=index, n=n,
                                       target=chosen, methods=method, random_labels=other, max_steps=max_steps,
                                       samples=samples, steps=steps, seed=seed)
    typer.echo(repr(result))
    echo_saved(f"{saved} (+ .npz)", figure)


DEMO_SANITY = dict(n=4, samples=20, steps=20)  # the command's defaults: 4 images; SmoothGrad / IG inside the
# cascade at 20 (the papers' 50 gave the demo net the same verdicts, at 2.5x the time)


def demo_sanity(run, **how) -> None:
    """The sanity checks of every method on 4 demo test images (``DEMO_SANITY``), against the demo net trained on
    shuffled labels (trained first into RUN/random-labels, or resumed); saved where the report's sanity section
    reads them."""
    from ..training.fit import DEMO_RECIPE, train
    from ..training.runs import load_run

    run = run if hasattr(run, "pixel_model") else load_run(run)
    recipe = {**DEMO_RECIPE, **DEMO_RANDOM_LABELS}
    train(**recipe, out=Path(run.dir) / RANDOM_LABELS, shuffle_labels=True, progress=False)
    run_sanity(run, random_labels=Path(run.dir) / RANDOM_LABELS, **{**DEMO_SANITY, **how})
