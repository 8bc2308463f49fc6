"""The Typer app every command module registers on; `main` turns ConvLensErrors into messages."""
from __future__ import annotations

import sys

import typer

from typer.exceptions import TyperException

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
    from ..heap import keep_heap
    from . import commands  # noqa: F401  (registers every command on `app`)

    keep_heap()  # per-step tensors reuse the heap instead of page-faulting (glibc; a no-op elsewhere)

    try:
        code = app(args=argv, standalone_mode=False)  # returns a command's typer.Exit code
    except ConvLensError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2)
    except typer.Exit as ex:
        raise SystemExit(ex.exit_code)
    except typer.Abort:
        print("aborted", file=sys.stderr)
        raise SystemExit(130)
    except TyperException as err:  # usage errors: bad option values, missing arguments
        show = getattr(err, "show", None)
        show() if show else print(f"error: {err.format_message()}", file=sys.stderr)
        raise SystemExit(err.exit_code)
    if isinstance(code, int) and code:
        raise SystemExit(code)
