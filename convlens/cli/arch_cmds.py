"""`convlens describe` and `convlens zoo`: the grammar and the model zoo from the shell."""
from __future__ import annotations

import typer

from .app import app
from .options import build_model, parse_input_size


@app.command("describe")
def describe_cmd(
    model: str = typer.Argument(..., help="A zoo name (e.g. vgg16) or a grammar spec (e.g. '[CONV3-64-RELU]x2,POOL2,FC-10')."),
    input: str = typer.Option(None, "--input", help="Input size HxWxC, e.g. 224x224x3 (zoo default otherwise)."),
) -> None:
    """Print the canonical spec of a model and its lecture-style layer names."""
    from ..arch.grammar import describe

    net = build_model(model, parse_input_size(input))
    c, h, w = net.input_shape
    typer.echo(describe(net))
    typer.echo(f"input: {h}x{w}x{c}")
    for name, path in net.lecture_names.items():
        typer.echo(f"  {name:<10} {path:<16} {type(net.get_submodule(path)).__name__}")


@app.command("zoo")
def zoo_cmd(pattern: str = typer.Argument("*", help="Shell-style pattern, e.g. 'vgg*'.")) -> None:
    """List the zoo's models with their input size, parameter count and paper."""
    import torch

    from ..arch import zoo

    names = zoo.list_models(pattern)
    width = max((len(n) for n in names), default=0)
    for name in names:
        entry = zoo.get_entry(name)
        with torch.device("meta"):  # count parameters without allocating them
            net = zoo.create(name)
        params = sum(p.numel() for p in net.parameters())
        c, h, w = entry.input_shape
        typer.echo(f"{name:<{width}} {h}x{w}x{c:<4} {params:>13,} params  {entry.paper}")
