"""The demo's measured figures in one place: ``docs/demo_figures.json`` and the README block made from it.

:func:`record` appends one run's figures (``bench_demo``) to the JSON file, keeping the last ``KEEP``
runs, and rewrites the text between ``<!-- demo-figures -->`` and ``<!-- /demo-figures -->`` in the
README: one row per figure with its range over the kept runs (``min–max``, or the one value when they
agree), so no number about the demo is typed by hand.
"""
from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

from convlens.io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "docs" / "demo_figures.json"
README = ROOT / "README.md"
START, END = "<!-- demo-figures -->", "<!-- /demo-figures -->"
KEEP = 6


def record(figures: dict, *, figures_path: Path = FIGURES, readme: Path = README) -> list[dict]:
    """Append one run's ``figures`` (name -> number or "a/b" text), keep the last KEEP runs, refresh the
    README block; the kept runs."""
    runs = json.loads(figures_path.read_text())["runs"] if figures_path.is_file() else []
    runs = (runs + [{"when": datetime.datetime.now().isoformat(timespec="seconds"),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "figures": figures}])[-KEEP:]
    atomic_write_text(figures_path, json.dumps({"runs": runs}, indent=1) + "\n")
    text = readme.read_text()
    if START in text and END in text:
        head, rest = text.split(START, 1)
        atomic_write_text(readme, head + START + "\n" + render(runs) + "\n" + END + rest.split(END, 1)[1])
    return runs


def render(runs: list[dict]) -> str:
    """A markdown table: each figure's range over ``runs`` (in the order the latest run lists them)."""
    names = list(runs[-1]["figures"])
    days = sorted({r["when"][:10] for r in runs})
    lines = [f"Measured by `python -m benchmarks demo` ({len(runs)} fresh runs of `convlens demo`, "
             f"{days[0]}{' to ' + days[-1] if len(days) > 1 else ''}, {runs[-1]['machine']}):", "",
             "| figure | measured |", "|---|---|"]
    for name in names:
        values = [r["figures"][name] for r in runs if name in r["figures"]]
        lines.append(f"| {name} | {spread(values)} |")
    return "\n".join(lines)


def spread(values: list) -> str:
    """'97.3–97.7' for numbers that differ, the one value when they agree; texts ('9/10') listed once each."""
    if all(isinstance(v, (int, float)) for v in values):
        lo, hi = min(values), max(values)
        return _num(lo) if _num(lo) == _num(hi) else f"{_num(lo)}–{_num(hi)}"
    return ", ".join(dict.fromkeys(str(v) for v in values))


def _num(v: float) -> str:
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.3g}" if abs(v) < 1 else f"{v:.1f}"

