"""The Typer app every command module registers on; `main` turns ConvLensErrors into messages."""
from __future__ import annotations

import sys

import typer

from ..errors import ConvLensError

app = typer.Typer(
    name="convlens",
    help="Understand and visualize convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a ConvLensError prints its message and exits 2, no traceback."""
    from . import commands  # noqa: F401  (registers every command on `app`)

    try:
        app(args=argv, standalone_mode=False)
    except ConvLensError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    except typer.Exit as ex:
        raise SystemExit(ex.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130)
    except Exception as err:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.ClickException):
            err.show()
            raise SystemExit(err.exit_code)
        raise
