"""`convlens demo --imagenet`'s steps with tiny budgets on the real ImageNet network, each checked against an
oracle that is not the step's own record: a plain forward of the saved image (class models, adversarial and
fooling images), occluded images scored one by one, a brute-force maximum over the crops (top-9), the
activations recomputed (inversion), the weights (filters), where the cameraman stands (GrabCut)."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

import convlens
from convlens import datasets
from convlens.cli import imagenet_demo as D
from convlens.cli.app import main
from convlens.data.resize import photo_batch
from convlens.results import CURRENT, ResultStore
from convlens.results.registry import ANALYSES
from convlens.training.pretrained import imagenet_classes, pretrained

PHOTOS = {"camera": "tripod", "rocket": "missile"}  # two of the demo's photos: the centre crop and full-height crops


# every step of the demo with a tiny budget (the demo's own: imagenet_demo.DEMO)
TINY = {
    "filters": dict(),
    "top-9 patches": dict(layers=["_blocks.2"]),
    "saliency": dict(photos=["camera"]),
    "attribution": dict(photos=["camera"], samples=2, steps=2),
    "occlusion": dict(photos=["rocket"], window=96, stride=64),
    "sanity checks": dict(photos=["camera"], methods=["saliency", "gradcam"], max_steps=2, samples=2, steps=2),
    "class models": dict(classes=["lemon"], steps=15),
    "inversion": dict(photo="camera", layers=["_relu0"], steps=40),
    "adversarial": dict(photos=["camera"], steps=10),
    "fooling images": dict(classes=["starfish"], steps=60),
    "optimal stimuli": dict(n_inits=2, steps=3, k=2, refine=0),
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """The demo's run directory for two photos (5 crops), after every step ran on it with its TINY budget."""
    import importlib

    made = D.make_run(tmp_path_factory.mktemp("imagenet") / "run", photos=PHOTOS, scales=(1.0,))
    for name, _, target in D.STEPS:
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(made, **TINY[name])
    return made


def plain_forward(run, images) -> torch.Tensor:
    """Softmax of the run's network on [0, 1] images, (N, 1000): the oracle most tests compare with."""
    with torch.no_grad():
        return run.pixel_model()(torch.as_tensor(images, dtype=torch.float32)).softmax(1)


def index(name: str) -> int:
    return imagenet_classes().index(name)


def test_the_run_is_the_pretrained_network_on_crops_of_the_photos(run):
    assert run.manifest["arch"]["source"]["kind"] == "pretrained"
    assert run.class_names == list(imagenet_classes())
    x, labels, rows = D.photo_rows(run, ["camera", "rocket"])
    # the centre crop is ImageNet's evaluation crop of the photo (stored as 8-bit PNG)
    want = photo_batch([np.asarray(skimage.data.camera()), np.asarray(skimage.data.rocket())])
    assert (x - want).abs().max() <= 0.5 / 255 + 1e-6
    assert labels == [index("tripod"), index("missile")]
    # the wrapped run computes what convlens.pretrained() computes
    with torch.no_grad():
        assert torch.allclose(run.pixel_model()(x), pretrained(D.NAME).pixel_model()(x), atol=1e-4)
    assert plain_forward(run, x).argmax(1).tolist() == labels  # both photos are classified correctly
    assert convlens.evaluate(run).n == 5  # 2 crops of the (square) camera photo, 3 of the rocket


def test_class_model_of_lemon_is_a_lemon(run):
    result = ResultStore(run.dir).load("class-model")
    assert result.images.shape == (1, 3, 224, 224)
    assert 0 <= result.images.min() and result.images.max() <= 1
    assert plain_forward(run, result.images).argmax(1).tolist() == [index("lemon")]


def test_adversarial_camera_is_an_ostrich(run):
    result = ResultStore(run.dir).load("adversarial")
    assert plain_forward(run, result.original).argmax(1).tolist() == [index("tripod")]
    assert plain_forward(run, result.adversarial).argmax(1).tolist() == [index("ostrich")]
    assert np.abs(result.adversarial - result.original).max() < 0.06  # at most 15/255 on any pixel
    assert 0 <= result.adversarial.min() and result.adversarial.max() <= 1


def test_fooling_image_is_a_starfish_at_99_6_percent(run):
    result = ResultStore(run.dir).load("fooling-gradient")
    assert plain_forward(run, result.images)[0, index("starfish")] >= 0.996


def test_grabcut_mask_of_the_cameraman_covers_him_not_the_sky_or_grass(run):
    result = ResultStore(run.dir).load("saliency")
    mask = result.masks[0]                                         # (224, 224) bool, on the centre crop
    assert mask[110:200, 10:50].mean() > 0.8                       # his coat (left of the tripod)
    assert mask[0:50, 170:224].mean() < 0.05                       # the sky, top right
    assert mask[170:224, 190:224].mean() < 0.05                    # the grass, bottom right
    assert result.predicted.tolist() == [index("tripod")]


def test_occlusion_map_is_the_occluded_images_scored_one_by_one(run):
    (m,) = ResultStore(run.dir).load("occlusion")
    x, _, _ = D.photo_rows(run, ["rocket"])
    assert m.target == index("missile") and m.p_target.shape == (3, 3)
    occluded = []
    for r in m.rows:
        for c in m.cols:
            img = x[0].clone()
            img[:, r:r + 96, c:c + 96] = 0.5
            occluded.append(img)
    p = plain_forward(run, torch.stack(occluded))                  # (9, 1000)
    np.testing.assert_allclose(m.p_target.ravel(), p[:, m.target].numpy(), atol=1e-4)
    assert m.top_class.ravel().tolist() == p.argmax(1).tolist()
    assert m.p_target.min() < 0.5 * m.p_clean                      # covering the rocket costs half its P(missile)


def test_inversion_feature_error_is_recomputed_from_the_activations(run):
    original, per_layer = ResultStore(run.dir).load("inversion")
    rec = per_layer["_relu0"]
    with convlens.capture(run, ["_relu0"]) as acts:
        acts.forward(torch.cat([torch.as_tensor(original), rec.images]))
    a = acts["_relu0"].flatten(1)                                  # (2, 32 * 112 * 112)
    error = float((a[1] - a[0]).norm() / a[0].norm())
    assert error == pytest.approx(rec.info["feature_error"][0], rel=1e-3, abs=1e-5)
    assert error < 0.3                                             # the inversion goal, met in 40 steps


def test_top_patches_are_the_strongest_over_the_crops(run):
    top = ResultStore(run.dir).load("top-patches")
    data = datasets.load(str(D.photos_folder(run.dir)), split="all", size=(224, 224))
    with convlens.capture(run, ["_blocks.2"]) as acts:
        acts.forward(data.images)
    best = acts["_blocks.2"].amax(dim=(2, 3))                      # (5, 24) each crop's maximum per unit
    np.testing.assert_allclose(top.values["_blocks.2"][:, 0], best.max(0).values.numpy(), rtol=1e-5)
    assert top.indices["_blocks.2"][:, 0].tolist() == best.argmax(0).tolist()


def test_filters_are_the_first_layer_weights(run):
    result = ResultStore(run.dir).load("filters")
    np.testing.assert_array_equal(result.weights, run.model._conv_stem.weight.detach().numpy())
    assert result.weights.shape == (32, 3, 3, 3)


def test_demo_resumes_and_reports_every_step(run, capsys):
    """Every step's result is current: the command computes nothing again, only evaluates and writes the
    report, which shows a section per result (the evaluation as tables)."""
    assert {name for name, _, _ in D.STEPS} == set(TINY)
    assert {r for _, results, _ in D.STEPS for r in results} <= set(ANALYSES)
    store = ResultStore(run.dir)
    assert all(store.entry(r).state == CURRENT for _, results, _ in D.STEPS for r in results)
    with pytest.raises(SystemExit) as info:
        main(["demo", "--imagenet", "--out", str(run.dir)])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert out.count("done before") == len(D.STEPS) and "top-1 error" in out
    html = (run.dir / "report" / "report.html").read_text(encoding="utf-8")
    for section in ("evaluation", "filters", "patches", "saliency", "occlusion", "class_model", "inversion",
                    "adversarial", "fooling", "attribution", "sanity"):
        assert f'<section id="{section}"' in html
    assert "1000" in html and "lemon" in html and "ostrich" in html


def test_optimal_stimuli_activations_are_the_units_mean_under_a_plain_forward(run):
    store = ResultStore(run.dir)
    stimuli, invariances = store.load("optimal-stimuli"), store.load("hessian-invariances")
    assert (stimuli.info["layer"], stimuli.info["unit"]) == ("_blocks.10", 5)
    with convlens.capture(run, ["_blocks.10"]) as acts:
        acts.forward(stimuli.images)
    mean = acts["_blocks.10"][:, 5].mean(dim=(1, 2))               # the unit: its channel's mean over positions
    np.testing.assert_allclose(stimuli.activation, mean.double().numpy(), rtol=1e-4)
    assert (stimuli.activation > stimuli.start_activation).all()
    assert len(invariances.eigenvalues) >= 2 and invariances.info["smooth"]["beta"] == 10
