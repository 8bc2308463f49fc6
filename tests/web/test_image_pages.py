"""The image pages and the code space of the explorer on the demo run, against the library calls they wrap.

Oracles: the model itself (softmax top-5), ``convlens.saliency``/``deconvnet``/``guided_backprop``/``segment``,
``convlens.occlusion`` with ``convlens occlusion``'s defaults and the file the CLI itself writes for the
same image and target, brute-force distances over the data's pixels and over ``convlens.codes``,
``convlens.taps.activations`` for the channel grid, ``convlens.tsne`` with ``convlens tsne``'s defaults.
"""
from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from starlette.testclient import TestClient

import convlens
from convlens.units.segment import BackpropResult
from convlens.web import create_app
from tests.web.explorer import app, client, run, wait_job  # noqa: F401  (module fixtures)

ROW = 3


@pytest.fixture(scope="module")
def data(app):
    return app.state.explorer.data


def softmax_of(run, x) -> torch.Tensor:
    net = run.pixel_model().eval()
    with torch.no_grad():
        return torch.softmax(net(x[None]).double(), 1)[0]


def second_class(probs: torch.Tensor) -> int:
    return int(torch.argsort(probs, descending=True)[1])


# ---- predictions, target -------------------------------------------------------------------------------------

def test_the_image_page_shows_the_models_top5(client, run, data):
    page = client.get(f"/images/t{ROW}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    twin = client.get(f"/api/images/t{ROW}").json()
    top = torch.topk(softmax_of(run, data.images[ROW]), 5)
    assert [p["index"] for p in twin["predictions"]] == top.indices.tolist()
    np.testing.assert_allclose([p["prob"] for p in twin["predictions"]], top.values.numpy(), rtol=1e-5, atol=1e-7)
    assert twin["target"]["index"] == int(top.indices[0]) and twin["target"]["default"]
    assert twin["label"]["index"] == int(data.labels[ROW])
    for p in twin["predictions"]:  # each prediction makes itself the target
        assert f'images/t{ROW}?target={p["index"]}' in page.text


def test_target_query_changes_the_target_everywhere(client, run, data):
    probs = softmax_of(run, data.images[ROW])
    k = second_class(probs)
    twin = client.get(f"/api/images/t{ROW}?target={k}").json()
    assert twin["target"]["index"] == k and not twin["target"]["default"]
    assert [p["index"] for p in twin["predictions"] if p["target"]] == [k]
    assert all(f"target={k}" in url for url in twin["views"].values())
    by_name = client.get(f"/api/images/t{ROW}?target={run.class_names[k]}").json()
    assert by_name["target"]["index"] == k
    bad = client.get(f"/api/images/t{ROW}?target=99").json()
    assert bad["error"]["status"] == 400 and "class index" in bad["error"]["message"]


# ---- saliency, mask, deconvnet, guided backprop -------------------------------------------------------------

@pytest.mark.parametrize("which", ["top1", "second"])
def test_backprop_views_equal_the_library_calls(client, run, data, which):
    x = data.images[ROW][None]
    probs = softmax_of(run, data.images[ROW])
    target = int(probs.argmax()) if which == "top1" else second_class(probs)
    maps = client.get(f"/api/images/t{ROW}/maps?target={target}").json()
    assert maps["target"] == target
    np.testing.assert_allclose(maps["saliency"], convlens.saliency(run, x, target)[0].numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(maps["deconvnet"], convlens.deconvnet(run, x, target)[0].numpy(), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(maps["guided"], convlens.guided_backprop(run, x, target)[0].numpy(), rtol=1e-5,
                               atol=1e-7)
    assert np.array_equal(np.asarray(maps["mask"]), convlens.segment(run, x, target)[0].numpy())
    twin = client.get(f"/api/images/t{ROW}?target={target}").json()
    for url in twin["views"].values():
        r = client.get("/" + url)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(r.content)).size[0] >= data.images.shape[-1]


def test_the_saliency_of_another_target_differs(client, run, data):
    probs = softmax_of(run, data.images[ROW])
    a = np.asarray(client.get(f"/api/images/t{ROW}/maps").json()["saliency"])
    b = np.asarray(client.get(f"/api/images/t{ROW}/maps?target={second_class(probs)}").json()["saliency"])
    assert a.shape == b.shape and not np.allclose(a, b)


# ---- the channel grid --------------------------------------------------------------------------------------

def test_the_channel_grid_draws_every_channel_of_the_layer(client, run, data):
    from convlens.taps import activations

    layer = "conv2"
    twin = client.get(f"/api/images/t{ROW}?layer={layer}").json()["activations"]
    a = activations(run, data.images[ROW][None], [layer])[layer][0].numpy()  # (C, H, W)
    assert twin["layer"] == layer and twin["channels"] == len(a) and twin["map"] == list(a.shape[1:])
    assert [t["unit"] for t in twin["tiles"]] == list(range(len(a)))
    np.testing.assert_allclose([t["mean"] for t in twin["tiles"]], a.reshape(len(a), -1).mean(1), rtol=1e-5,
                               atol=1e-6)
    grid = np.asarray(Image.open(io.BytesIO(client.get("/" + twin["grid"]).content)).convert("L"))
    assert grid.shape == (twin["layout"]["height"], twin["layout"]["width"])
    lo, hi = a.min(), a.max()
    up = twin["layout"]["up"]
    for t in twin["tiles"][:: max(1, len(a) // 7)]:  # a tile's pixels are its channel, scaled by the layer's range
        x0, y0, x1, y1 = t["box"]
        tile = grid[y0:y1, x0:x1][::up, ::up].astype(float)
        want = (a[t["unit"]] - lo) / (hi - lo) * 255
        assert np.abs(tile - want).max() <= 1.0
    page = client.get(f"/images/t{ROW}?layer={layer}").text
    assert page.count(f'href="../layers/{layer}/units/') >= len(a)  # every tile (an image-map area) opens its unit
    assert client.get(f"/images/t{ROW}?layer=conv9").status_code == 404


# ---- occlusion: a job, shared with the CLI ---------------------------------------------------------------

def test_the_occlusion_job_saves_the_clis_result(client, run, data, demo_copy):
    from convlens.cli.app import main
    from convlens.units.occlusion import default_layer

    probs = softmax_of(run, data.images[ROW])
    target = second_class(probs)
    before = client.get(f"/api/images/t{ROW}?target={target}").json()["occlusion"]
    assert before["state"] == "none" and "start" in before
    started = client.post(f"/api/images/t{ROW}/occlusion?target={target}")
    assert started.status_code == 202
    wait_job(client, started.json()["job"])
    shown = client.get(f"/api/images/t{ROW}?target={target}").json()["occlusion"]
    assert shown["state"] == "done"
    want = convlens.occlusion(run, data.images[ROW], target, 16, 4, 0.5, default_layer(run.pixel_model()))
    np.testing.assert_allclose(shown["p_target"], want.p_target, rtol=1e-4, atol=1e-6)
    assert np.array_equal(shown["top_class"], want.top_class)
    assert (shown["layer"], shown["unit"]) == (want.layer, want.unit)
    for url in shown["panels"].values():
        assert client.get("/" + url).headers["content-type"] == "image/png"
    html = client.get(f"/images/t{ROW}?target={target}").text
    assert shown["panels"]["p_target"].replace("&", "&amp;") in html
    # the CLI, asked for the same image and target, writes exactly the file the explorer saved
    results = Path(demo_copy) / "results"
    saved = results / shown["result"]
    assert saved.is_file() and saved.with_suffix(".npz").is_file()
    files = sorted(p.name for p in results.glob("occlusion*.json"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["occlusion", str(demo_copy), "--index", str(ROW), "--target", str(target)])
        except SystemExit as exit_:
            assert not exit_.code
    assert re.search(rf"saved: .*{re.escape(shown['result'])}", out.getvalue()), out.getvalue()
    assert sorted(p.name for p in results.glob("occlusion*.json")) == files
    again = client.get(f"/api/images/t{ROW}?target={target}").json()["occlusion"]  # the CLI's rewrite is read
    np.testing.assert_allclose(again["p_target"], want.p_target, rtol=1e-4, atol=1e-6)


def test_a_saliency_result_of_the_cli_is_read_not_recomputed(demo_copy, run, data):
    from convlens.cli.app import main

    row = 7
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(["saliency", str(demo_copy), "--index", str(row)])
        except SystemExit as exit_:
            assert not exit_.code
    path = re.search(r"saved: (\S+\.json)", out.getvalue()).group(1)
    cli = BackpropResult.load(path)
    fresh = TestClient(create_app(demo_copy))  # a new server: nothing in memory
    maps = fresh.get(f"/api/images/t{row}/maps").json()
    assert maps["from_cli"] and maps["target"] == int(cli.targets[0])
    np.testing.assert_array_equal(np.asarray(maps["saliency"], dtype=np.float32), cli.saliency[0])
    np.testing.assert_array_equal(np.asarray(maps["mask"]), cli.masks[0])


# ---- neighbours -------------------------------------------------------------------------------------------

def test_pixel_space_neighbours_are_the_nearest_images(client, data):
    near = client.get(f"/api/images/t{ROW}").json()["neighbors"]["pixels"]
    flat = data.images.reshape(len(data.images), -1).double()
    d = ((flat - flat[ROW]) ** 2).sum(1).sqrt()
    d[ROW] = float("inf")
    order = torch.argsort(d)[:len(near)]
    assert [n["row"] for n in near] == order.tolist()
    np.testing.assert_allclose([n["distance"] for n in near], d[order].numpy(), rtol=1e-4)


def test_code_space_neighbours_after_the_codes_job(client, run, data, demo_copy):
    first = client.get(f"/api/images/t{ROW}").json()["neighbors"]
    if first["code"] is None:
        wait_job(client, first["job"])
    near = client.get(f"/api/images/t{ROW}").json()["neighbors"]["code"]
    assert (Path(demo_copy) / "codes" / "classifier-input-auto" / "codes.json").is_file()  # the CLI's cache
    codes = np.asarray(convlens.codes(run, data, progress=False).vectors, dtype=np.float64)
    unit = codes / np.linalg.norm(codes, axis=1, keepdims=True)
    d = 1 - unit @ unit[ROW]
    d[ROW] = np.inf
    order = np.argsort(d, kind="stable")[:len(near)]
    assert [n["row"] for n in near] == order.tolist()
    np.testing.assert_allclose([n["distance"] for n in near], d[order], rtol=1e-4, atol=1e-6)


# ---- the lists and the keyboard ---------------------------------------------------------------------------

def test_previous_next_and_up_for_the_keyboard(client, data):
    html = client.get(f"/images/t{ROW}").text
    assert f'data-prev="../images/t{ROW - 1}"' in html and f'data-next="../images/t{ROW + 1}"' in html
    assert 'data-up="../images"' in html
    assert 'data-prev="' not in client.get("/images/t0").text
    last = len(data.labels) - 1
    assert 'data-next="' not in client.get(f"/images/t{last}").text
    hrefs = re.findall(r'(?:href|src|action)="([^"]*)"', html)
    assert hrefs and not [h for h in hrefs if h.startswith("/") or "://" in h]


def test_unknown_image_ids_are_404_with_suggestions(client, data):
    n = len(data.labels)
    body = client.get(f"/api/images/t{n}").json()["error"]
    assert body["status"] == 404 and f"t{n - 1}" in body["suggestions"]
    for bad in ("x", "t-1", "t03", "T3", "u123", "t3.png"):
        assert client.get(f"/images/{bad}").status_code == 404, bad


def test_the_images_list_pages_and_its_predictions(client, run, data):
    first = client.get("/api/images").json()
    if first["predictions"] is not None:
        wait_job(client, first["predictions"])
    page = client.get("/api/images?page=2").json()
    assert page["n"] == len(data.labels) and page["page"] == 2
    rows = [it["row"] for it in page["images"]]
    assert rows == list(range(page["per_page"], 2 * page["per_page"]))
    net = run.pixel_model().eval()
    with torch.no_grad():
        pred = net(data.images[rows]).argmax(1)
    assert [it["prediction"]["index"] for it in page["images"]] == pred.tolist()
    assert [it["label"]["index"] for it in page["images"]] == data.labels[rows].tolist()
    one = client.get("/api/images?class=2").json()
    assert one["matching"] == int((data.labels == 2).sum()) and all(it["label"]["index"] == 2 for it in one["images"])
    wrong = client.get("/api/images?show=wrong").json()
    assert all(not it["correct"] for it in wrong["images"])
    html = client.get("/images").text
    assert 'loading="lazy"' in html and re.search(r'action="(\./)?images/upload"', html)
    assert client.get("/api/images?page=999").json()["error"]["status"] == 400


# ---- the code space --------------------------------------------------------------------------------------

def test_the_code_space_map_is_the_clis_tsne(client, run, data, demo_copy):
    first = client.get("/api/codes").json()
    if first["state"] != "done":
        wait_job(client, first["job"], timeout=300)
    twin = client.get("/api/codes").json()
    assert twin["state"] == "done"
    saved = convlens.ResultStore(demo_copy).path("codes-tsne")  # where `convlens tsne RUN` saves its map
    arrays = np.load(saved.with_suffix(".npz"))
    assert twin["n"] == len(arrays["embedding"]) == len(data.labels)
    assert [p["id"] for p in twin["points"]] == [f"t{i}" for i in arrays["indices"]]
    assert [p["label"] for p in twin["points"]] == data.labels[arrays["indices"]].tolist()
    want = convlens.tsne(convlens.codes(run, data, progress=False), seed=0)
    np.testing.assert_allclose(arrays["embedding"], want.embedding, rtol=1e-4, atol=1e-4)
    html = client.get("/codes")
    assert html.status_code == 200 and len(re.findall(r'href="(?:\./)?images/t[0-9]+"', html.text)) == twin["n"]
    sprite = client.get("/" + twin["sprite"]["url"])
    assert sprite.headers["content-type"] == "image/jpeg"
    cols = twin["sprite"]["cols"]
    assert Image.open(io.BytesIO(sprite.content)).size == (cols * twin["sprite"]["w"],
                                                           -(-twin["n"] // cols) * twin["sprite"]["h"])


# ---- a 1-channel, non-square user model ------------------------------------------------------------------

GRAY_NET = '''
import torch
from torch import nn


class Gray(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, (3, 5), stride=2, padding=(1, 2))
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(x.mean((2, 3)))


def make():
    torch.manual_seed(0)
    return Gray()
'''


def wrapped_gray_run(tmp_path, per_class: int = 5):
    """``convlens wrap`` of GRAY_NET (1 channel, 20x28) with a folder of random gray images, 3 classes; the run."""
    from convlens.cli.app import main

    (tmp_path / "gray.py").write_text(GRAY_NET)
    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (20, 28), dtype=np.uint8), "L").save(tmp_path / "data" / c / f"{i}.png")
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["wrap", f"{tmp_path / 'gray.py'}:make", "--out", str(tmp_path / "run"), "--input", "20x28x1",
                  "--data", str(tmp_path / "data")])
        except SystemExit as exit_:
            assert not exit_.code
    return tmp_path / "run"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit: the TorchScript case
def test_a_gray_non_square_user_model(tmp_path):
    from convlens.cli.app import main

    rng = np.random.default_rng(1)
    gray_app = create_app(wrapped_gray_run(tmp_path))
    c = TestClient(gray_app)
    ex = gray_app.state.explorer
    twin = c.get("/api/images/t0").json()
    run = ex.run
    top = torch.topk(softmax_of(run, ex.data.images[0]), 3)
    assert [p["index"] for p in twin["predictions"]] == top.indices.tolist()
    maps = c.get("/api/images/t0/maps").json()
    np.testing.assert_allclose(maps["saliency"], convlens.saliency(run, ex.data.images[:1])[0].numpy(), rtol=1e-5,
                               atol=1e-7)
    assert np.asarray(maps["guided"]).shape == (1, 20, 28)
    assert c.get("/" + twin["activations"]["grid"]).status_code == 200
    # an RGB upload three times as tall: no scaling, the central 20 rows, in gray (ITU-R 601 luma)
    picture = rng.integers(0, 256, (60, 28, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, format="PNG")
    new = c.post("/api/images", files={"file": ("tall.png", buf.getvalue(), "image/png")}).json()["id"]
    stored = np.asarray(Image.open(tmp_path / "run" / "uploads" / f"{new}.png"))
    assert stored.shape == (20, 28)
    assert np.array_equal(stored, np.asarray(Image.fromarray(picture[20:40]).convert("L")))
    assert c.get(f"/images/{new}").status_code == 200
    for job in ex.jobs.all():
        job.wait(60)
    # the same model as TorchScript: saliency and its mask still, deconvnet and guided backprop said to be
    # impossible (no ReLU can be rerouted inside TorchScript), the page itself fine
    import importlib.util

    spec = importlib.util.spec_from_file_location("gray_user_model", tmp_path / "gray.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    scripted = torch.jit.script(module.make().eval())
    scripted.save(str(tmp_path / "gray.pt"))
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["wrap", str(tmp_path / "gray.pt"), "--out", str(tmp_path / "ts"), "--input", "20x28x1",
                  "--data", str(tmp_path / "data")])
        except SystemExit as exit_:
            assert not exit_.code
    ts_app = create_app(tmp_path / "ts")
    t = TestClient(ts_app)
    assert t.get("/images/t0").status_code == 200
    twin = t.get("/api/images/t0").json()
    assert twin["views"]["deconvnet"] is None and "TorchScript" in twin["views_note"]
    assert "TorchScript" in twin["activations_error"]
    ts_run = ts_app.state.explorer.run
    maps = t.get("/api/images/t0/maps").json()
    np.testing.assert_allclose(maps["saliency"], convlens.saliency(ts_run, ts_app.state.explorer.data.images[:1])[0],
                               rtol=1e-5, atol=1e-7)
    assert maps["guided"] is None and t.get("/png/images/t0/guided").status_code == 400
    for job in ts_app.state.explorer.jobs.all():
        job.wait(60)
