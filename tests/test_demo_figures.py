"""benchmarks.demo_figures: the README's demo block is each figure's range over the recorded runs."""
from __future__ import annotations

import json

from benchmarks.demo_figures import KEEP, END, START, record, spread


def test_spread_gives_ranges_single_values_and_distinct_texts():
    assert spread([97.3, 97.7, 97.5]) == "97.3–97.7"
    assert spread([0.0612, 0.0598]) == "0.0598–0.0612"
    assert spread([2.0, 2.0]) == "2" and spread([1200, 1187]) == "1,187–1,200"
    assert spread(["10/10", "9/10", "10/10"]) == "10/10, 9/10"


def test_record_keeps_the_last_runs_and_rewrites_only_the_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold numbers\n{END}\noutro\n")
    figures = tmp_path / "figures.json"
    for i in range(KEEP + 2):
        runs = record({"test accuracy (%)": 97.0 + 0.1 * i, "fooling": f"{9 + (i > 3)}/10"},
                      figures_path=figures, readme=readme)
    assert len(runs) == KEEP and json.loads(figures.read_text())["runs"] == runs
    text = readme.read_text()
    assert text.startswith(f"intro\n{START}\n") and text.endswith(f"\n{END}\noutro\n") and "old numbers" not in text
    assert "| test accuracy (%) | 97.2–97.7 |" in text      # runs 2..7 of 0..7: the first two dropped
    assert "| fooling | 9/10, 10/10 |" in text and f"({KEEP} fresh runs" in text
