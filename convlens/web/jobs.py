"""Background jobs of the explorer: what a page needs and the cache lacks, computed once, with progress.

``Jobs.submit(key, title, work)`` starts ``work(progress)`` on the job thread and returns its :class:`Job`;
asking again for the same ``key`` while it is queued, running or done returns the same job, so a result
asked for twice (two tabs, a reload, a double click) runs once. ``progress(fraction, message)`` is what
the work reports; ``Job.to_dict()`` is the JSON a page polls (``/api/jobs/{id}``). One thread runs the
jobs in order: every job uses the one model, which the explorer's lock serializes anyway (see
:mod:`convlens.web.explorer`). A client that goes away does not cancel or corrupt a job: the job belongs
to the server, and its result is saved by the results store's atomic writes.
"""
from __future__ import annotations

import atexit
import hashlib
import queue
import threading
import time
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any, Callable

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"


@dataclass
class Job:
    id: str
    key: str
    title: str
    work: Callable[[Callable[[float, str], None]], Any] = field(repr=False)
    state: str = QUEUED
    fraction: float = 0.0
    message: str = ""
    error: str | None = None
    result: Any = field(default=None, repr=False)
    started: float | None = None
    finished: float | None = None
    done_event: threading.Event = field(default_factory=threading.Event, repr=False)

    def progress(self, fraction: float, message: str = "") -> None:
        self.fraction = min(max(float(fraction), 0.0), 1.0)
        if message:
            self.message = message

    def wait(self, timeout: float | None = None) -> bool:
        return self.done_event.wait(timeout)

    def to_dict(self) -> dict:
        took = None if self.started is None else (self.finished or time.time()) - self.started
        return {"id": self.id, "key": self.key, "title": self.title, "state": self.state,
                "fraction": round(self.fraction, 4), "message": self.message, "error": self.error,
                "seconds": None if took is None else round(took, 3)}


def job_id(key: str) -> str:
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class Jobs:
    """The explorer's job queue (one worker thread, started on the first job; a daemon: it never keeps
    the process alive). At interpreter exit the queued jobs are dropped and a running one gets
    ``EXIT_WAIT`` seconds to finish (a thread killed inside torch aborts the process)."""

    def __init__(self):
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        _LIVE.add(self)

    def submit(self, key: str, title: str, work: Callable[[Callable[[float, str], None]], Any]) -> Job:
        """The job for ``key``: the one already queued, running or done, else a new one running ``work``.
        A failed job is replaced by a new one (asking again retries)."""
        with self._lock:
            job = self._jobs.get(job_id(key))
            if job is not None and job.state != FAILED:
                return job
            job = Job(job_id(key), key, title, work)
            self._jobs[job.id] = job
            self._queue.put(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._worker, name="convlens-jobs", daemon=True)
                self._thread.start()
            return job

    def get(self, id_: str) -> Job | None:
        return self._jobs.get(id_)

    def for_key(self, key: str) -> Job | None:
        return self._jobs.get(job_id(key))

    def forget(self, key: str) -> None:
        """Drop a finished job (its result is in the cache now; a later request reads it from there)."""
        with self._lock:
            job = self._jobs.get(job_id(key))
            if job is not None and job.state in (DONE, FAILED):
                del self._jobs[job.id]

    def all(self) -> list[Job]:
        return list(self._jobs.values())

    def close(self, wait: float = 0.0) -> None:
        """Take no more jobs; wait up to ``wait`` seconds for the running one."""
        self._closed = True
        running = [j for j in self._jobs.values() if j.state == RUNNING]
        for job in running:
            job.wait(wait)

    def _worker(self) -> None:
        while True:
            job = self._queue.get()
            if self._closed:
                continue
            job.state, job.started = RUNNING, time.time()
            try:
                job.result = job.work(job.progress)
                job.state, job.fraction = DONE, 1.0
            except Exception as e:  # noqa: BLE001 -- a failed job reports why; the server goes on
                job.state, job.error = FAILED, f"{type(e).__name__}: {e}"
                job.message = "failed"
                traceback.print_exc()
            finally:
                job.finished = time.time()
                job.done_event.set()


EXIT_WAIT = 60.0
_LIVE: "weakref.WeakSet[Jobs]" = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for jobs in list(_LIVE):
        jobs.close(EXIT_WAIT)
