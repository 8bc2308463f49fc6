"""Run benchmark modules and print their rows side by side: ``python -m benchmarks [NAME ...]``.

``NAME`` is ``summary`` or ``bench_summary`` (default: every ``bench_*.py`` here). Results also go
to ``benchmarks/results/latest.json`` (written atomically) with the machine they ran on. The process
keeps its C heap (:func:`convlens.keep_heap`, as the ``convlens`` command does), so that neither side
of a row pays for page faults that depend on the allocation order of whatever ran before it.
"""
from __future__ import annotations

import datetime
import importlib
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem[len("bench_"):] for p in HERE.glob("bench_*.py"))


def fmt(value) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(rows: list[dict]) -> str:
    """One aligned text table over the union of the rows' keys (ratios printed as 12.3x)."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    cells = [columns] + [[(f"{r[c]:.2f}x" if r[c] < 10 else f"{r[c]:,.1f}x") if c == "ratio" and isinstance(r.get(c), (int, float)) else fmt(r.get(c))
                          for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = ["  ".join(cell.ljust(w) if i == 0 or not _numeric(cell) else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(line, widths))).rstrip() for line in cells]
    return "\n".join([lines[0], "-" * max(len(line) for line in lines), *lines[1:]])


def _numeric(cell: str) -> bool:
    return bool(cell) and cell.rstrip("x").replace(",", "").replace(".", "").lstrip("-").isdigit()


def main(argv: list[str] | None = None) -> int:
    names = [n.removeprefix("bench_").removesuffix(".py") for n in (sys.argv[1:] if argv is None else argv)]
    names = names or available()
    unknown = [n for n in names if n not in available()]
    if unknown:
        print(f"error: unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available())}",
              file=sys.stderr)
        return 2
    import torch

    from convlens.heap import keep_heap
    from convlens.io import atomic_write_json

    # as the convlens command runs: both sides of every row then allocate without per-step page faults
    heap = "kept (convlens.keep_heap)" if keep_heap() else "C library default"
    results = {"when": datetime.datetime.now().isoformat(timespec="seconds"), "python": platform.python_version(),
               "torch": torch.__version__, "machine": platform.machine(), "cpus": os.cpu_count(),
               "torch_threads": torch.get_num_threads(), "heap": heap, "benchmarks": {}}
    all_rows = []
    for name in names:
        print(f"running bench_{name} ...", file=sys.stderr, flush=True)
        rows = importlib.import_module(f"benchmarks.bench_{name}").run()
        results["benchmarks"][name] = rows
        all_rows += [{"bench": name, **r} for r in rows]
    print(table(all_rows))
    atomic_write_json(HERE / "results" / "latest.json", results)
    print(f"\nwrote {HERE / 'results' / 'latest.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
