"""The HTML report: one self-contained page (figures embedded) plus the PNG figures beside it.

``build_report(run)`` asks every registered section (see ``registry.py``) for its part; a section
with nothing to show (e.g. results never computed) is left out.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConvLensError
from .blocks import Section, Text
from .context import ReportContext
from .page import write_page
from .registry import all_sections


def build_report(run, out: str | Path | None = None, *, title: str | None = None) -> Path:
    """Write the report of ``run`` (a Run or a run directory) to ``out`` (default ``<run>/report``)."""
    from ..training.runs import Run, load_run

    if not isinstance(run, Run):
        run = load_run(run)
    out_dir = Path(out) if out is not None else Path(run.dir or ".") / "report"
    ctx = ReportContext(run, out_dir)
    sections = []
    for spec in all_sections():
        try:
            sec = spec.build(ctx)
        except ConvLensError as err:  # show what went wrong in place of the section, keep the rest
            sec = Section(spec.id, spec.id.replace("-", " ").capitalize(), [Text(f"Not available: {err}")])
        if sec is not None:
            sections.append(sec)
    name = title or (Path(run.dir).name if run.dir else "model")
    data = (run.manifest.get("data") or {}).get("source", "")
    subtitle = f"{type(run.model).__name__} trained on {data}" if data else type(run.model).__name__
    return write_page(sections, out_dir, title=name, subtitle=subtitle)


__all__ = ["build_report", "ReportContext"]
