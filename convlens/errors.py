"""Typed errors with one message style: name the thing, say what was expected, say what was got.

Every error convlens raises on bad input is a ``ConvLensError``; the CLI prints its message
(no traceback) and exits with status 2.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class ConvLensError(Exception):
    """Base class of every error convlens raises on purpose."""


class SpecError(ConvLensError, ValueError):
    """A malformed architecture spec; the message quotes the spec with a caret under the fault."""


class ShapeError(ConvLensError, ValueError):
    """A layer cannot be applied to the shape that reaches it (names the layer and the shapes)."""


class UnknownModelError(ConvLensError, LookupError):
    """A zoo name that is not registered (with suggestions)."""


class LayerNotFoundError(ConvLensError, LookupError):
    """A layer name that is not in the model (with suggestions)."""


class InputError(ConvLensError, ValueError):
    """An argument outside its valid range or of the wrong kind."""


class DataError(ConvLensError, ValueError):
    """A data file or folder that cannot be read as expected (names the file)."""


class RunError(ConvLensError, ValueError):
    """A run directory or weight file that cannot be loaded (names the path)."""


def suggest(name: str, choices: Iterable[str], n: int = 3) -> str:
    """' Did you mean 'x'?' for the closest choices, or '' when nothing is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"


def lookup(table: dict, name: str, what: str, listing: str):
    """``table[name.lower()]``, or UnknownModelError: "'x' is not WHAT. Did you mean ...? LISTING: a, b"."""
    key = str(name).lower()
    if key not in table:
        raise UnknownModelError(f"'{name}' {what}.{suggest(key, table)} {listing}: {', '.join(sorted(table))}")
    return table[key]


def expect(name: str, expected: str, got: object) -> InputError:
    """The one template for argument errors: ``window must be an int in [1, 64]; got 0``."""
    return InputError(f"{name} must be {expected}; got {got!r}")
