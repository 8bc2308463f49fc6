"""The pieces a report section is made of; the page template knows how to draw each kind.

Sections build these from result objects and never write HTML by hand, so every section looks
the same and later capabilities add sections without touching the page.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

_NUMBER_TEXT = re.compile(r"^\(?[-+]?[\d,]*\.?\d+\)?%?$")  # '(32,768)', '97.0%': right-aligned like numbers


@dataclass
class Metrics:
    """A row of headline numbers: {"top-1 error": "3.2%", ...}."""
    items: dict[str, str]
    kind: str = "metrics"


@dataclass
class Text:
    """A paragraph (plain text; escaped)."""
    text: str
    kind: str = "text"


@dataclass
class Table:
    """A table; numeric cells are right-aligned and get thousands separators."""
    headers: Sequence[str]
    rows: Sequence[Sequence[Any]]
    caption: str = ""
    kind: str = "table"

    def cells(self) -> list[list[tuple[str, bool]]]:
        """Rows of (text, is_number) for the template."""
        out = []
        for row in self.rows:
            cells = []
            for v in row:
                if isinstance(v, bool) or v is None:
                    cells.append(("" if v is None else str(v), False))
                elif isinstance(v, int):
                    cells.append((f"{v:,}", True))
                elif isinstance(v, float):
                    cells.append((f"{v:,.4g}", True))
                else:
                    cells.append((str(v), bool(_NUMBER_TEXT.match(str(v)))))
            out.append(cells)
        return out


@dataclass
class Figure:
    """A PNG figure: saved next to the report as ``figures/<name>.png`` and embedded in the page."""
    name: str
    png: bytes
    caption: str = ""
    kind: str = "figure"
    data_uri: str = ""  # filled in by the page writer


@dataclass
class Section:
    """One part of the report: an id (anchor), a title, an intro and its blocks."""
    id: str
    title: str
    blocks: list = field(default_factory=list)
    intro: str = ""
    cite: str = ""
