"""`convlens probe` and `convlens ablate`: thin wrappers over convlens.probe and convlens.ablate.

Both save their result as ``RUN/results/<probe|ablation>.json``, which the report's sections read; a
probe with options other than the defaults is kept beside it (``probe@<key>.json``), an ablation
replaces the last one (``RUN/ablation`` holds one set of retrained networks).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from ..errors import InputError
from ..results import saving
from .app import app
from .options import ON_ERROR, given_options, load_data
from .output import echo_saved, show_progress


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise InputError(f"{option} must be positive ints separated by commas, e.g. 5,30; got {text!r}")
    return values


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


@app.command("probe")
def probe_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Comma-separated layers (default: every conv/fc, "
                                                                "read after its ReLU)."),
    per_class: str = typer.Option("5,30", "--per-class", help="Training images per class, one column each."),
    repeats: int = typer.Option(5, "--repeats", help="Random training splits per cell (mean ± std)."),
    classifiers: str = typer.Option("svm,softmax", "--classifiers", help="svm and/or softmax."),
    pool: str = typer.Option("max", "--pool", help="Spatial pooling of conv features: max, avg or flat."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset to draw training splits from (default: the "
                                                            "run's training data; tested on its test split)."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
    on_error: str = ON_ERROR,
) -> None:
    """Linear SVM / softmax probes on each layer's features (Zeiler & Fergus 2014, the lecture's table).

    Training splits come from the train split of --data, tested on its test split (no --split: a probe
    needs both)."""
    from ..insight.probes import probe
    from ..training.runs import load_run

    loaded = load_run(run)
    pool_data, test_data = data, None
    if on_error != "raise":  # both splits loaded here, skipping unreadable files
        pool_data, test_data = (load_data(loaded, data, s, on_error) for s in ("train", "test"))
    with saving(loaded, "probe", given_options(ctx, "probe")) as saver:
        result = probe(loaded, pool_data, test_data=test_data, layers=_names(layers),
                       per_class=_ints(per_class, "--per-class"), repeats=repeats, classifiers=_names(classifiers),
                       pool=pool, seed=seed, progress=show_progress(quiet))
        saved = saver.save(result)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
    if saved is not None:
        echo_saved(saved, as_json=as_json)


@app.command("ablate")
def ablate_cmd(
    ctx: typer.Context,
    run: Path = typer.Argument(..., help="Run directory (written by `convlens train`)."),
    remove: List[str] = typer.Option(..., "--remove", help="Layers to remove together, comma-separated (e.g. fc7 or "
                                                           "conv3,conv4); repeat for more experiments."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Retraining epochs (default: a third of the run's "
                                                                "when fine-tuning, all of them with --scratch)."),
    scratch: bool = typer.Option(False, "--scratch", help="Train every network from scratch instead of fine-tuning "
                                                          "the kept weights."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Learning rate (default: the run's)."),
    seed: int = typer.Option(0, "--seed"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over where RUN/ablation holds different runs."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the table."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Remove conv/fc layers, retrain, and compare test accuracy with the full network (Zeiler & Fergus 2014)."""
    from ..insight.ablation import ablate
    from ..training.runs import load_run

    loaded = load_run(run)
    with saving(loaded, "ablation", given_options(ctx, "ablation")) as saver:
        result = ablate(loaded, list(remove), epochs=epochs, mode="scratch" if scratch else "finetune", lr=lr,
                        seed=seed, overwrite=overwrite, progress=show_progress(quiet))
        saved = saver.save(result)
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
    if saved is not None:
        echo_saved(saved, f"{Path(loaded.dir) / 'ablation'} (the retrained networks)", as_json=as_json)
