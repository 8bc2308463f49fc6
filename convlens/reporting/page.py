"""Assemble sections into one self-contained HTML page (figures embedded) plus PNG files."""
from __future__ import annotations

import base64
import datetime as _dt
from importlib import resources
from pathlib import Path

import jinja2

from ..io import atomic_write_bytes, atomic_write_text
from .blocks import Figure, Section


def _template(name: str) -> str:
    return resources.files("convlens.reporting").joinpath("templates", name).read_text(encoding="utf-8")


def render_html(sections: list[Section], *, title: str, subtitle: str = "") -> str:
    """The page as a string; every Figure must already carry its data URI."""
    from .. import __version__

    env = jinja2.Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
    return env.from_string(_template("report.html")).render(
        title=title, subtitle=subtitle, sections=sections, css=_template("report.css"),
        generated=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"), version=__version__)


def write_page(sections: list[Section], out_dir: str | Path, *, title: str, subtitle: str = "",
               filename: str = "report.html") -> Path:
    """Write ``out_dir/report.html`` and ``out_dir/figures/<section>-<name>.png``; returns the HTML path."""
    out_dir = Path(out_dir)
    for s in sections:
        for b in s.blocks:
            if isinstance(b, Figure):
                atomic_write_bytes(out_dir / "figures" / f"{s.id}-{b.name}.png", b.png)
                b.data_uri = "data:image/png;base64," + base64.b64encode(b.png).decode("ascii")
    return atomic_write_text(out_dir / filename, render_html(sections, title=title, subtitle=subtitle))
