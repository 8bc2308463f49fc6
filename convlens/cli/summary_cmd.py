"""`convlens summary`: the lecture's per-layer table (memory, params, mult-adds, receptive field) from the shell."""
from __future__ import annotations

import typer

from .app import app
from .options import parse_input_size


@app.command("summary")
def summary_cmd(
    model: str = typer.Argument(..., help="A zoo name (e.g. vgg16), a grammar spec "
                                          "(e.g. '[CONV3-64-RELU]x2,POOL2,FC-10') or a run directory."),
    input: str = typer.Option(None, "--input", "-i",
                              help="Input size HxWxC as the lecture writes it, e.g. 224x224x3 (HxW means 3 channels; "
                                   "default: the run's or the zoo model's own size, 224x224x3 for a spec)."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON instead of the table."),
    batch: int = typer.Option(1, "--batch", "-b", help="Batch size for the forward/backward memory totals."),
) -> None:
    """Per-layer output shape, activation memory, parameters, mult-adds and receptive field.

    Shapes are propagated on the meta device: no activation memory is allocated, even for VGG-16. A run
    directory is summarized as its net, layers named as in its code, at the run's input size.
    """
    from pathlib import Path

    from ..arch.summary import summary

    source = model
    if Path(model).is_dir() and (Path(model) / "run.json").is_file():
        from ..training.runs import load_run

        source = load_run(model)
    result = summary(source, parse_input_size(input), batch_size=batch)
    typer.echo(result.to_json() if json_out else repr(result))
