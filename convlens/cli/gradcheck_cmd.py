"""`convlens gradcheck`: autograd against finite differences, per layer, from the shell."""
from __future__ import annotations

import json

import typer

from .app import app
from .options import parse_input_size


@app.command("gradcheck")
def gradcheck_cmd(
    model: str = typer.Argument(..., help="A zoo name (e.g. lenet) or a grammar spec (e.g. 'CONV3-8,RELU,POOL2,FC-10')."),
    input: str = typer.Option(None, "--input", help="Input size HxWxC, e.g. 32x32x1 (the model's own otherwise; "
                                                    "a smaller one makes big models fast)."),
    samples: int = typer.Option(None, "--samples", help="Coordinates checked per parameter tensor and for the "
                                                        "input (default 8); each costs two forward passes."),
    batch_size: int = typer.Option(None, "--batch-size", help="Inputs in the random batch (default 2)."),
    eps: float = typer.Option(None, "--eps", help="Finite-difference step (default 1e-6)."),
    tol: float = typer.Option(None, "--tol", help="Largest relative error that passes (default 1e-5)."),
    seed: int = typer.Option(0, "--seed", help="Seed for the weights of a zoo model or spec, the input, "
                                                 "the loss weights and the coordinates."),
    batch_stats: bool = typer.Option(False, "--batch-stats", help="Check BatchNorm on batch statistics (train "
                                                                  "mode) instead of its running statistics."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Check gradients numerically by finite differences: exit 0 when every layer passes, 1 otherwise."""
    from ..training.gradcheck import gradcheck

    given = {"samples": samples, "batch_size": batch_size, "eps": eps, "tol": tol}
    result = gradcheck(model, parse_input_size(input), seed=seed, batch_stats=batch_stats,
                       **{k: v for k, v in given.items() if v is not None})
    typer.echo(json.dumps(result.to_dict(), indent=2) if as_json else repr(result))
    if not result.passed:
        raise typer.Exit(1)
