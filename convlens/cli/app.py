"""The Typer app every command module registers on; `main` turns ConvLensErrors and Ctrl-C into messages."""
from __future__ import annotations

import sys

import typer

from typer.core import TyperGroup
from typer.exceptions import TyperException

from ..errors import ConvLensError

# Commands that keep what they finished (checkpoints, caches, done steps): run again, they resume.
RESUMABLE = {"train", "demo", "ablate", "codes", "neighbors", "tsne", "precompute"}


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past Typer (which would turn it into a silent exit 130)."""


class _Commands(TyperGroup):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise _Interrupted from None


def _version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"convlens {__version__}")
        raise typer.Exit()


app = typer.Typer(
    name="convlens",
    help="Understand and visualize convolutional neural networks.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print convlens's version and exit.")) -> None:
    """Understand and visualize convolutional neural networks."""


def _resumable(args: list[str]) -> bool:
    """Whether the command line ``args`` resumes when run again (top-patches only with --out)."""
    name = args[0] if args else ""
    return name in RESUMABLE or (name == "top-patches" and any(a.split("=")[0] == "--out" for a in args))


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: a ConvLensError prints its message and exits 2, no traceback; Ctrl-C
    prints "interrupted" (with how to resume, where the command can) and exits 130."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from ..heap import keep_heap
        from . import commands  # noqa: F401  (registers every command on `app`)

        keep_heap()  # per-step tensors reuse the heap instead of page-faulting (glibc; a no-op elsewhere)
        code = app(args=args, standalone_mode=False)  # returns a command's typer.Exit code
    except (_Interrupted, KeyboardInterrupt):
        print("interrupted" + ("; run the same command again to resume" if _resumable(args) else ""),
              file=sys.stderr)
        raise SystemExit(130)
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
