"""What a report section can ask for: the run, its test data, its evaluation, saved results.

Everything is computed at most once per report and only when a section asks for it. Saved results are
read through the run's results store (convlens.results): the default result of each analysis unless it
is stale, else the newest one of other options.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

from ..results import ResultStore


class ReportContext:
    def __init__(self, run, out_dir: Path, *, data=None):
        self.run = run
        self.out_dir = Path(out_dir)
        self.store = ResultStore.of(run)
        self.data = data  # the test images given to the report (None: the run's own test split)

    @property
    def model(self):
        return self.run.model

    @property
    def input_shape(self):
        return self.run.input_shape

    @cached_property
    def test_data(self):
        """The images the report evaluates on and shows: the ones given, else the run's own test split."""
        from ..errors import InputError
        from ..training.evaluate import run_test_data

        if isinstance(self.data, (str, Path)):
            from .. import datasets

            return datasets.load(str(self.data), split="test")
        if self.data is not None:
            return self.data
        try:
            return run_test_data(self.run)
        except InputError:
            raise InputError(f"data must be given (report(run, data=...), CLI --data): the run "
                             f"{self.run.dir or self.run.path} does not record its test data; got None") from None

    @cached_property
    def evaluation(self):
        from ..training.evaluate import evaluate

        return evaluate(self.run, self.test_data)

    def result(self, name: str) -> dict | None:
        """The JSON of the saved result ``name`` the report shows (None when it was never computed, or is stale)."""
        return None if self.store is None else self.store.result(name)

    def arrays(self, name: str) -> dict | None:
        """Its arrays (``.npz``; None when absent); never unpickles."""
        return None if self.store is None else self.store.arrays(name)
