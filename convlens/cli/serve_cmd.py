"""`convlens serve RUN`: the explorer (convlens.web) on uvicorn."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .app import app


@app.command("serve")
def serve_cmd(
    run: Path = typer.Argument(..., help="Run directory (`convlens train`, `convlens wrap`, `convlens demo`)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (default: this machine only; any other "
                                                         "address serves your model and data to the network)."),
    port: int = typer.Option(8000, "--port", help="Port."),
    data: Optional[str] = typer.Option(None, "--data", help="Images to explore: a dataset name or folder "
                                                            "(default: the run's test split)."),
    root_path: str = typer.Option("", "--root-path", help="The prefix a proxy serves the app under (links are "
                                                          "relative, so this is rarely needed)."),
) -> None:
    """Walk through the model in a browser: layers, units and their top-9 patches, images and their maps,
    the code space. Pages show what RUN/results holds and compute what is missing in the background."""
    from ..web import serve

    typer.echo(f"convlens explorer of {run}: http://{host if ':' not in host else f'[{host}]'}:{port}/  (Ctrl+C stops)")
    serve(run, host=host, port=port, data=data, root_path=root_path)
