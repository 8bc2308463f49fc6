"""`convlens wrap`: a run directory for your own model (a factory in your code, a .pt2, TorchScript, weights)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import InputError
from .app import app
from .options import ON_ERROR, parse_input_size


def parse_floats(text: str | None, option: str) -> list[float] | None:
    """'0.485,0.456,0.406' -> [0.485, 0.456, 0.406] (one value per channel, or one for all)."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{option} must be numbers separated by commas, one per channel (e.g. 0.5,0.5,0.5); "
                         f"got {text!r}") from None
    if not values:
        raise InputError(f"{option} must give at least one number; got {text!r}")
    return values


def parse_classes(text: str | None):
    """--classes: a count (``10``) or a text file with one class name per line."""
    if text is None:
        return None
    if text.strip().isdigit():
        return int(text)
    return Path(text)


@app.command("wrap")
def wrap_cmd(
    source: str = typer.Argument(..., help="Your model: path/to/file.py:factory or package.module:factory (imports "
                                           "and runs that code: the factory is called with no arguments and must "
                                           "return an nn.Module), a .pt2 file from torch.export.save (no code "
                                           "needed), a TorchScript file, a zoo name or a grammar spec."),
    out: Path = typer.Option(..., "--out", "-o", help="The run directory to write."),
    weights: Optional[Path] = typer.Option(None, "--weights", "-w", help="A state_dict to load strictly "
                                           "(.safetensors, or .pt/.pth read with weights_only=True: never "
                                           "unpickles code)."),
    input: Optional[str] = typer.Option(None, "--input", "-i", help="Input size HxWxC, e.g. 224x224x3 (HxW means 3 "
                                        "channels; default: the model's own input_shape, or a .pt2's example input)."),
    classes: Optional[str] = typer.Option(None, "--classes", help="A text file with one class name per line (in the "
                                          "order of the model's outputs), or a count N for unnamed classes (default: "
                                          "the class folders of --data)."),
    mean: Optional[str] = typer.Option(None, "--mean", help="Per-channel mean the model expects of [0, 1] pixels, "
                                       "e.g. 0.485,0.456,0.406 (default: no normalization)."),
    std: Optional[str] = typer.Option(None, "--std", help="Per-channel std, e.g. 0.229,0.224,0.225."),
    data: Optional[str] = typer.Option(None, "--data", help="An image folder with one sub-folder per class: the run's "
                                       "test split, used by evaluate, the report and every analysis (or a built-in "
                                       "dataset name)."),
    on_error: str = ON_ERROR,
    pretrained: bool = typer.Option(False, "--pretrained", help="SOURCE names a model with ImageNet weights that "
                                    "ship with convlens's dependencies (efficientnet_lite0): its weights, class names "
                                    "and normalization come with it."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a run already in --out."),
) -> None:
    """Make a run directory for a model convlens did not train, so that every command works on it.

    Checks first (the model takes --input, gives one score per class; the data's classes are the model's),
    then writes OUT/run.json, the weights as safetensors, and a copy of a .pt2 or TorchScript file. A factory
    is recorded by its absolute path: keep your code where it is.
    """
    from ..training.wrap import wrap

    run = wrap(source, out, weights=weights, input_shape=parse_input_size(input), class_names=parse_classes(classes),
               mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"), data=data, on_error=on_error,
               pretrained=pretrained, overwrite=overwrite)
    typer.echo(repr(run))
    data_info = (run.manifest.get("data") or {}).get("test") or {}
    if data_info:
        typer.echo(f"  data         {data_info.get('source')}: {data_info.get('size')} images "
                   f"({len(data_info.get('class_names') or [])} classes)")
    typer.echo(f"next: convlens evaluate {out}   convlens report {out}")
    typer.echo(f"saved: {out}")
