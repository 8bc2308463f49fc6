"""What a report section can ask for: the run, its test data, its evaluation, saved results.

Everything is computed at most once per report and only when a section asks for it.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..io import read_json


class ReportContext:
    def __init__(self, run, out_dir: Path):
        self.run = run
        self.out_dir = Path(out_dir)

    @property
    def model(self):
        return self.run.model

    @property
    def input_shape(self):
        return self.run.input_shape

    @cached_property
    def test_data(self):
        from ..training.evaluate import run_test_data

        return run_test_data(self.run)

    @cached_property
    def evaluation(self):
        from ..training.evaluate import evaluate

        return evaluate(self.run, self.test_data)

    def result(self, name: str) -> dict | None:
        """A result a command saved as ``<run>/results/<name>.json`` (None when it was never computed)."""
        if self.run.dir is None:
            return None
        path = Path(self.run.dir) / "results" / f"{name}.json"
        return read_json(path) if path.is_file() else None

    def arrays(self, name: str) -> dict | None:
        """Arrays a command saved as ``<run>/results/<name>.npz`` (None when absent); never unpickles."""
        from ..io import read_npz

        if self.run.dir is None:
            return None
        path = Path(self.run.dir) / "results" / f"{name}.npz"
        return read_npz(path) if path.is_file() else None
