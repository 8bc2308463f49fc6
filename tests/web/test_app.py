"""The explorer's frame: relative links under any prefix, typed errors, the static folder, jobs run once."""
from __future__ import annotations

import re
import threading
import time

import pytest
from starlette.testclient import TestClient

from convlens.web import create_app
from convlens.web.app import rel
from convlens.web.jobs import Jobs


@pytest.fixture(scope="module")
def client(demo_copy):
    return TestClient(create_app(demo_copy))


def test_the_model_page_and_its_json_twin_agree_with_the_summary(client, demo_copy):
    import convlens

    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    twin = client.get("/api").json()
    table = convlens.summary(convlens.load_run(demo_copy)).to_dict()["layers"]
    assert [r["name"] for r in twin["layers"]] == [r["name"] for r in table]
    assert [r["params"] for r in twin["layers"]] == [r["params"] for r in table]
    for row in twin["layers"]:
        assert row["name"] in page.text


def test_links_are_relative_so_any_proxy_prefix_works(client):
    for path in ("/", "/nope/deeper"):
        text = client.get(path).text
        hrefs = re.findall(r'(?:href|src|action)="([^"]*)"', text)
        assert hrefs and not [h for h in hrefs if h.startswith("/") or "://" in h], path


@pytest.mark.parametrize("path, root, expected", [
    ("/", "", "./"), ("/layers/conv3", "", "../"), ("/layers/conv3/units/5", "", "../../../"),
    ("/prefix/layers/conv3", "/prefix", "../"), ("/prefix/", "/prefix", "./")])
def test_rel_climbs_one_level_per_path_segment(path, root, expected):
    class Request:
        scope = {"path": path, "root_path": root}
    assert rel(Request()) == expected


def test_served_under_a_root_path_prefix(demo_copy):
    prefixed = TestClient(create_app(demo_copy), root_path="/proxy/abc")
    page = prefixed.get("/proxy/abc/")
    assert page.status_code == 200 and 'href="./static/explorer.css"' in page.text
    assert prefixed.get("/proxy/abc/static/explorer.css").status_code == 200


def test_unknown_pages_get_a_typed_404(client):
    html = client.get("/no-such-page")
    assert html.status_code == 404 and "Not found" in html.text
    body = client.get("/api/no-such-page").json()
    assert body["error"]["type"] == "not_found" and body["error"]["status"] == 404


@pytest.mark.parametrize("path", ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2Fapp.py",
                                  "/static/%2F/etc/passwd", "/static//etc/passwd", "/static/%2e%2e%2f%2e%2e%2frun.json"])
def test_static_files_never_leave_the_static_folder(client, path):
    r = client.get(path)
    assert r.status_code in (400, 404), path
    assert "def create_app" not in r.text and "root:" not in r.text


def test_static_assets_ship_in_the_package(client):
    for name in ("explorer.css", "explorer.js"):
        assert client.get(f"/static/{name}").status_code == 200


def test_a_job_asked_for_twice_runs_once():
    jobs, runs, gate = Jobs(), [], threading.Event()

    def work(progress):
        runs.append(1)
        progress(0.5, "half")
        gate.wait(5)
        return 42
    first = jobs.submit("k", "the job", work)
    second = jobs.submit("k", "the job", work)
    assert first is second
    deadline = time.time() + 5
    while first.state == "queued" and time.time() < deadline:
        time.sleep(0.01)
    assert first.to_dict()["state"] == "running"
    gate.set()
    assert first.wait(5) and first.result == 42 and runs == [1]
    assert jobs.submit("k", "the job", work) is first  # done: still the same job until forgotten


def test_a_failed_job_reports_why_and_is_retried():
    jobs = Jobs()

    def bad(progress):
        raise ValueError("no data")
    job = jobs.submit("bad", "bad", bad)
    assert job.wait(5) and job.state == "failed" and "ValueError: no data" in job.error
    assert jobs.submit("bad", "bad", lambda p: 1) is not job


def test_job_status_is_json_and_unknown_jobs_are_404(client):
    jobs = client.get("/api/jobs").json()["jobs"]
    assert isinstance(jobs, list) and all({"id", "state", "fraction"} <= set(j) for j in jobs)
    body = client.get("/api/jobs/0123456789abcdef").json()
    assert body["error"]["type"] == "not_found"


def test_binding_beyond_this_machine_warns(monkeypatch, demo_copy):
    import uvicorn

    from convlens.web import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    with pytest.warns(UserWarning, match="reachable from other machines"):
        serve(demo_copy, host="0.0.0.0", port=1)
