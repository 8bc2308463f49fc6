"""Options shared by the commands and the parsing of their values (one place, one error style).

Data options: every command that reads images (``--data``) takes ``SPLIT`` (``--split train|test|all``)
and ``ON_ERROR`` (``--on-error raise|skip``, image folders); ``load_data`` turns the three into what the
library function is given, and ``given_options`` keys a result by them.
"""
from __future__ import annotations

import re

import typer

from ..errors import InputError, expect

SPLITS = ("test", "train", "all")
ON_ERRORS = ("raise", "skip")
SPLIT = typer.Option("test", "--split", help="Which images of --data (or of the run's own data): test (for a "
                                             "folder without train/ and test/ sub-folders, the held-out 20% of each "
                                             "class), train, or all.")
ON_ERROR = typer.Option("raise", "--on-error", help="Image folders: raise at the first unreadable file (default), "
                                                    "or skip unreadable files with one warning.")
NOT_A_RUN_DIR = ("results are saved inside a run directory; make one from it with `convlens wrap SOURCE --out RUN` "
                 "and pass RUN")


def check_data_options(split: str, on_error: str) -> None:
    """--split and --on-error, checked before anything is loaded."""
    if split not in SPLITS:
        raise expect("--split", "train, test or all", split)
    if on_error not in ON_ERRORS:
        raise expect("--on-error", "raise or skip", on_error)


def load_data(run, data: str | None, split: str = "test", on_error: str = "raise"):
    """What a command gives the library as its data: ``data`` as typed (None: the run's test split, the
    library's default) while --split and --on-error keep their defaults, else the images they pick, loaded
    (from ``data``, or from the run's own data when no --data is given)."""
    check_data_options(split, on_error)
    if split == "test" and on_error == "raise":
        return data
    if data is None:
        from ..training.evaluate import run_data

        return run_data(run, split, on_error=None if on_error == "raise" else on_error)
    from .. import datasets

    return datasets.load(data, split=split, on_error=on_error)


def data_key(data: str | None, split: str = "test", on_error: str = "raise") -> str | None:
    """``data`` with a non-default --split / --on-error folded in (``"photos [split=all]"``), for results
    and caches kept apart by their data; ``data`` itself (None: the run's) when both are defaults."""
    check_data_options(split, on_error)
    extra = [f"split={split}"] * (split != "test") + [f"on-error={on_error}"] * (on_error != "raise")
    if not extra:
        return data
    return f"{data or 'run data'} [{', '.join(extra)}]"


def require_run_dir(loaded, given) -> None:
    """The refusal of a run loaded from a single file by a command that saves its results in the run."""
    if loaded.dir is None:
        raise InputError(f"RUN must be a run directory ({NOT_A_RUN_DIR}); got {given}, a model file")


def parse_input_size(text: str | None) -> tuple[int, int, int] | None:
    """'224x224x3' (H x W x C, as the lecture writes shapes) -> (C, H, W); '32x32' means 3 channels."""
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*(?:[xX×]\s*(\d+))?\s*", text)
    if not m:
        raise InputError(f"--input must look like HxWxC, e.g. 224x224x3; got {text!r}")
    h, w, c = int(m.group(1)), int(m.group(2)), int(m.group(3) or 3)
    if min(h, w, c) < 1:
        raise InputError(f"--input sizes must be positive; got {text!r}")
    return c, h, w


def build_model(name_or_spec: str, input_size: tuple[int, int, int] | None):
    """A zoo model by name, or the model a grammar spec describes (input size from --input)."""
    from ..arch.zoo import build

    return build(name_or_spec, input_shape=input_size)


def given_options(ctx, name: str) -> dict:
    """The options of the running command that define the result ``name`` (the results registry names
    them) and were given a value other than their default: ``{}`` computes the default result, anything
    else one kept beside it. Empty lists count as unset; paths are made absolute. A --split or --on-error
    other than the default is folded into ``data`` (``data_key``) while the registry does not name them."""
    from ..results import analysis

    defaults = {p.name: p.default for p in ctx.command.params}
    options = analysis(name).options
    given = {}
    for option in options:
        value = _plain(ctx.params[option])
        if value != _plain(defaults[option]):
            given[option] = value
    if "data" in options:  # --split / --on-error the registry does not name (yet) go into the data's key
        split = ctx.params.get("split", "test") if "split" not in options else "test"
        on_error = ctx.params.get("on_error", "raise") if "on_error" not in options else "raise"
        key = data_key(ctx.params.get("data"), split, on_error)
        if key != ctx.params.get("data"):
            given["data"] = key
    return given


def _plain(value):
    """A command-line value as JSON: paths absolute, tuples as lists, an empty list as None."""
    from pathlib import Path

    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] or None
    return value
