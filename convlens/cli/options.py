"""Parsing of option values shared by the commands (one place, one error style)."""
from __future__ import annotations

import re

from ..errors import InputError


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
    else one kept beside it. Empty lists count as unset; paths are made absolute."""
    from ..results import analysis

    defaults = {p.name: p.default for p in ctx.command.params}
    given = {}
    for option in analysis(name).options:
        value = _plain(ctx.params[option])
        if value != _plain(defaults[option]):
            given[option] = value
    return given


def _plain(value):
    """A command-line value as JSON: paths absolute, tuples as lists, an empty list as None."""
    from pathlib import Path

    if isinstance(value, Path):
        return str(value.resolve())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value] or None
    return value
