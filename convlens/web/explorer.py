"""The state one explorer server holds: the run, its results store, its images, the model lock, the jobs.

**Requests are kept apart by one model lock** (``Explorer.lock``), not by per-request copies of the
model. Every convlens method leaves the model as found, but *while* it runs it puts forward hooks, a
``TorchFunctionMode`` or eval mode on the one shared module; two requests computing on it at the same
time would see each other's hooks. A copy per request would cost the model's memory per request (a VGG-16
is half a gigabyte) and its time to copy; the lock costs only waiting, and the pages that need the model
(an image's maps, a job) are few next to the pages served from the cache, which never take it.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..results import ResultStore
from .jobs import Job, Jobs


class Explorer:
    def __init__(self, run, *, data: str | None = None):
        from ..training.runs import load_run

        self.run = load_run(run) if isinstance(run, (str, Path)) else run
        if self.run.dir is None:
            raise InputError(f"RUN must be a run directory (the explorer keeps its results and uploads there; "
                             f"make one with `convlens wrap`); got {self.run.path}, a model file")
        self.dir = Path(self.run.dir)
        self.store = ResultStore(self.dir)
        self.data_source = data
        self.lock = threading.RLock()
        self.jobs = Jobs()

    @property
    def name(self) -> str:
        return self.dir.name

    @cached_property
    def data(self):
        """The images the explorer shows: ``--data`` (its test split), else the run's own test split."""
        from ..training.evaluate import run_test_data

        if self.data_source is not None:
            from .. import datasets

            return datasets.load(self.data_source, split="test")
        try:
            return run_test_data(self.run)
        except InputError:
            raise InputError(f"data must be given (convlens serve RUN --data DIR): the run {self.dir} does not "
                             "record its test data") from None

    @cached_property
    def summary(self) -> dict:
        """The lecture's per-layer table (``convlens.summary(run).to_dict()``); each row gains ``explorable``:
        whether the layer has a page (its conv layers, whose units are feature maps)."""
        from ..arch.summary import summary

        with self.lock:
            table = summary(self.run).to_dict()
        pages = set(self.layers)
        for row in table["layers"]:
            row["explorable"] = row["name"] in pages
        return table

    @cached_property
    def layers(self) -> list[str]:
        """The layers with a page, in forward order: every conv layer, by its display name (``conv3`` for a
        grammar net, the module path otherwise), as ``convlens top-patches`` names them."""
        from ..units.filters import conv_layers

        return [name for name, _path, _module in conv_layers(self.run.model)]

    @contextmanager
    def model(self) -> Iterator[Any]:
        """The run, with the model lock held (see the module docstring)."""
        with self.lock:
            yield self.run

    def result(self, name: str, options: dict | None = None):
        """The saved result ``name`` (with ``options``; None: the one the report shows) as its object, or
        None when it was never computed or is stale."""
        if options is None:
            entry = self.store.shown(name)
            return None if entry is None else self.store.load(name, entry.options or None)
        entry = self.store.entry(name, options)
        if entry is None or entry.state == "stale":
            return None
        return self.store.load(name, options)

    def ensure(self, name: str, options: dict | None, title: str,
               compute: Callable[[Callable[[float, str], None]], Any]) -> tuple[Any, Job | None]:
        """(the saved result, None) when the cache has it, else (None, the job computing it): ``compute(progress)``
        returns the result, which the job saves under ``name`` and ``options`` (the CLI's names, so the CLI
        and the explorer share the cache) before it is done."""
        found = self.result(name, options)
        if found is not None:
            return found, None
        key = f"{name} {sorted((options or {}).items())}"

        def work(progress):
            with self.lock:
                result = compute(progress)
            self.store.save(name, result, options=options or None)
            return result
        job = self.jobs.submit(key, title, work)
        if job.state == "done":  # saved since the page last looked: read it from the cache next time
            self.jobs.forget(key)
            return job.result, None
        return None, job
