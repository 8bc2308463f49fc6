"""The explorer app for in-process tests (Starlette's TestClient): an app over a run directory that waits,
when the module's tests are done, for every job its pages started; module fixtures over the demo run's copy
(``from tests.web.explorer import app, client, run``); and the wait for one job's end."""
from __future__ import annotations

import time
from typing import Iterator

import pytest


def explorer_app(run_dir, wait: float = 120) -> Iterator:
    """For a module fixture (``yield from``): ``create_app(run_dir)``, then no job thread left computing."""
    from convlens.web import create_app

    app = create_app(run_dir)
    yield app
    for job in app.state.explorer.jobs.all():
        job.wait(wait)


@pytest.fixture(scope="module")
def app(demo_copy):
    yield from explorer_app(demo_copy, wait=300)


@pytest.fixture(scope="module")
def client(app):
    from starlette.testclient import TestClient

    return TestClient(app)


@pytest.fixture(scope="module")
def run(demo_copy):
    import convlens

    return convlens.load_run(demo_copy)


def wait_job(client, job: dict, timeout: float = 120) -> dict:
    """Poll ``/api/jobs/{id}`` until the job ends; its final state, asserted done."""
    end = time.time() + timeout
    while True:
        state = client.get(f"/api/jobs/{job['id']}").json()
        if state["state"] in ("done", "failed"):
            assert state["state"] == "done", state
            return state
        assert time.time() < end, f"job {job['title']} still {state['state']} after {timeout} s"
        time.sleep(0.1)
