"""``/label``, the CNN vs Human game, through its JSON API and pages (in-process): the results against a count
made from the SQLite file itself and ``convlens.evaluate``'s predictions, scipy's binomial test and the kappa
formula; answers stored once; the issue's bad inputs; names escaped; exports; tags; the report section."""
from __future__ import annotations

import csv
import io
import json
import re
import sqlite3

import numpy as np
import pytest
from scipy.stats import binomtest
from starlette.testclient import TestClient

import convlens
from convlens.web import create_app

EVIL = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def client(demo_copy):
    for old in demo_copy.glob("labels.sqlite*"):  # a copy of a runs/demo someone played on: start empty
        old.unlink()
    return TestClient(create_app(demo_copy))


@pytest.fixture(scope="module")
def oracle(demo_copy):
    """(class names, true class index per test image, the CNN's top-5 per test image) from convlens.evaluate."""
    run = convlens.load_run(demo_copy)
    ev = convlens.evaluate(run)  # the run's own test split, as the explorer shows it
    return list(run.class_names), ev.labels.tolist(), ev.topk.tolist()


def _start(client, annotator="ada", n=10, practice=0, seed=0) -> str:
    r = client.post("/api/label/sessions", json={"annotator": annotator, "n": n, "practice": practice, "seed": seed})
    assert r.status_code == 201, r.text
    return r.json()["session"]


def _play(client, sid, oracle, *, seed=0, answer_id=None) -> list[dict]:
    """Answer every image of the session: the truth among the labels about half the time (the test may peek)."""
    names, truth, _ = oracle
    rng = np.random.default_rng(seed)
    out = []
    while True:
        nxt = client.get(f"/api/label/sessions/{sid}/next").json()
        if nxt["done"]:
            return out
        i = int(nxt["image_id"][1:])
        labels = list(rng.choice([n for n in names if n != names[truth[i]]], size=int(rng.integers(1, 5)), replace=False))
        if rng.random() < 0.6:
            labels.insert(int(rng.integers(0, len(labels) + 1)), names[truth[i]])
        body = {"image_id": nxt["image_id"], "labels": labels[:5], "seconds": float(rng.exponential(3))}
        r = client.post(f"/api/label/sessions/{sid}/answers", json=body)
        assert r.status_code == 200, r.text
        out.append({**body, "response": r.json()})


def _db(demo_copy):
    return sqlite3.connect(demo_copy / "labels.sqlite")


def test_results_match_a_count_from_the_stored_answers_and_evaluates_predictions(client, demo_copy, oracle):
    names, truth, topk = oracle
    sid = _start(client, "tally", n=40, practice=3, seed=11)
    _play(client, sid, oracle, seed=1)
    with _db(demo_copy) as con:  # the file itself, not the store's code
        rows = con.execute("SELECT a.image, a.labels FROM answers a JOIN items i ON i.session = a.session AND "
                           "i.image = a.image WHERE a.session = ? AND i.practice = 0", (sid,)).fetchall()
    assert len(rows) == 40
    for k, key in ((5, "table"), (1, "table_top1")):
        h = np.array([names[truth[int(im[1:])]] in json.loads(lab)[:k] for im, lab in rows])
        c = np.array([truth[int(im[1:])] in topk[int(im[1:])][:k] for im, lab in rows])
        got = client.get("/api/label/results", params={"annotator": "tally"}).json()
        assert got[key] == {"both_correct": int(np.sum(h & c)), "human_only_correct": int(np.sum(h & ~c)),
                            "cnn_only_correct": int(np.sum(~h & c)), "both_wrong": int(np.sum(~h & ~c))}
        suffix = "" if k == 5 else "_top1"
        assert got["human"][f"top{k}_error"] == pytest.approx(1 - h.mean())
        assert got["cnn"][f"top{k}_error"] == pytest.approx(1 - c.mean())
        b, cc = int(np.sum(h & ~c)), int(np.sum(~h & c))
        assert got[f"mcnemar_p{suffix}"] == pytest.approx(1.0 if b + cc == 0 else binomtest(b, b + cc, 0.5).pvalue)
        c_obs, ph, pc = np.mean(h == c), h.mean(), c.mean()
        c_exp = ph * pc + (1 - ph) * (1 - pc)
        kappa = got[f"kappa{suffix}"]
        assert (kappa is None and c_exp == 1) or kappa == pytest.approx((c_obs - c_exp) / (1 - c_exp))
        ci = binomtest(int(np.sum(~h)), len(h)).proportion_ci(method="wilson")
        assert got["human"][f"top{k}_ci"] == pytest.approx([ci.low, ci.high])
    assert got["n"] == 40 and got["annotator"] == "tally"
    page = client.get("/label/results", params={"annotator": "tally"}).text  # the page shows the same numbers
    assert f'{100 * got["human"]["top5_error"]:.1f}%' in page and f'{100 * got["cnn"]["top1_error"]:.1f}%' in page
    assert f'p = {got["mcnemar_p"]:.3g}' in page
    for im in got["cells"]["cnn_only_correct"]:
        assert f'href="../images/{im}"' in page  # each image links to its explorer page


def test_the_truth_comes_only_after_the_answer_is_committed(client, demo_copy, oracle):
    names, truth, topk = oracle
    sid = _start(client, "reveal", n=3)
    nxt = client.get(f"/api/label/sessions/{sid}/next").json()
    assert set(nxt) >= {"image_id", "image_url", "index", "remaining"} and "truth" not in json.dumps(nxt)
    assert nxt["remaining"] == 3 and nxt["index"] == 0
    assert client.get(nxt["image_url"]).headers["content-type"] == "image/png"
    r = client.post(f"/api/label/sessions/{sid}/answers",
                    json={"image_id": nxt["image_id"], "labels": [names[0]], "seconds": 2.5, "answer_id": "rv-1"}).json()
    with _db(demo_copy) as con:  # committed by the time the response arrived
        assert con.execute("SELECT labels, seconds FROM answers WHERE answer_id = 'rv-1'").fetchone() == \
            (json.dumps([names[0]]), 2.5)
    i = int(nxt["image_id"][1:])
    assert r["truth"] == names[truth[i]] and r["model_top5"] == [names[j] for j in topk[i]]
    assert r["correct_top1"] == (names[0] == names[truth[i]]) and r["correct_top5"] == r["correct_top1"]
    assert r["remaining"] == 2


def test_a_repeated_answer_id_is_stored_once_and_a_second_answer_gets_409(client, demo_copy):
    sid = _start(client, "twice", n=2)
    image = client.get(f"/api/label/sessions/{sid}/next").json()["image_id"]
    body = {"image_id": image, "labels": ["star", "circle"], "seconds": 1.0, "answer_id": "dbl-click"}
    first = client.post(f"/api/label/sessions/{sid}/answers", json=body)
    again = client.post(f"/api/label/sessions/{sid}/answers", json=body)
    assert first.status_code == again.status_code == 200 and again.json()["repeat"] is True
    assert {k: v for k, v in again.json().items() if k != "repeat"} == \
        {k: v for k, v in first.json().items() if k != "repeat"}
    other = client.post(f"/api/label/sessions/{sid}/answers", json={**body, "labels": ["ring"], "answer_id": "x2"})
    assert other.status_code == 409 and other.json()["error"]["stored"]["labels"] == ["star", "circle"]
    with _db(demo_copy) as con:
        assert con.execute("SELECT COUNT(*), labels FROM answers WHERE session = ? AND image = ?",
                           (sid, image)).fetchone() == (1, json.dumps(["star", "circle"]))


@pytest.mark.parametrize("body, status, words", [
    ({"labels": ["sqare"]}, 400, ["'sqare'", "square"]),
    ({"labels": []}, 400, ["1 to 5"]),
    ({"labels": ["circle", "square", "star", "ring", "heart", "cross"]}, 400, ["at most 5"]),
    ({"labels": ["circle", "star", "circle"]}, 400, ["'circle' twice"]),
    ({"labels": "circle"}, 400, ["list"]),
    ({"labels": ["circle"], "seconds": -1}, 400, ["seconds"]),
    ({"labels": ["circle"], "image_id": "t99999"}, 404, ["t99999"]),
    ({"labels": ["circle"], "image_id": "../../run.json"}, 404, ["no image"]),
])
def test_bad_answers(client, body, status, words):
    sid = _start(client, "bad", n=2)
    image = client.get(f"/api/label/sessions/{sid}/next").json()["image_id"]
    r = client.post(f"/api/label/sessions/{sid}/answers", json={"image_id": image, "seconds": 1, **body})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert all(w in err["message"] for w in words), err
    if "'sqare'" in words:
        assert "square" in err["suggestions"]


def test_unknown_sessions_images_and_bad_starts(client, demo_copy):
    sid = _start(client, "known", n=2)
    assert client.get("/api/label/sessions/0123456789abcdef/next").status_code == 404
    assert client.get("/label/sessions/nope").status_code == 404  # the HTML page too
    assert client.post("/api/label/sessions/0123456789abcdef/answers",
                       json={"image_id": "t1", "labels": ["star"]}).status_code == 404
    with _db(demo_copy) as con:
        inside = {im for (im,) in con.execute("SELECT image FROM items WHERE session = ?", (sid,))}
    outside = next(f"t{i}" for i in range(1000) if f"t{i}" not in inside)
    r = client.post(f"/api/label/sessions/{sid}/answers", json={"image_id": outside, "labels": ["star"]})
    assert r.status_code == 404 and "not in labeling session" in r.json()["error"]["message"]
    for body, word in (({"annotator": "", "n": 3}, "annotator"), ({"annotator": "x", "n": 0}, "n must"),
                       ({"annotator": "x", "n": 5000}, "at most 1000"), ({"annotator": "x", "n": 5, "practice": -1}, "practice")):
        r = client.post("/api/label/sessions", json=body)
        assert r.status_code == 400 and word in r.json()["error"]["message"], r.text
    assert client.post("/api/label/sessions", content=b"{nope", headers={"content-type": "application/json"}).status_code == 400


def test_reloading_continues_where_it_stopped_and_each_image_is_answered_once(client):
    sid = _start(client, "reload", n=4, practice=1)
    seen = []
    for step in range(5):
        page = client.get(f"/api/label/sessions/{sid}").json()  # the game page's JSON twin: what a reload shows
        nxt = client.get(f"/api/label/sessions/{sid}/next").json()
        assert page["item"] == nxt and nxt["index"] == step and nxt["practice"] == (step == 0)
        html = client.get(f"/label/sessions/{sid}").text
        assert f'src="../../label/png/images/{nxt["image_id"]}"' in html
        seen.append(nxt["image_id"])
        client.post(f"/api/label/sessions/{sid}/answers", json={"image_id": nxt["image_id"], "labels": ["star"]})
    assert len(set(seen)) == 5
    done = client.get(f"/api/label/sessions/{sid}/next").json()
    assert done["done"] is True and done["answered"] == 5
    assert client.get("/api/label").json()["sessions"][-1]["done"] is True


def test_practice_answers_are_shown_but_not_counted(client, oracle):
    sid = _start(client, "practice", n=3, practice=2)
    answers = _play(client, sid, oracle, seed=4)
    assert [a["response"]["practice"] for a in answers] == [True, True, False, False, False]
    got = client.get("/api/label/results", params={"annotator": "practice"}).json()
    assert got["n"] == 3
    counted = {a["image_id"] for a in answers[2:]}
    assert {im for cell in got["cells"].values() for im in cell} == counted


def test_annotator_names_are_escaped_everywhere(client, oracle):
    sid = _start(client, EVIL, n=3)
    _play(client, sid, oracle, seed=2)
    pages = ["/label", f"/label/sessions/{sid}", f"/label/sessions/{sid}/review", "/label/results",
             "/label/results?annotator=" + EVIL, "/label/results?annotator=" + EVIL + "x"]
    for path in pages:
        text = client.get(path).text
        assert "<script>alert" not in text, path
        assert "&lt;script&gt;alert(" in text or path.endswith("x"), path
    assert client.get("/api/label/results", params={"annotator": EVIL}).json()["annotator"] == EVIL


def test_exports_hold_every_counted_answer(client, demo_copy, oracle):
    sid = _start(client, "=HYPERLINK(1)", n=5)
    _play(client, sid, oracle, seed=3)
    rows = list(csv.DictReader(io.StringIO(client.get("/label/answers.csv").text)))
    data = client.get("/label/answers.json").json()["answers"]
    with _db(demo_copy) as con:
        n = con.execute("SELECT COUNT(*) FROM answers a JOIN items i ON i.session = a.session AND i.image = a.image "
                        "WHERE i.practice = 0").fetchone()[0]
    assert len(rows) == len(data) == n
    mine = [r for r in rows if r["session"] == sid]
    assert len(mine) == 5 and all(r["annotator"] == "'=HYPERLINK(1)" for r in mine)  # no formula in a spreadsheet
    names, truth, _ = oracle
    for r in mine:
        assert r["truth"] == names[truth[int(r["image"][1:])]]
        assert r["human_top5"] == str(int(r["truth"] in r["labels"].split("|")))
    only = client.get("/label/answers.json", params={"annotator": "=HYPERLINK(1)"}).json()["answers"]
    assert {a["image"] for a in only} == {r["image"] for r in mine}


def test_tags_by_form_and_json_are_counted_per_cell(client, oracle):
    names, truth, _ = oracle
    sid = _start(client, "tagger", n=12, seed=5)
    for step in range(12):  # always wrong: every image is in a cell to tag
        nxt = client.get(f"/api/label/sessions/{sid}/next").json()
        wrong = next(n for n in names if n != names[truth[int(nxt["image_id"][1:])]])
        client.post(f"/api/label/sessions/{sid}/answers", json={"image_id": nxt["image_id"], "labels": [wrong]})
    review = client.get(f"/api/label/sessions/{sid}/review").json()
    images = [a["image"] for a in review["answers"]]
    assert len(images) == 12
    r = client.post(f"/label/sessions/{sid}/tags", data={f"tag-{images[0]}": "fine-grained",
                                                        f"tag-{images[1]}": "class-unawareness"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "review?saved=1"
    assert client.post(f"/api/label/sessions/{sid}/tags",
                       json={"tags": {images[2]: "fine-grained", images[3]: "other"}}).status_code == 200
    assert client.post(f"/api/label/sessions/{sid}/tags", json={"image_id": images[4], "category": "nope"}).status_code == 400
    got = client.get("/api/label/results", params={"annotator": "tagger"}).json()
    cell_of = {im: cell for cell, ims in got["cells"].items() for im in ims}
    expect = {}
    for im, cat in ((images[0], "fine-grained"), (images[1], "class-unawareness"), (images[2], "fine-grained"),
                    (images[3], "other")):
        expect.setdefault(cell_of[im], {}).setdefault(cat, 0)
        expect[cell_of[im]][cat] += 1
    for cell, counts in got["categories"].items():
        assert {k: v for k, v in counts.items() if v and k != "untagged"} == expect.get(cell, {})
    assert sum(c["untagged"] for c in got["categories"].values()) == 8
    page = client.get(f"/label/sessions/{sid}/review").text
    assert page.count("selected>") == 4


def test_links_on_the_label_pages_are_relative(client):
    sid = _start(client, "links", n=2)
    for path in ("/label", f"/label/sessions/{sid}", f"/label/sessions/{sid}/review", "/label/results"):
        text = client.get(path).text
        hrefs = re.findall(r'(?:href|src|action)="([^"]*)"', text)
        assert hrefs and not [h for h in hrefs if h.startswith("/") or "://" in h], path


def test_examples_come_from_the_training_split_by_id(client):
    sid = _start(client, "examples", n=2)
    ex = client.get(f"/api/label/sessions/{sid}/examples").json()
    assert ex["source"] == "the training split" and ex["counts"] == [13] * 10
    assert client.get(f"/label/png/{sid}/3/12").headers["content-type"] == "image/png"
    for bad in (f"/label/png/{sid}/3/13", f"/label/png/{sid}/10/0", f"/label/png/{sid}/x/0", "/label/png/images/t1000",
                "/label/png/images/..%2Frun.json"):
        assert client.get(bad).status_code == 404, bad


def test_the_report_section_shows_the_same_numbers(client, demo_copy, oracle):
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.human_vs_cnn import human_vs_cnn

    _play(client, _start(client, "report", n=6, seed=9), oracle, seed=6)
    got = client.get("/api/label/results").json()
    section = human_vs_cnn(ReportContext(convlens.load_run(demo_copy), demo_copy / "report"))
    metrics = section.blocks[0].items
    assert metrics["images labelled"] == f"{got['n']:,}"
    assert metrics["human top-5 error"] == f"{100 * got['human']['top5_error']:.1f}%"
    assert metrics["CNN top-1 error"] == f"{100 * got['cnn']['top1_error']:.1f}%"
    table = next(b for b in section.blocks if b.kind == "table").rows
    assert table[0][1:3] == [got["table"]["both_correct"], got["table"]["human_only_correct"]]
    assert table[1][1:3] == [got["table"]["cnn_only_correct"], got["table"]["both_wrong"]]


def test_no_labels_no_report_section(tmp_path, demo_copy):
    import shutil

    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.human_vs_cnn import human_vs_cnn

    bare = tmp_path / "bare"
    shutil.copytree(demo_copy, bare, ignore=shutil.ignore_patterns("labels.sqlite*"))
    assert human_vs_cnn(ReportContext(convlens.load_run(bare), bare / "report")) is None
    assert not (bare / "labels.sqlite").exists()  # reading does not create the file


def test_without_a_training_split_the_examples_are_other_test_images_never_one_of_the_session(tmp_path, demo_copy,
                                                                                               oracle):
    import shutil

    from convlens.web.pages.label_game import game

    names, truth, _ = oracle
    wrapped = tmp_path / "wrapped"
    shutil.copytree(demo_copy, wrapped, ignore=shutil.ignore_patterns("labels.sqlite*"))
    manifest = json.loads((wrapped / "run.json").read_text())
    del manifest["data"]["train"]  # as `convlens wrap --data` records it: a test split only
    (wrapped / "run.json").write_text(json.dumps(manifest))
    app = create_app(wrapped)
    c = TestClient(app)
    sid = _start(c, "ex", n=120, practice=10, seed=2)
    got = c.get(f"/api/label/sessions/{sid}/examples").json()
    assert got["source"].startswith("test images that are not in this session")
    with sqlite3.connect(wrapped / "labels.sqlite") as con:
        session = {int(im[1:]) for (im,) in con.execute("SELECT image FROM items WHERE session = ?", (sid,))}
    assert len(session) == 130
    rows = game(app.state.explorer).examples(sid)["rows"]
    for cls, count in enumerate(got["counts"]):
        available = [i for i, t in enumerate(truth) if t == cls and i not in session]
        assert count == min(13, len(available)) and rows[cls] == available[:13]
        assert not set(rows[cls]) & session


def test_a_client_that_never_asks_for_next_still_gets_the_cnns_guess(client, demo_copy, oracle):
    names, truth, topk = oracle
    sid = _start(client, "direct", n=20, seed=21)
    with _db(demo_copy) as con:  # the last image of the session: `next` never looked that far ahead
        image = con.execute("SELECT image FROM items WHERE session = ? ORDER BY position DESC LIMIT 1", (sid,)).fetchone()[0]
    r = client.post(f"/api/label/sessions/{sid}/answers", json={"image_id": image, "labels": [names[0]]}).json()
    assert r["model_top5"] == [names[j] for j in topk[int(image[1:])]]
