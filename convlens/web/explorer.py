"""The state one explorer server holds: the run, its results store, its images, the model lock, the jobs.

**Requests are kept apart by one model lock** (``Explorer.lock``), not by per-request copies of the
model. Every convlens method leaves the model as found, but *while* it runs it puts forward hooks, a
``TorchFunctionMode`` or eval mode on the one shared module; two requests computing on it at the same
time would see each other's hooks. A copy per request would cost the model's memory per request (a VGG-16
is half a gigabyte) and its time to copy; the lock costs only waiting, and the pages that need the model
(an image's maps, a job) are few next to the pages served from the cache, which never take it.

**What the pages show comes from the results store or from memory.** :meth:`Explorer.saved` reads a saved
result once while its files stay the same; :meth:`Explorer.ensure` starts a job that computes and saves a
missing one, :meth:`Explorer.kept` one whose value is only kept in memory (``ex.memo``,
:mod:`convlens.web.memo`).
"""
from __future__ import annotations

import threading
from contextlib import contextmanager, nullcontext
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import InputError
from ..results import ResultStore
from .jobs import DONE, Job, Jobs
from .memo import LRU, Memo, file_stats, version

SAVED_KEPT = 64  # saved results kept in memory (read again when their files change)


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
        self.memo = Memo()

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

    @property
    def data_options(self) -> dict | None:
        """The options under which the CLI saves a result over the explorer's data: ``{"data": DIR}`` for
        ``serve --data DIR`` (``convlens top-patches RUN --data DIR``), None for the run's own test split."""
        return {"data": self.data_source} if self.data_source is not None else None

    def data_or_error(self) -> tuple[Any, str | None]:
        """(the explorer's data, None) or (None, why it cannot be loaded): for the pages shown without data."""
        try:
            return self.data, None
        except Exception as err:  # noqa: BLE001 -- the page says why
            return None, f"{type(err).__name__}: {err}"

    # ---- saved results ------------------------------------------------------------------------------

    def entry(self, name: str, options: dict | None = None, *, exact: bool = False):
        """The store's entry of the result ``name``: with ``options`` None (and not ``exact``) the one the
        report shows (``ResultStore.shown``), else the one saved with exactly ``options`` (None, ``{}``: the
        default one); never a stale one. None when there is none."""
        if options is None and not exact:
            return self.store.shown(name)
        entry = self.store.entry(name, options)
        return None if entry is None or entry.state == "stale" else entry

    def load(self, entry) -> tuple[Any, str]:
        """(the result of a store entry as its object, a short version id of its files), read once while its
        files stay the same."""
        from ..results.registry import analysis, imported

        stats = file_stats(entry.path)
        cache = self.memo.lru("saved", SAVED_KEPT)
        found = cache.get(str(entry.path))
        if found is None or found[0] != stats:
            found = cache.put(str(entry.path), (stats, imported(analysis(entry.name).load)(entry.path), version(stats)))
        return found[1], found[2]

    def saved(self, name: str, options: dict | None = None, *, exact: bool = False) -> tuple[Any, str | None]:
        """(the saved result ``name`` as its object, a short version id of its files) or (None, None); which
        one: :meth:`entry`."""
        entry = self.entry(name, options, exact=exact)
        return (None, None) if entry is None else self.load(entry)

    def result(self, name: str, options: dict | None = None, *, exact: bool = False):
        """The saved result ``name`` as its object (see :meth:`saved`), or None when it was never computed or
        is stale."""
        return self.saved(name, options, exact=exact)[0]

    # ---- what is missing: jobs ----------------------------------------------------------------------

    @staticmethod
    def _key(name: str, options: dict | None) -> str:
        return f"{name} {sorted((options or {}).items())}"

    def job(self, name: str, options: dict | None) -> Job | None:
        """The job :meth:`ensure` started for ``name`` and ``options`` while it runs (or failed: shown with its
        error); None when there is none or it is done (its result is in the store)."""
        job = self.jobs.for_key(self._key(name, options))
        return None if job is None or job.state == DONE else job

    def ensure(self, name: str, options: dict | None, title: str,
               compute: Callable[[Callable[[float, str], None]], Any], *,
               locked: bool = True) -> tuple[Any, Job | None]:
        """(the saved result, None) when the cache has it, else (None, the job computing it): ``compute(progress)``
        returns the result, which the job saves under ``name`` and ``options`` (the CLI's names, so the CLI
        and the explorer share the cache) before it is done. ``compute`` runs under the model lock
        (``locked=False``: it takes the lock itself, for the part that needs the model)."""
        found = self.result(name, options)
        if found is not None:
            return found, None
        key = self._key(name, options)

        def work(progress):
            with self.lock if locked else nullcontext():
                result = compute(progress)
            self.store.save(name, result, options=options or None)
            return result
        job = self.jobs.submit(key, title, work)
        if job.state == "done":  # saved since the page last looked: read it from the cache next time
            self.jobs.forget(key)
            return job.result, None
        return None, job

    def kept(self, cache: LRU, key, job_key: str, title: str,
             compute: Callable[[Callable[[float, str], None]], Any]) -> tuple[Any, Job | None]:
        """(the value ``cache`` keeps under ``key``, None), else (None, the job ``job_key`` that puts
        ``compute(progress)`` there): a value kept in memory only, never saved. ``compute`` takes the model
        lock itself, for as long as it needs it. A job done whose value was dropped since runs again."""
        found = cache.get(key)
        if found is not None:
            return found, None

        def work(progress):
            cache.put(key, compute(progress))
            return True  # the value lives in the cache only (a done job keeps its result)
        job = self.jobs.submit(job_key, title, work)
        found = cache.get(key)
        if found is not None:
            return found, None
        if job.state == "done":  # computed, then dropped: compute again
            self.jobs.forget(job_key)
            job = self.jobs.submit(job_key, title, work)
        return None, job
