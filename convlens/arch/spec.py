"""Parse the lecture's grammar-like CNN description into a flat list of layer tokens.

Grammar (case-insensitive; whitespace ignored; ``,`` or ``-`` separate layers)::

    spec   := item (SEP item)*          SEP := ',' | '-'
    item   := layer | '[' spec ']' 'x' COUNT      COUNT := integer | letter (N, M, ...)

Layer tokens (``k`` kernel, ``n`` filters/units, ``s`` stride, ``p`` zero padding, ``g`` groups)::

    CONVk-n/s p g   CONV3-64, CONV7-96/2, CONV11-96/4p0, CONV5-256p2g2; bare CONV = CONV3-<filters>
                    default stride 1 and padding (k-1)//2, which keeps the size at stride 1
    POOLk/s p c     max pooling; POOL2 = 2x2 stride 2, POOL3/2 overlapping, trailing c = ceil rounding
    AVGPOOLk/s p c  average pooling, same spelling; GAP = global average pooling
    LRNk, NORMk     local response (contrast) normalization across k maps (default 5, AlexNet's)
    BN RELU TANH SIGMOID     DROPOUTr (rate r, default 0.5: DROPOUT0.3 or DROPOUT-0.3)
    FC-n            fully connected; a bare FC has the default width, the last one ``num_classes``
    SOFTMAX         marks the class scores as read through a softmax (only as the last layer)

The parser only checks spelling; ``grammar.build`` checks that the layers fit together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import SpecError

MAX_REPEAT = 256
MAX_LAYERS = 2048
DEFAULT_REPEATS = {"N": 2, "M": 1}

LAYER_WORDS = "CONV, POOL, AVGPOOL, GAP, LRN/NORM, BN, RELU, TANH, SIGMOID, DROPOUT, FC, SOFTMAX"

_INT = r"(\d+)"
# Order matters: longer words first (AVGPOOL before POOL, SIGMOID before ...).
_PATTERNS: list[tuple[str, re.Pattern]] = [
    ("conv", re.compile(rf"CONV{_INT}?(?:-{_INT})?(?:/{_INT})?(?:P{_INT})?(?:G{_INT})?")),
    ("avgpool", re.compile(rf"AVGPOOL{_INT}?(?:/{_INT})?(?:P{_INT})?(C)?")),
    ("pool", re.compile(rf"(?:MAX)?POOL{_INT}?(?:/{_INT})?(?:P{_INT})?(C)?")),
    ("gap", re.compile(r"GAP")),
    ("lrn", re.compile(rf"(?:LRN|NORM){_INT}?")),
    ("bn", re.compile(r"BN")),
    ("relu", re.compile(r"RELU")),
    ("tanh", re.compile(r"TANH")),
    ("sigmoid", re.compile(r"SIGMOID")),
    ("dropout", re.compile(r"DROPOUT(?:-?(\d*\.\d+|0|1))?")),
    ("softmax", re.compile(r"SOFTMAX")),
    ("fc", re.compile(rf"FC(?:-{_INT})?")),
]


@dataclass(frozen=True)
class Token:
    """One layer of the expanded spec: its kind, its explicit arguments, and its span in the text."""

    kind: str
    args: dict = field(default_factory=dict)
    start: int = 0
    end: int = 0


def caret(spec: str, start: int, end: int | None = None) -> str:
    """The spec on one line and carets under ``spec[start:end]`` on the next."""
    end = max(start + 1, end if end is not None else start + 1)
    return f"  {spec}\n  {' ' * start}{'^' * (end - start)}"


def spec_error(spec: str, start: int, end: int | None, message: str) -> SpecError:
    return SpecError(f"{message} (at column {start + 1})\n{caret(spec, start, end)}")


def _args(kind: str, groups: tuple) -> dict:
    """Explicit arguments only: omitted ones stay absent so that defaults apply later."""
    ints = [None if g is None else g for g in groups]
    names = {
        "conv": ("kernel", "filters", "stride", "padding", "groups"),
        "pool": ("kernel", "stride", "padding", "ceil"),
        "avgpool": ("kernel", "stride", "padding", "ceil"),
        "lrn": ("size",),
        "dropout": ("rate",),
        "fc": ("units",),
    }.get(kind, ())
    out = {}
    for name, value in zip(names, ints):
        if value is None:
            continue
        if name == "ceil":
            out[name] = True
        elif name == "rate":
            out[name] = float(value)
        else:
            out[name] = int(value)
    return out


class _Parser:
    def __init__(self, spec: str, repeats: dict[str, int]):
        self.text = spec
        self.up = spec.upper()
        self.pos = 0
        self.repeats = {k.upper(): v for k, v in repeats.items()}

    def error(self, message: str, start: int | None = None, end: int | None = None) -> SpecError:
        start = self.pos if start is None else start
        if end is None:  # underline the whole offending word
            m = re.compile(r"[^,\-\[\]\s]+").match(self.up, start)
            end = m.end() if m else start + 1
        return spec_error(self.text, start, end, message)

    def skip_ws(self) -> None:
        while self.pos < len(self.up) and self.up[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_ws()
        return self.pos >= len(self.up)

    def parse(self) -> list[Token]:
        if self.at_end():
            raise SpecError(f"the spec is empty; expected layers such as 'CONV3-64,RELU,POOL2,FC-10'\n{caret(self.text, 0)}")
        tokens = self.sequence(closing=None)
        return tokens

    def sequence(self, closing: str | None) -> list[Token]:
        tokens: list[Token] = []
        while True:
            tokens.extend(self.item())
            if len(tokens) > MAX_LAYERS:
                raise self.error(f"the spec expands to more than {MAX_LAYERS} layers", 0, len(self.text))
            if self.at_end():
                if closing:
                    raise self.error(f"expected '{closing}' to close the group", self.pos, self.pos + 1)
                return tokens
            ch = self.up[self.pos]
            if ch in ",-":
                self.pos += 1
                if self.at_end() or self.up[self.pos] in ",-]":
                    raise self.error(f"expected a layer ({LAYER_WORDS}) after '{ch}'", self.pos, self.pos + 1)
                continue
            if closing and ch == closing:
                return tokens
            if ch == "]":
                raise self.error("unexpected ']' with no '[' open", self.pos, self.pos + 1)
            raise self.error(f"expected ',' or '-' between layers{' or ' + repr(closing) if closing else ''}")

    def item(self) -> list[Token]:
        self.skip_ws()
        if self.up[self.pos] == "[":
            return self.group()
        for kind, pattern in _PATTERNS:
            m = pattern.match(self.up, self.pos)
            if m:
                after = m.end()
                if after < len(self.up) and not (self.up[after] in ",-]" or self.up[after].isspace()):
                    continue  # e.g. RELUX: not a whole word; try the others, then fail below
                tok = Token(kind, _args(kind, m.groups()), self.pos, after)
                self.pos = after
                return [tok]
        if self.up[self.pos] == "]":
            raise self.error("unexpected ']' with no '[' open", self.pos, self.pos + 1)
        raise self.error(f"expected a layer ({LAYER_WORDS}) or '['")

    def group(self) -> list[Token]:
        self.pos += 1
        if self.at_end() or self.up[self.pos] == "]":
            raise self.error("expected a layer inside '[ ]'", self.pos, self.pos + 1)
        body = self.sequence(closing="]")
        self.pos += 1  # the ']'
        m = re.compile(r"\s*[X*]\s*(\d+|[A-Z])").match(self.up, self.pos)
        if not m:
            raise self.error("expected a repetition count such as 'x2' or 'xN' after ']'", self.pos, self.pos + 1)
        count_text = m.group(1)
        if count_text.isdigit():
            count = int(count_text)
        elif count_text in self.repeats:
            count = self.repeats[count_text]
        else:
            raise self.error(
                f"no value for the repetition 'x{count_text}'; pass repeats={{'{count_text}': ...}}",
                m.start(1), m.end(1),
            )
        if not isinstance(count, int) or not 0 <= count <= MAX_REPEAT:
            raise self.error(f"a repetition count must be an int in [0, {MAX_REPEAT}]; got {count!r}", m.start(1), m.end(1))
        self.pos = m.end()
        return body * count


def tokenize(spec: str, repeats: dict[str, int] | None = None) -> list[Token]:
    """The expanded list of layer tokens of ``spec`` (groups repeated), or a SpecError with a caret."""
    if not isinstance(spec, str):
        raise SpecError(f"an architecture spec must be a string such as 'CONV3-64,RELU,POOL2,FC-10'; got {type(spec).__name__}")
    merged = dict(DEFAULT_REPEATS)
    merged.update(repeats or {})
    return _Parser(spec, merged).parse()
