"""`convlens train` and `convlens evaluate`: thin wrappers over convlens.train and convlens.evaluate.

``convlens evaluate`` runs under ``torchrun`` too: each process scores its shard of the images and rank 0
prints and writes ``--save`` (launcher.py). ``save_evaluation`` puts an evaluation in the results store."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .app import app
from .launcher import Launch, launched
from .options import ON_ERROR, SPLIT, check_data_options
from .output import echo_saved, train_progress, warn_unwrapped


@app.command("train")
def train_cmd(
    out: Path = typer.Option(..., "--out", help="Run directory to create, or to resume."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo name, grammar spec (last FC without a width), or your own model: "
                                                           "path/to/file.py:factory or package.module:factory (imports and "
                                                           "runs that code; the factory returns an nn.Module). Default: the "
                                                           "data's recipe (fashion: a small CNN), else shapesnet."),
    data: str = typer.Option("shapes", "--data", help="Dataset name (shapes, digits, photos, fashion) or path."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: the recipe's)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd or adam."),
    momentum: Optional[float] = typer.Option(None, "--momentum"),
    weight_decay: Optional[float] = typer.Option(None, "--weight-decay"),
    schedule: Optional[str] = typer.Option(None, "--schedule", help="cosine, step or none."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random flips and small shifts."),
    seed: int = typer.Option(0, "--seed"),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes (0: slice in memory)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if any)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over if OUT holds a different run."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar, no line per epoch (a log gets no bar, "
                                                      "only the lines)."),
    on_error: str = ON_ERROR,
) -> None:
    """Train a network into a resumable run directory (re-run the same command to resume).

    Trains on the train split of --data and tests on its test split (no --split: training needs both)."""
    from ..training.fit import recipe_for, train

    check_data_options("test", on_error)
    given = dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer, momentum=momentum,
                 weight_decay=weight_decay, schedule=schedule)
    recipe = recipe_for(data) if arch is None else {}  # no --arch: the data's recipe (fit.RECIPES), else the demo's
    arch = arch or recipe["arch"]
    options = {**{k: recipe[k] for k in given if k in recipe}, **{k: v for k, v in given.items() if v is not None}}
    train_data, test_data = _train_data(data, on_error)
    run = train(arch, train_data, test_data=test_data, out=out, augment=augment, seed=seed, num_workers=workers,
                device=device, overwrite=overwrite, **train_progress(quiet), **options)
    last = run.history[-1] if run.history else {}
    if run.already_done:
        typer.echo(f"{out}: already trained ({len(run.history)} epochs, same settings); nothing to do")
    acc = last.get("test_acc")
    typer.echo(f"run: {out}  epochs: {len(run.history)}" + (f"  test accuracy: {acc:.4f}" if acc is not None else ""))


def _train_data(data: str, on_error: str):
    """``train``'s data and test data: the name or path as given (``train`` loads both splits), or with
    --on-error skip both splits loaded here (no test split: no per-epoch test metrics, as ``train`` does)."""
    if on_error == "raise":
        return data, None
    from .. import datasets
    from ..errors import DataError

    train_ds = datasets.load(data, split="train", on_error=on_error)
    try:
        test_ds = datasets.load(data, split="test", on_error=on_error)
    except DataError:
        test_ds = False
    return train_ds, test_ds


@app.command("evaluate")
def evaluate_cmd(
    run: Path = typer.Argument(..., help="Run directory (or weight file with --arch)."),
    data: Optional[str] = typer.Option(None, "--data", help="Dataset name or path (default: the run's test split)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of the text report."),
    save: Optional[Path] = typer.Option(None, "--save", help="Also write the JSON report to this file."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Zoo name, spec or path/to/file.py:factory, for a bare weight file."),
    k: int = typer.Option(5, "--k", help="Top-k error to report besides top-1."),
    batch_size: int = typer.Option(256, "--batch-size"),
    split: str = SPLIT,
    on_error: str = ON_ERROR,
) -> None:
    """Top-1/top-k error, per-class accuracy, easiest/hardest classes, most-confused pairs.

    The first line says which images were scored: the split (for a folder without train/ and test/
    sub-folders, the held-out 20% of each class unless --split all) and how many. Shards the images under
    torchrun (rank 0 prints and saves)."""
    from ..training.evaluate import evaluate
    from ..training.runs import load_run

    check_data_options(split, on_error)
    loaded = load_run(run, arch=arch) if arch else load_run(run)
    with launched(loaded.device) as launch:
        warn_unwrapped(run, loaded)
        result = evaluate(loaded, data, split=split, on_error=None if on_error == "raise" else on_error, k=k,
                          batch_size=batch_size, **launch.shard)
        typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
        if not as_json and result.split.startswith("held-out"):
            typer.echo("(--split all scores every image of the folder)")
        if save is not None and launch.leader:
            echo_saved(result.save(save), as_json=as_json)


def save_evaluation(run, data=None, *, options: dict | None = None, launch: Launch = Launch()):
    """``convlens.evaluate`` of ``run`` on ``data`` (None: its test split) saved in its results store as
    "evaluation" (beside the default one with ``options``, e.g. ``{"data": "photos"}``); ``launch``: this
    process's shard (rank 0 saves). Returns (the Evaluation, the JSON's path or None)."""
    from ..training.evaluate import evaluate

    with launch.saving(run, "evaluation", options) as saver:
        result = evaluate(run, data, **launch.shard)
        saver.save(result)
    return result, saver.path
