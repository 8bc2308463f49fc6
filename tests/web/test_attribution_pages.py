"""The explorer's newer attribution maps (image page: Grad-CAM, Grad-CAM++, guided Grad-CAM inline; SmoothGrad and
Integrated Gradients as a job; the sanity checks' verdicts and ``/sanity``) and a unit's optimal stimuli and
Hessian invariances (unit page, a job), on a private copy of the demo run, against the library calls they wrap.

Oracles: ``convlens.grad_cam`` / ``guided_grad_cam`` / ``smoothgrad`` / ``integrated_gradients`` called
independently on the same image and target, the row of ``convlens.plots.attribution`` the PNG must show,
``SanityResult.verdicts()`` of a result saved in the store, the files ``convlens saliency`` and ``convlens
invariances`` themselves write for the same image or unit (the explorer must have written exactly those), and
the saved ``OptimalStimuli`` / ``HessianInvariances`` read back by their own ``load``.
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

import convlens
from convlens.results import ResultStore
from tests.web.explorer import app, client, run, wait_job  # noqa: F401  (module fixtures)

ROW = 3
LAYER, UNIT = "conv1", 0  # the cheapest unit to optimize (about half a minute on 2 cores)


@pytest.fixture(scope="module")
def image(app):
    return app.state.explorer.data.images[ROW][None]  # (1, C, H, W)


def cli(*args: str) -> str:
    from convlens.cli.app import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(list(args))
        except SystemExit as exit_:
            assert not exit_.code, out.getvalue()
    return out.getvalue()


def targets(run, image) -> list[int]:
    """The top-1 class and the second one."""
    net = run.pixel_model().eval()
    with torch.no_grad():
        order = torch.argsort(net(image)[0], descending=True)
    return [int(order[0]), int(order[1])]


def png_pixels(client, url: str) -> np.ndarray:
    r = client.get("/" + url)
    assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text[:200]
    return np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))


# ---- Grad-CAM, Grad-CAM++, guided Grad-CAM: inline ----------------------------------------------------------

@pytest.mark.parametrize("which", [0, 1], ids=["top1", "second"])
def test_the_grad_cam_shown_is_the_librarys(client, run, image, which):
    from convlens.plots.attribution import heat_image
    from convlens.web.png import to_uint8

    k = targets(run, image)[which]
    twin = client.get(f"/api/images/t{ROW}?target={k}").json()["attribution"]
    want = convlens.grad_cam(run, image, k)  # an independent call: the same image and class
    assert twin["error"] is None and twin["target"] == k and twin["layer"] == want.layer
    assert twin["cam_shape"] == list(want.cam.shape[1:])
    arrays = client.get(f"/api/images/t{ROW}/attribution?target={k}").json()
    assert arrays["target"] == k and arrays["layer"] == want.layer
    np.testing.assert_allclose(arrays["cam"], want.cam[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["gradcam"], want.upsampled[0].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["gradcam++"], convlens.grad_cam(run, image, k, plus=True).upsampled[0].numpy(),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["guided-gradcam"], convlens.guided_grad_cam(run, image, k)[0].numpy(),
                               rtol=1e-5, atol=1e-6)
    peak = np.unravel_index(int(want.upsampled[0].argmax()), want.upsampled.shape[1:])
    assert twin["peak"] == [int(peak[0]), int(peak[1])]
    maps = {m["method"]: m for m in twin["maps"]}
    assert list(maps) == ["gradcam", "gradcam++", "guided-gradcam", "smoothgrad", "ig"]
    assert all(maps[m]["png"] and maps[m]["caption"] for m in ("gradcam", "gradcam++", "guided-gradcam"))
    # the PNG is the figure's row: the image with the map in jet over it, upscaled by whole pixels
    shown = png_pixels(client, maps["gradcam"]["png"])
    drawn = to_uint8(heat_image(image[0], want.upsampled[0]))
    f = shown.shape[0] // drawn.shape[0]
    assert f >= 1 and np.abs(shown[::f, ::f].astype(int) - drawn.astype(int)).max() <= 1
    for m in ("gradcam++", "guided-gradcam"):
        assert png_pixels(client, maps[m]["png"]).shape == shown.shape
    html = client.get(f"/images/t{ROW}?target={k}").text
    assert 'id="attribution"' in html and maps["gradcam"]["png"] in html and "Grad-CAM++" in html


# ---- SmoothGrad and Integrated Gradients: one job, shared with `convlens saliency` ---------------------------

def test_the_smoothgrad_and_ig_job_runs_once_and_saves_the_clis_result(client, app, run, image, demo_copy):
    k = targets(run, image)[1]
    before = client.get(f"/api/images/t{ROW}?target={k}").json()["attribution"]
    od = before["on_demand"]
    assert od["state"] == "none" and od["options"] == {"index": [ROW], "target": str(k)}
    assert {m["method"]: m["png"] for m in before["maps"]}["ig"] is None and before["ig"] is None
    html = client.get(f"/images/t{ROW}?target={k}").text
    assert f'action="../images/t{ROW}/attribution?target={k}"' in html and "<button" in html
    missing = client.get(f"/png/images/t{ROW}/attribution/ig?target={k}")
    assert missing.status_code == 404 and "start it" in missing.text
    first = client.post(f"/api/images/t{ROW}/attribution?target={k}")
    second = client.post(f"/api/images/t{ROW}/attribution?target={k}")  # a double click: the same job
    assert first.status_code == second.status_code == 202
    assert first.json()["job"]["id"] == second.json()["job"]["id"]
    wait_job(client, first.json()["job"], timeout=300)
    assert len([j for j in app.state.explorer.jobs.all() if j.key.startswith("attribution ")]) == 1
    again = client.post(f"/api/images/t{ROW}/attribution?target={k}")
    assert again.status_code == 200 and again.json()["state"] == "done"
    back = client.post(f"/images/t{ROW}/attribution?target={k}", headers={"accept": "text/html"},
                       follow_redirects=False)
    assert back.status_code == 303 and back.headers["location"] == f"../t{ROW}?target={k}#attribution"
    assert len([j for j in app.state.explorer.jobs.all() if j.key.startswith("attribution ")]) == 1

    twin = client.get(f"/api/images/t{ROW}?target={k}").json()["attribution"]
    assert twin["on_demand"]["state"] == "done"
    ig = convlens.integrated_gradients(run, image, k)  # independent calls, the CLI's defaults
    np.testing.assert_allclose(twin["ig"]["completeness_error"], float(ig.completeness_error[0]), rtol=1e-3,
                               atol=1e-6)
    np.testing.assert_allclose(twin["ig"]["score"], float(ig.scores[0]), rtol=1e-5)
    arrays = client.get(f"/api/images/t{ROW}/attribution?target={k}").json()
    np.testing.assert_allclose(arrays["ig"], ig.attributions[0].numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(arrays["smoothgrad"], convlens.smoothgrad(run, image, k)[0].numpy(), rtol=1e-4,
                               atol=1e-6)
    for m in twin["maps"]:
        assert png_pixels(client, m["png"]).shape[0] >= image.shape[-1]
    html = client.get(f"/images/t{ROW}?target={k}").text
    assert "Completeness error" in html and f"{100 * twin['ig']['completeness_error']:.2f}%" in html

    # `convlens saliency` asked for the same image and target writes exactly the file the explorer saved
    results = Path(demo_copy) / "results"
    saved = results / twin["on_demand"]["result"]
    assert saved.is_file() and saved.with_suffix(".npz").is_file()
    files = sorted(p.name for p in results.glob("attribution*.json"))
    out = cli("saliency", str(demo_copy), "--index", str(ROW), "--target", str(k), "--method", "ig")
    assert re.search(rf"saved: .*{re.escape(saved.name)}", out), out
    assert sorted(p.name for p in results.glob("attribution*.json")) == files
    reread = client.get(f"/api/images/t{ROW}?target={k}").json()["attribution"]
    np.testing.assert_allclose(reread["ig"]["completeness_error"], twin["ig"]["completeness_error"], rtol=1e-4)


def test_unknown_methods_and_bad_targets_are_typed_errors(client, run, image):
    wrong = client.get(f"/png/images/t{ROW}/attribution/gradcm")
    assert wrong.status_code == 404 and "gradcam" in wrong.text
    bad = client.get(f"/api/images/t{ROW}/attribution?target=99").json()["error"]
    assert bad["status"] == 400 and bad["type"] == "bad_request" and "class index" in bad["message"]
    assert client.post(f"/api/images/t{ROW}/attribution?target=99").json()["error"]["status"] == 400
    assert client.get("/api/images/t99999/attribution").json()["error"]["status"] == 404
    missing = client.get("/api/sanity?result=sanity@nothing").json()["error"]
    assert missing["status"] == 404 and missing["type"] == "not_found"
    assert client.get("/png/sanity/curvez").status_code == 404
    assert client.get(f"/png/layers/{LAYER}/units/{UNIT}/invariances/eigen").status_code == 404
    assert client.post(f"/api/layers/{LAYER}/units/999/invariances").json()["error"]["status"] == 404


# ---- the sanity checks' verdicts -------------------------------------------------------------------------

def test_the_sanity_verdicts_are_linked_once_a_result_exists(client, run, image, demo_copy):
    k = targets(run, image)[0]
    assert client.get(f"/api/images/t{ROW}").json()["attribution"]["sanity"] is None
    assert 'href="../sanity"' not in client.get(f"/images/t{ROW}").text
    assert client.get("/api/sanity").json()["shown"] is None and client.get("/sanity").status_code == 200
    methods = ["gradcam", "guided-gradcam", "smoothgrad", "ig"]
    result = convlens.sanity_check(run, image, k, methods=methods, max_steps=2, samples=2, steps=2)
    path = ResultStore(demo_copy).save("sanity", result, options={"index": [ROW], "method": methods, "max_steps": 2,
                                                                    "samples": 2, "steps": 2})
    twin = client.get(f"/api/images/t{ROW}").json()["attribution"]
    assert twin["sanity"]["result"] == path.stem and twin["sanity"]["url"] == "sanity"
    want = result.verdicts()
    for m in twin["maps"]:
        if m["method"] in want:
            assert m["sanity"]["passes"] == want[m["method"]]["passes"]
            assert m["sanity"]["model"] == want[m["method"]]["model"]
        else:
            assert m["sanity"] is None  # gradcam++ was not checked
    html = client.get(f"/images/t{ROW}").text
    assert 'href="../sanity"' in html and 'href="../sanity#gradcam"' in html
    page = client.get("/api/sanity").json()
    assert page["shown"] == path.stem and [v["method"] for v in page["verdicts"]] == methods
    for v in page["verdicts"]:
        np.testing.assert_allclose(v["rank_abs"], want[v["method"]]["rank_abs"], rtol=1e-6)
        assert v["passes"] == want[v["method"]]["passes"]
    sanity_html = client.get("/sanity").text
    assert all(f'id="{m}"' in sanity_html for m in methods)
    for url in page["figures"].values():
        assert client.get("/" + url).headers["content-type"] == "image/png"


# ---- a unit's optimal stimuli and invariances: one job, shared with `convlens invariances` ------------------

def test_the_invariances_job_runs_once_and_saves_the_clis_results(client, app, demo_copy):
    from convlens.synthesis.invariances import HessianInvariances
    from convlens.synthesis.optimal_stimuli import OptimalStimuli

    before = client.get(f"/api/layers/{LAYER}/units/{UNIT}").json()["invariances"]
    assert before["state"] == "none" and before["cost"] == {"n_inits": 4, "steps": 100, "k": 4, "beta": 10.0}
    assert before["command"].endswith(f"--layer {LAYER} --unit {UNIT} --inits 4 --steps 100 --k 4")
    html = client.get(f"/layers/{LAYER}/units/{UNIT}").text
    assert f'action="../../../{before["start"]}"' in html and before["command"] in html
    first = client.post("/" + before["start"])
    second = client.post("/" + before["start"])  # asked twice: one job
    assert first.status_code == second.status_code == 202
    assert first.json()["job"]["id"] == second.json()["job"]["id"]
    wait_job(client, first.json()["job"], timeout=300)
    assert len([j for j in app.state.explorer.jobs.all() if j.key.startswith("hessian-invariances ")]) == 1
    assert client.post("/" + before["start"]).json() == {"job": None}  # saved: nothing to start

    iv = client.get(f"/api/layers/{LAYER}/units/{UNIT}").json()["invariances"]
    assert iv["state"] == "done"
    assert iv["options"] == {"layer": LAYER, "unit": UNIT, "n_inits": 4, "steps": 100, "k": 4}
    results = Path(demo_copy) / "results"
    stimuli = OptimalStimuli.load(results / iv["results"][0])
    inv = HessianInvariances.load(results / iv["results"][1])
    n = iv["numbers"]
    assert n["n_inits"] == len(stimuli) == 4 and n["steps"] == 100 and n["k"] == 4 == inv.info["k"]
    assert [s["seed"] for s in n["starts"]] == [stimuli.info["seeds"][j] for j in stimuli.order]
    np.testing.assert_allclose([s["activation"] for s in n["starts"]], stimuli.activation[stimuli.order])
    assert [s["cluster"] for s in n["starts"]] == stimuli.clusters[stimuli.order].tolist()
    assert n["clusters"] == stimuli.n_clusters
    np.testing.assert_allclose([d["eigenvalue"] for d in n["directions"]], inv.eigenvalues)
    assert [d["kind"] for d in n["directions"]] == inv.kinds
    assert n["smooth"]["beta"] == inv.info["smooth"]["beta"] == 10.0
    np.testing.assert_allclose([n["smooth"]["activation"], n["activation"]],
                               [inv.info["smooth"]["activation"], inv.info["activation"]])
    for url in iv["figures"].values():
        assert client.get("/" + url).headers["content-type"] == "image/png"
    html = client.get(f"/layers/{LAYER}/units/{UNIT}").text
    assert iv["figures"]["invariances"].replace("&", "&amp;") in html and "Hessian-vector products" in html

    # the command the page names writes exactly the files the job saved, and the page reads its rewrite
    listed = lambda: sorted(p.name for p in [*results.glob("optimal-stimuli*.json"),  # noqa: E731
                                             *results.glob("hessian-invariances*.json")])
    files = listed()
    out = cli("invariances", str(demo_copy), "--layer", LAYER, "--unit", str(UNIT), "--inits", "4", "--steps", "100",
              "--k", "4", "--quiet")
    for name in iv["results"]:
        assert re.search(rf"{re.escape(name)}", out), out
    assert listed() == files
    again = client.get(f"/api/layers/{LAYER}/units/{UNIT}").json()["invariances"]
    assert again["figures"] != iv["figures"]  # new files, new versions
    np.testing.assert_allclose([s["activation"] for s in again["numbers"]["starts"]],
                               [s["activation"] for s in n["starts"]], rtol=1e-5)
