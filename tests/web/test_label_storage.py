"""The labels file (``RUN/labels.sqlite``) keeps what it acknowledged: schema versions and migrations, 8 annotators
posting at once through a real server, the same answer posted by 8 clients at once, and a server SIGKILLed
while answers are posted (restarted: every acknowledged answer is there, once)."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from convlens.errors import InputError
from convlens.results import labels as labels_mod
from convlens.results.labels import LabelStore
from tests.web.browser import free_port, serving

ROOT = Path(__file__).resolve().parents[2]


def _call(base: str, path: str, body: dict | None = None, timeout: float = 30) -> tuple[int, dict]:
    req = urllib.request.Request(base + path, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


# ---- schema --------------------------------------------------------------------------------------------

def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as con:
        return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def test_a_new_file_is_at_the_current_schema_version_in_wal_mode(tmp_path):
    store = LabelStore(tmp_path)
    assert store.version() == labels_mod.SCHEMA_VERSION >= 1
    assert {"sessions", "items", "answers", "tags", "predictions"} <= _tables(store.path)
    with sqlite3.connect(store.path) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert LabelStore(tmp_path / "none", create=False).rows() == [] and not (tmp_path / "none").exists()


def test_an_older_file_is_migrated_and_keeps_its_rows(tmp_path, monkeypatch):
    store = LabelStore(tmp_path)
    s = store.create_session("ada", [("t1", "cat", ["cat", "dog"], False)], n=1, practice=0, seed=0, data="d", weights="w")
    store.answer(s.id, "t1", ["cat"], seconds=1.0, answer_id="a1")
    monkeypatch.setattr(labels_mod, "MIGRATIONS", [*labels_mod.MIGRATIONS, "ALTER TABLE answers ADD COLUMN device TEXT;"])
    monkeypatch.setattr(labels_mod, "SCHEMA_VERSION", labels_mod.SCHEMA_VERSION + 1)
    again = LabelStore(tmp_path)
    assert again.version() == labels_mod.SCHEMA_VERSION
    with sqlite3.connect(again.path) as con:
        assert "device" in [r[1] for r in con.execute("PRAGMA table_info(answers)")]
    assert [r["answer_id"] for r in again.rows()] == ["a1"]


def test_a_failing_migration_changes_nothing(tmp_path, monkeypatch):
    LabelStore(tmp_path)
    before = _tables(tmp_path / "labels.sqlite")
    monkeypatch.setattr(labels_mod, "MIGRATIONS", [*labels_mod.MIGRATIONS, "CREATE TABLE extra (a); SELEC nonsense;"])
    monkeypatch.setattr(labels_mod, "SCHEMA_VERSION", labels_mod.SCHEMA_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        LabelStore(tmp_path)
    assert _tables(tmp_path / "labels.sqlite") == before
    with sqlite3.connect(tmp_path / "labels.sqlite") as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == labels_mod.SCHEMA_VERSION - 1


def test_a_newer_file_is_refused_and_left_as_it_is(tmp_path):
    LabelStore(tmp_path)
    with sqlite3.connect(tmp_path / "labels.sqlite") as con:
        con.execute("PRAGMA user_version = 99")
    with pytest.raises(InputError, match="newer"):
        LabelStore(tmp_path)
    with sqlite3.connect(tmp_path / "labels.sqlite") as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == 99


# ---- many annotators at once -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo_run(demo_copy):
    """The module's copy of runs/demo without answers (a copy of a runs/demo someone played on has some)."""
    for old in demo_copy.glob("labels.sqlite*"):
        old.unlink()
    return demo_copy


@pytest.mark.slow
def test_eight_annotators_posting_fifty_answers_each_lose_nothing(demo_run):
    from convlens.web import create_app

    errors, acked = [], {}
    with serving(create_app(demo_run)) as base:
        def annotator(t: int) -> None:
            try:
                status, s = _call(base, "api/label/sessions", {"annotator": f"c{t}", "n": 50, "seed": t})
                assert status == 201, s
                sid, mine = s["session"], []
                for k in range(50):
                    status, nxt = _call(base, f"api/label/sessions/{sid}/next")
                    body = {"image_id": nxt["image_id"], "labels": ["star", "circle"][: 1 + k % 2], "seconds": k,
                            "answer_id": f"c{t}-{k}"}
                    status, r = _call(base, f"api/label/sessions/{sid}/answers", body)
                    assert status == 200 and not r["repeat"], r
                    mine.append(body)
                acked[sid] = mine
            except BaseException as e:  # noqa: BLE001  reported below
                errors.append(repr(e))
        threads = [threading.Thread(target=annotator, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(300)
    assert not errors, errors[:3]
    with sqlite3.connect(demo_run / "labels.sqlite") as con:
        stored = {aid: (sid, image, json.loads(lab)) for aid, sid, image, lab in
                  con.execute("SELECT answer_id, session, image, labels FROM answers WHERE answer_id LIKE 'c%-%'")}
    assert len(acked) == 8 and len(stored) == 400
    for sid, answers in acked.items():
        for a in answers:
            assert stored[a["answer_id"]] == (sid, a["image_id"], a["labels"])


@pytest.mark.slow
def test_the_same_answer_from_eight_clients_at_once_is_stored_once(demo_run):
    from convlens.web import create_app

    with serving(create_app(demo_run)) as base:
        _, s = _call(base, "api/label/sessions", {"annotator": "race", "n": 1})
        sid = s["session"]
        _, nxt = _call(base, f"api/label/sessions/{sid}/next")
        body = {"image_id": nxt["image_id"], "labels": ["ring"], "seconds": 1.0, "answer_id": "same-one"}
        gate, results = threading.Barrier(8), []

        def post():
            gate.wait()
            results.append(_call(base, f"api/label/sessions/{sid}/answers", body))
        threads = [threading.Thread(target=post) for _ in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
    assert [status for status, _ in results] == [200] * 8
    assert sum(not r["repeat"] for _, r in results) == 1
    with sqlite3.connect(demo_run / "labels.sqlite") as con:
        assert con.execute("SELECT COUNT(*) FROM answers WHERE session = ?", (sid,)).fetchone()[0] == 1


# ---- a server killed while answers are posted -------------------------------------------------------------

def _server(run: Path, port: int) -> subprocess.Popen:
    code = f"from convlens.web import serve; serve({str(run)!r}, port={port})"
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _wait_up(base: str, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if _call(base, "api/label", timeout=30)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("the server did not start")


@pytest.mark.slow
def test_a_server_killed_while_answers_are_posted_keeps_every_acknowledged_answer(demo_run):
    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    procs = [_server(demo_run, port)]
    acked: list[dict] = []
    refused: list = []
    stop = threading.Event()
    try:
        _wait_up(base, procs[-1])
        _, s = _call(base, "api/label/sessions", {"annotator": "killed", "n": 300, "seed": 3})
        sid = s["session"]

        def poster():  # a client as the page is one: an answer not acknowledged is posted again, unchanged
            k = 0
            body = None
            while not stop.is_set():
                try:
                    if body is None:
                        _, nxt = _call(base, f"api/label/sessions/{sid}/next", timeout=5)
                        if nxt.get("done"):
                            return
                        body = {"image_id": nxt["image_id"], "labels": ["heart", "star"][: 1 + k % 2],
                                "seconds": 0.5, "answer_id": f"k-{k}"}
                    status, r = _call(base, f"api/label/sessions/{sid}/answers", body, timeout=5)
                    if status != 200:  # a repeat of a stored answer is acknowledged too: anything else is wrong
                        refused.append((status, r))
                        return
                    acked.append(body)
                    body, k = None, k + 1
                except OSError:  # the server is down (killed mid-request): not acknowledged; post it again later
                    time.sleep(0.05)
        thread = threading.Thread(target=poster)
        thread.start()
        deadline = time.time() + 120
        while len(acked) < 25 and time.time() < deadline:
            time.sleep(0.01)
        os.kill(procs[-1].pid, signal.SIGKILL)  # mid-stream, no warning
        procs[-1].wait(10)
        killed_at = len(acked)
        procs.append(_server(demo_run, port))
        _wait_up(base, procs[-1])
        while len(acked) < killed_at + 10 and not refused and time.time() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(30)
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert not refused, refused
    assert killed_at >= 25 and len(acked) >= killed_at + 10
    with sqlite3.connect(demo_run / "labels.sqlite") as con:
        stored = {aid: (image, json.loads(lab)) for aid, image, lab in
                  con.execute("SELECT answer_id, image, labels FROM answers WHERE session = ?", (sid,))}
    for a in acked:
        assert stored[a["answer_id"]] == (a["image_id"], a["labels"])
    assert len({image for image, _ in stored.values()}) == len(stored)  # each image once
