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
