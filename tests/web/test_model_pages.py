"""The explorer's model, layer and unit pages (``/``, ``/layers/{layer}``, ``/layers/{layer}/units/{unit}``,
``/confusion/{true}/{pred}``) and their JSON twins, in-process with Starlette's test client.

The run is a private copy of ``runs/demo`` without results: the pages start what is missing as jobs (the
top patches, the evaluation, the health check, a layer's activations) and the tests wait for them, then
check every number against an independent oracle: the library call on the same run and images, the files
the CLI's format writes (read back through ``ResultStore``), counts from the data's labels.
"""
from __future__ import annotations

import io
import re
import textwrap
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

import convlens
from convlens.results import ResultStore
from convlens.web import create_app

LAYER, UNIT = "conv3", 5


def wait(client, job: dict | None, timeout: float = 120.0) -> dict | None:
    """Poll ``/api/jobs/{id}`` until the job is done (or failed: the test fails with its error)."""
    end = time.monotonic() + timeout
    while job is not None and job["state"] not in ("done", "failed"):
        assert time.monotonic() < end, f"job {job['title']} still {job['state']} after {timeout} s"
        time.sleep(0.1)
        job = client.get(f"/api/jobs/{job['id']}").json()
    assert job is None or job["state"] == "done", job
    return job


def settle(app) -> None:
    """Every job of the app finished (none left running torch when the interpreter exits)."""
    for job in app.state.explorer.jobs.all():
        job.done_event.wait(300)


def relative_links(html: str) -> list[str]:
    links = re.findall(r'(?:href|src|action)="([^"]*)"', html)
    assert links
    return [link for link in links if link.startswith("/") or "://" in link]


@pytest.fixture(scope="module")
def site(demo_copy):
    """(client, explorer, the first unit page's JSON): the unit page of a run without top patches answers at
    once with a job; the fixture waits for it, and for the evaluation the model page starts."""
    app = create_app(demo_copy)
    client = TestClient(app)
    first = client.get(f"/api/layers/{LAYER}/units/{UNIT}")
    assert first.status_code == 200
    first = first.json()
    wait(client, first["job"])
    wait(client, client.get("/api").json()["evaluation_job"])
    yield client, app.state.explorer, first
    settle(app)


@pytest.fixture(scope="module")
def unit_json(site):
    client, _, _ = site
    page = client.get(f"/api/layers/{LAYER}/units/{UNIT}").json()
    wait(client, page["histogram_job"])
    wait(client, page["projections"]["job"])
    return client.get(f"/api/layers/{LAYER}/units/{UNIT}").json()


def test_a_unit_page_without_top_patches_starts_the_mining_job_then_shows_them(site, demo_copy):
    client, ex, first = site
    assert first["top"] is None and first["job"]["title"].startswith("Mining")
    page = client.get(f"/layers/{LAYER}/units/{UNIT}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'class="unit-top"' in page.text and f"units/{UNIT}/patch/0" in page.text
    # the job saved the CLI's default result (`convlens top-patches RUN`): every conv layer, k=9, and the
    # same patches as the library call
    assert (demo_copy / "results" / "top-patches.json").is_file()
    top = ResultStore(demo_copy).load("top-patches")
    assert top.layers == ex.layers and top.k == 9 and top.rows_mined == len(ex.data)
    alone = convlens.top_patches(convlens.load_run(demo_copy), None, [LAYER], k=9, progress=False)
    np.testing.assert_array_equal(top.indices[LAYER], alone.indices[LAYER])
    np.testing.assert_allclose(top.values[LAYER], alone.values[LAYER], rtol=1e-5)


def test_the_unit_page_equals_the_saved_top_patches_and_the_data(site, unit_json, demo_copy):
    client, ex, _ = site
    top = ResultStore(demo_copy).load("top-patches")
    want = top.top(LAYER, UNIT)
    got = unit_json["top"]
    assert [e["index"] for e in got] == [w["image"] for w in want] and len(got) == 9
    np.testing.assert_allclose([e["value"] for e in got], [w["value"] for w in want], rtol=1e-6)
    assert [e["box"] for e in got] == [list(w["box"]) for w in want]
    assert [e["image"] for e in got] == [f"t{w['image']}" for w in want]
    # the classes of the top images, counted from the dataset's labels
    names = ex.data.class_names
    counts = Counter(names[int(ex.data.labels[w["image"]])] for w in want)
    assert {c["class"]: c["count"] for c in unit_json["classes"]} == dict(counts)
    assert unit_json["status"]["best"] == pytest.approx(float(top.values[LAYER][top.row(LAYER, UNIT), 0]))
    # keyboard navigation and links
    html = client.get(f"/layers/{LAYER}/units/{UNIT}").text
    assert f'data-prev="../../../layers/{LAYER}/units/{UNIT - 1}"' in html
    assert f'data-next="../../../layers/{LAYER}/units/{UNIT + 1}"' in html
    assert 'data-prev-layer="../../../layers/conv2"' in html and 'data-next-layer="../../../layers/conv4"' in html
    assert f'data-up="../../../layers/{LAYER}"' in html
    for e in got:
        assert f'href="../../../images/{e["image"]}"' in html and f"{e['value']:.4g}" in html


def test_the_histogram_counts_every_image_and_equals_unit_maxima(site, unit_json, demo_copy):
    _, ex, _ = site
    tapped = ResultStore(demo_copy).load("top-patches").paths[LAYER]  # the tensor the unit's patches rank
    h = unit_json["histogram"]
    assert h["n"] == len(ex.data) and sum(h["counts"]) == len(ex.data)
    from convlens.units.backprop import unit_maxima

    run = ex.run
    with ex.lock:
        values, _ = unit_maxima(run.pixel_model(), ex.data.images, tapped, UNIT)
    np.testing.assert_allclose(h["values"], values.numpy(), rtol=1e-4, atol=1e-5)
    assert h["max"] == pytest.approx(float(values.max()), rel=1e-4)
    # the unit's best top-patch value is the largest image maximum
    assert h["max"] == pytest.approx(unit_json["top"][0]["value"], rel=1e-4)


def test_thumbnails_decode_to_the_crops_size(site, unit_json, demo_copy):
    client, ex, _ = site
    top = ResultStore(demo_copy).load("top-patches")
    crops = top.crops(LAYER, UNIT, ex.data)
    for rank in (0, 4, 8):
        r = client.get(f"/png/layers/{LAYER}/units/{UNIT}/patch/{rank}")
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        im = Image.open(io.BytesIO(r.content))
        assert (im.height, im.width) == tuple(crops[rank].shape[1:])
        pixels = np.asarray(im.convert("RGB")).astype(float) / 255
        np.testing.assert_allclose(pixels, crops[rank].permute(1, 2, 0).numpy(), atol=1 / 255 + 1e-6)
    small = Image.open(io.BytesIO(client.get(f"/png/layers/{LAYER}/units/{UNIT}/patch/0?max=16").content))
    assert max(small.size) <= 16
    # the projections are the deconvnet's, cropped like the patches
    from convlens.units.backprop import top_projections

    with ex.lock:
        proj = top_projections(ex.run, top, ex.data, LAYER, UNIT)
    im = Image.open(io.BytesIO(client.get(unit_json["top"][2]["projection"]).content))
    assert (im.height, im.width) == tuple(proj[2].shape[1:])
    for bad in ("9", "-1", "x"):
        assert client.get(f"/png/layers/{LAYER}/units/{UNIT}/patch/{bad}").status_code == 404
    assert client.get(f"/png/layers/{LAYER}/units/{UNIT}/patch/0?max=99999").status_code == 400


def test_the_layer_page_shows_every_unit_and_marks_the_silent_ones(site, demo_copy):
    client, ex, _ = site
    page = client.get(f"/layers/{LAYER}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    twin = client.get(f"/api/layers/{LAYER}").json()
    top = ResultStore(demo_copy).load("top-patches")
    best = top.values[LAYER][:, 0]
    assert [c["unit"] for c in twin["grid"]] == top.units[LAYER].tolist() == list(range(128))
    np.testing.assert_allclose([c["best"] for c in twin["grid"]], best, rtol=1e-6)
    assert twin["silent"] == [int(u) for u, b in zip(top.units[LAYER], best) if not b > 0]
    positive = (top.values[LAYER] > 0).sum(1)
    assert [c["rare"] for c in twin["grid"]] == [bool(b > 0 and p < 9) for b, p in zip(best, positive)]
    for c in twin["grid"]:
        assert f'href="../{c["href"]}"' in page.text
    assert 'loading="lazy"' in page.text
    assert 'data-prev-layer="../layers/conv2"' in page.text and 'data-up="../"' in page.text
    # the filters: the layer's own diagnosis, as convlens.filters computes it
    want = convlens.filters(convlens.load_run(demo_copy), LAYER).diagnosis
    assert twin["filters"]["verdict"] == want.verdict and twin["filters"]["shape"] == list(want.shape)
    grid = client.get(twin["filters"]["grid"].replace("png/", "/png/", 1))
    assert grid.status_code == 200 and Image.open(io.BytesIO(grid.content)).size[0] > 0


def test_a_silent_unit_is_marked(site):
    """A unit whose best activation is <= 0 shows as silent (the trained demo has none: fake one by zeroing
    a unit's saved values in the loaded result)."""
    client, ex, _ = site
    from convlens.web.pages.layer import grids
    from convlens.web.pages.patches import patches

    top, _, _ = patches(ex, LAYER, start=False)
    saved_values = top.values[LAYER][7].copy()
    try:
        top.values[LAYER][7] = -1.0
        grids(ex).clear()  # the grid is kept per version of the files, which did not change
        twin = client.get(f"/api/layers/{LAYER}").json()
        assert 7 in twin["silent"]
        assert 'class="layer-silent"' in client.get(f"/layers/{LAYER}").text
    finally:
        top.values[LAYER][7] = saved_values
        grids(ex).clear()


def test_the_model_page_agrees_with_the_summary_and_the_evaluation(site, demo_copy):
    client, ex, _ = site
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    twin = client.get("/api").json()
    table = convlens.summary(convlens.load_run(demo_copy)).to_dict()["layers"]
    keys = ("name", "type", "output_shape", "activations", "params", "rf")
    assert [{k: r[k] for k in keys} for r in twin["layers"]] == [{k: r[k] for k in keys} for r in table]
    for name in ex.layers:
        assert f'href="./layers/{name}"' in page.text
    # the evaluation the page started was saved as the default result, equal to convlens.evaluate
    ev = convlens.evaluate(convlens.load_run(demo_copy))
    assert ResultStore(demo_copy).load("evaluation")["top1_error"] == pytest.approx(ev.top1_error)
    got = twin["evaluation"]
    assert got["top1"] == pytest.approx(1 - ev.top1_error) and got["top5"] == pytest.approx(1 - ev.top5_error)
    assert [r["class"] for r in got["hardest"]] == [r["class"] for r in ev.hardest(5)]
    assert [e["index"] for e in got["hardest"][0]["examples"]] == ev.hardest(5)[0]["examples"]
    conf = ev.confusion.numpy()
    cm = got["confusion"]
    assert cm["classes"] == list(range(10)) and cm["matrix"] == conf.tolist()
    for t, p in zip(*np.nonzero(conf)):
        assert f'href="./confusion/{t}/{p}"' in page.text
    assert f"top-1 accuracy {100 * got['top1']:.1f}%" in page.text
    assert "png/model/memory" in page.text and "png/model/training" in page.text
    for chart in ("memory", "training"):
        r = client.get(f"/png/model/{chart}")
        assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).size[0] > 100
    assert relative_links(page.text) == []


def test_a_confusion_cell_lists_its_images(site, demo_copy):
    client, ex, _ = site
    ev = convlens.evaluate(convlens.load_run(demo_copy))
    conf = ev.confusion.numpy().copy()
    np.fill_diagonal(conf, 0)
    t, p = np.unravel_index(conf.argmax(), conf.shape)
    twin = client.get(f"/api/confusion/{t}/{p}").json()
    wait(client, twin["job"])
    twin = client.get(f"/api/confusion/{t}/{p}").json()
    want = ((ev.labels == int(t)) & (ev.predictions == int(p))).nonzero().view(-1).tolist()
    assert [im["index"] for im in twin["images"]] == want and twin["count"] == conf[t, p]
    html = client.get(f"/confusion/{t}/{p}").text
    for i in want:
        assert f'href="../../images/t{i}"' in html
    assert client.get("/api/confusion/3/99").status_code == 404


def test_health_starts_on_request_and_shows_its_verdicts(site, demo_copy):
    client, ex, _ = site
    assert client.get("/api").json()["health"] is None
    assert 'action="./api/start/health"' in client.get("/").text
    started = client.post("/api/start/health")
    assert started.status_code in (200, 202)
    wait(client, started.json()["job"])
    twin = client.get("/api").json()
    saved = ResultStore(demo_copy).load("health")
    assert twin["health"]["verdict"] == saved.verdict
    assert [r["name"] for r in twin["health"]["layers"]] == [h.name for h in saved.layers]
    # a browser's form post is sent back to the model page, relatively
    back = client.post("/api/start/health", headers={"accept": "text/html"}, follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == "../../"


def test_every_page_type_links_relatively(site):
    client, _, _ = site
    for path in ("/", f"/layers/{LAYER}", f"/layers/{LAYER}/units/{UNIT}", "/confusion/1/7", "/layers/conv33"):
        assert relative_links(client.get(path).text) == [], path


@pytest.mark.parametrize("path, near", [("/layers/conv33", "conv3"), ("/layers/conv3/units/500", "127"),
                                        ("/layers/conv3/units/abc", None), ("/layers/con1/units/0", "conv1")])
def test_unknown_layers_and_units_get_a_404_with_suggestions(site, path, near):
    client, _, _ = site
    html = client.get(path)
    assert html.status_code == 404 and "Not found" in html.text
    body = client.get("/api" + path).json()["error"]
    assert body["type"] == "not_found" and body["status"] == 404
    if near is not None:
        assert near in body["suggestions"]
    if "units" in path and "con1" not in path:
        assert "0-127" in body["message"]
    assert client.get("/png" + path + "/patch/0").status_code == 404


def test_the_unit_model_is_computed_on_request(site, demo_copy, monkeypatch):
    """The button starts `convlens class-model --layer L --unit U` as a job (3 seeds, 100 steps: here the
    library call is made cheaper, the options saved are the command's)."""
    client, ex, _ = site
    import convlens.synthesis.class_model as cm

    real = cm.class_model
    calls = []

    def cheap(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **{**kwargs, "steps": 3})
    monkeypatch.setattr(cm, "class_model", cheap)
    assert client.get(f"/api/layers/conv4/units/2").json()["unit_model"] is None
    started = client.post("/api/layers/conv4/units/2/unit-model")
    wait(client, started.json()["job"])
    assert calls == [{"layer": "conv4", "unit": [2], "n_seeds": 3, "steps": 100, "progress": False}]
    page = client.get("/api/layers/conv4/units/2").json()
    saved = ResultStore(demo_copy).load("unit-model", {"layer": "conv4", "unit": "2"})
    assert len(page["unit_model"]["images"]) == 3 == len(saved.images)
    png = client.get(page["unit_model"]["images"][0]["png"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"


def test_the_confusion_table_of_1000_classes_keeps_the_classes_present_capped():
    from convlens.web.pages.model import CONFUSION_CAP, confusion_table

    rng = np.random.default_rng(0)
    conf = np.zeros((1000, 1000), dtype=np.int64)
    true = rng.choice(1000, 5, replace=False)
    for t in true:
        conf[t, rng.choice(1000, 12, replace=False)] += rng.integers(1, 5, 12)
    present = sorted(set(np.flatnonzero(conf.sum(0))) | set(np.flatnonzero(conf.sum(1))))
    table = confusion_table(conf, [f"c{i}" for i in range(1000)])
    assert table["present"] == len(present) and len(table["classes"]) == min(len(present), CONFUSION_CAP)
    assert set(true) <= set(table["classes"])  # the true classes hold the most images
    assert table["classes"] == sorted(table["classes"]) and table["note"]
    idx = table["classes"]
    assert table["matrix"] == conf[np.ix_(idx, idx)].tolist()
    small = confusion_table(conf[np.ix_(present[:8], present[:8])], [f"c{i}" for i in present[:8]])
    assert len(small["classes"]) <= 8


def test_saved_top_projections_are_read_instead_of_computed(site, demo_copy):
    """A ``top-projections`` result (``convlens precompute``) made from the same top patches is shown as
    saved; its PNG equals the library's projection of that unit."""
    import dataclasses

    from convlens.results.registry import ANALYSES
    from convlens.units.backprop import top_projections
    from convlens.plots.backprop import projection_image

    client, ex, _ = site
    layer, unit = "conv4", 9  # a unit no other test opens (its projections are not in memory)
    top = ResultStore(demo_copy).load("top-patches")
    if "top-projections" in ANALYSES:
        from convlens.units.projection_sets import projection_sets

        r = top.row(layer, unit)
        one = dataclasses.replace(top, layers=[layer], **{f: {layer: getattr(top, f)[layer][r:r + 1]} for f in
                                                          ("values", "indices", "positions", "boxes", "units",
                                                           "exact_values")})
        with ex.lock:
            ResultStore(demo_copy).save("top-projections", projection_sets(ex.run, one, ex.data))
    page = client.get(f"/api/layers/{layer}/units/{unit}").json()
    wait(client, page["projections"]["job"])
    page = client.get(f"/api/layers/{layer}/units/{unit}").json()
    want = "saved" if "top-projections" in ANALYSES else "computed"
    assert want in page["projections"]["source"]
    with ex.lock:
        proj = top_projections(ex.run, top, ex.data, layer, unit)
    got = np.asarray(Image.open(io.BytesIO(client.get(page["top"][1]["projection"]).content)).convert("RGB"))
    np.testing.assert_allclose(got / 255, projection_image(proj[1]), atol=1 / 255 + 1e-3)


# ---- a model convlens did not build -----------------------------------------------------------------------

USER_MODEL = '''
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import BasicBlock as Block  # the fixture models' hand-written residual block


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 16, stride=2)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        x = F.relu(self.bn(self.stem(x)))
        return self.fc(self.block2(self.block1(x)).mean((2, 3)))


def make():
    torch.manual_seed(0)
    return Net().eval()
'''


@pytest.fixture(scope="module")
def wrapped_run(tmp_path_factory):
    from convlens.cli.app import main

    root = tmp_path_factory.mktemp("user-model")
    (root / "net.py").write_text(textwrap.dedent(USER_MODEL))
    folder = root / "images"
    ds = convlens.datasets.load("shapes", split="test", n=30, size=(32, 32))
    for i, (image, label) in enumerate(zip(ds.images, ds.labels)):
        (folder / ds.class_names[int(label)]).mkdir(parents=True, exist_ok=True)
        pixels = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / ds.class_names[int(label)] / f"{i:03d}.png")
    run = root / "run"
    try:
        main(["wrap", f"{root / 'net.py'}:make", "--out", str(run), "--input", "32x32x3", "--data", str(folder),
              "--mean", "0.5", "--std", "0.25"])
    except SystemExit as exit_:
        assert not exit_.code
    return run


def test_a_wrapped_user_model_serves_its_model_and_layer_pages(wrapped_run):
    app = create_app(wrapped_run)
    client = TestClient(app)
    try:
        model = client.get("/api").json()
        assert model["explorable"] == ["stem", "block1.conv1", "block1.conv2", "block2.conv1", "block2.conv2",
                                       "block2.shortcut.0"]
        assert client.get("/").status_code == 200
        layer = client.get("/api/layers/block2.conv2").json()
        wait(client, layer["job"])
        page = client.get("/layers/block2.conv2")
        assert page.status_code == 200 and relative_links(page.text) == []
        layer = client.get("/api/layers/block2.conv2").json()
        assert [c["unit"] for c in layer["grid"]] == list(range(16))
        top = ResultStore(wrapped_run).load("top-patches")
        assert top.layers == model["explorable"]
        np.testing.assert_allclose([c["best"] for c in layer["grid"]], top.values["block2.conv2"][:, 0], rtol=1e-6)
        unit = client.get("/api/layers/block2.shortcut.0/units/3").json()
        assert [e["index"] for e in unit["top"]] == [e["image"] for e in top.top("block2.shortcut.0", 3)]
        assert client.get("/layers/block2.shortcut.0/units/3").status_code == 200
        assert client.get("/api/layers/block2.conv3").json()["error"]["suggestions"][0] in ("block2.conv1",
                                                                                           "block2.conv2")
    finally:
        settle(app)
