"""convlens.invert (Mahendran & Vedaldi 2015): the feature error recomputed by hand with plain forward
hooks, small at an early layer and rising with depth (the paper's observation) on a trained run and on
the demo model, several initializations batched, awkward models, the model left as found, save/load,
the CLI and the report section."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens import InputError, LayerNotFoundError, ShapeError, datasets
from convlens.cli.app import main
from convlens.training.evaluate import run_test_data
from convlens.synthesis import objectives as O
from convlens.synthesis.inversion import load_inversions, save_inversions
from convlens.synthesis.optimize import _Forward
from conftest import assert_as_found, model_state


def _code(model: nn.Module, x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """Oracle: the module's output for x by a plain forward hook (no convlens code involved)."""
    got = []
    h = module.register_forward_hook(lambda m, a, out: got.append(out.detach().clone()))
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        h.remove()
    return got[-1]


def _rel_error(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    a, b = a.reshape(len(a), -1).double(), b.reshape(len(b), -1).double()
    return ((a - b).norm(dim=1) / b.norm(dim=1)).numpy()


def test_trained_run_early_layer_reconstructs_well_and_error_rises_with_depth(small_run):
    data = run_test_data(small_run)
    x = data.images[:3]                                                          # (3, 1, 16, 16) digits
    pm = small_run.pixel_model()
    before = model_state(pm)
    res = convlens.invert(small_run, x, ["conv1", "conv3"], steps=100)
    assert_as_found(pm, before)
    assert list(res) == ["conv1", "conv3"] and res["conv1"].info["tapped"] == "relu1"
    for name, r in res.items():
        module = dict(pm.named_modules())[pm.lecture_names[r.info["tapped"]]]
        oracle = _rel_error(_code(pm, r.images, module), _code(pm, x, module))
        np.testing.assert_allclose(r.info["feature_error"], oracle, rtol=1e-4, atol=1e-6)
        assert r.images.shape == x.shape and 0 <= r.images.min() and r.images.max() <= 1
    e1, e3 = np.array(res["conv1"].info["feature_error"]), np.array(res["conv3"].info["feature_error"])
    assert (e1 <= 0.1).all()
    assert e1.mean() < e3.mean()


def test_demo_model_first_conv_within_ten_percent_and_error_rises_with_depth(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    x = datasets.load("shapes", split="test", size=64, n=1, seed=0).images[0]    # (3, 64, 64)
    res = convlens.invert(run, x, ["conv1", "conv3", "conv4"], steps=150)
    e = {k: r.info["feature_error"][0] for k, r in res.items()}
    assert e["conv1"] <= 0.1
    assert e["conv1"] < e["conv3"] < e["conv4"]


def test_several_inits_are_one_batch_that_differ_and_match_the_same_code(tiny_resnet):
    tiny_resnet.train()
    tiny_resnet.layer2.conv1.weight.requires_grad_(False)
    before = model_state(tiny_resnet)
    x = torch.rand(2, 3, 16, 16)
    r = convlens.invert(tiny_resnet, x, "layer1", n_inits=3, steps=60, box=(0.0, 1.0), seed=1)
    assert_as_found(tiny_resnet, before)
    assert r.images.shape == (6, 3, 16, 16) and r.info["image_index"] == [0, 0, 0, 1, 1, 1]
    assert len(r.info["feature_error"]) == 6
    code = _code(tiny_resnet, x, tiny_resnet.layer1)
    oracle = _rel_error(_code(tiny_resnet, r.images, tiny_resnet.layer1), code.repeat_interleave(3, 0))
    tiny_resnet.train()  # _code put it in eval
    np.testing.assert_allclose(r.info["feature_error"], oracle, rtol=1e-4, atol=1e-6)
    assert (oracle < 0.5).all()
    assert not torch.allclose(r.images[0], r.images[1], atol=1e-3)               # different random starts
    again = convlens.invert(tiny_resnet, x, "layer1", n_inits=3, steps=60, box=(0.0, 1.0), seed=1)
    torch.testing.assert_close(again.images, r.images)                          # seeded


def test_one_channel_non_square_model_and_a_bare_model_without_a_box(gray_net):
    x = torch.rand(1, 20, 28)
    r = convlens.invert(gray_net, x, "conv2", steps=40, box=(0.0, 1.0))
    assert r.images.shape == (1, 1, 20, 28) and 0 <= r.images.min() and r.images.max() <= 1
    free = convlens.invert(gray_net, x, "fc", steps=20)                         # no box: nothing clamps
    assert free.info["box"] is None and free.images.shape == (1, 1, 20, 28)


def test_errors_are_clear_and_the_model_is_left_as_found_when_a_forward_fails(tiny_resnet, bn_net):
    with pytest.raises(LayerNotFoundError, match="did you mean|Did you mean"):
        convlens.invert(tiny_resnet, torch.rand(3, 16, 16), "layr1")
    with pytest.raises(InputError, match="x must be"):
        convlens.invert(tiny_resnet, torch.rand(16, 16), "layer1")
    with pytest.raises(InputError, match="n_inits must be"):
        convlens.invert(tiny_resnet, torch.rand(3, 16, 16), "layer1", n_inits=0)
    with pytest.raises(InputError, match=r"3-channel images.*got \(5, 16, 16\)"):
        convlens.invert(tiny_resnet, torch.rand(5, 16, 16), "layer2")             # refused before the forward
    bn_net.train()
    before = model_state(bn_net)
    with pytest.raises(ShapeError, match=r"failed on input of shape \(1, 3, 1, 1\)"):
        convlens.invert(bn_net, torch.rand(3, 1, 1), "features.4")                # 1x1: the first max-pool fails
    assert_as_found(bn_net, before)


def test_per_image_weight_objective_gradient_matches_finite_differences():
    """The per-image weight ``objective * w`` (added to the core for λ/B^α and Szegedy's c per image)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double().eval()
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    w = torch.tensor([0.3, 2.0], dtype=torch.float64)
    objective = O.class_logprob(1) + O.alpha_norm(6.0, 0.5) * w + O.feature_match("0", torch.randn(2, 4, 6, 6,
                                                                                                   dtype=torch.float64))
    fwd = _Forward(model, objective)

    def f(x):
        with fwd:
            return objective(fwd(x, x))
    with fwd:
        plain = O.alpha_norm(6.0, 0.5)(fwd(x, x))
    weighted = O.alpha_norm(6.0, 0.5) * w
    with fwd:
        torch.testing.assert_close(weighted(fwd(x, x)), w * plain)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="factor must be"):
        O.alpha_norm() * torch.tensor([1, 2])                                   # int weights


def test_save_load_round_trip(tmp_path, gray_net):
    x = torch.rand(1, 1, 20, 28)
    res = convlens.invert(gray_net, x, ["conv1", "conv2"], steps=5, box=(0.0, 1.0))
    save_inversions(tmp_path / "inv", x, res)
    original, back = load_inversions(tmp_path / "inv.json")
    torch.testing.assert_close(original, x)
    assert list(back) == ["conv1", "conv2"]
    for k in res:
        torch.testing.assert_close(back[k].images, res[k].images)
        assert back[k].info["feature_error"] == pytest.approx(res[k].info["feature_error"])
        np.testing.assert_allclose(back[k].history, res[k].history)


def test_cli_saves_results_figures_and_the_report_section_reads_them(small_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["invert", str(run_dir), "--index", "3", "--layers", "conv1,conv3", "--steps", "15", "--quadrants",
          "conv3", "--n-inits", "2", "--quiet", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["layer"] for r in rows] == ["conv1", "conv3", "conv3"] and len(rows[2]["feature_error"]) == 2
    out = run_dir / "results"
    [layers] = out.glob("inversion@*.json")  # options given: kept beside the default results
    [quads] = out.glob("inversion-quadrants@*.json")
    for path in (layers, quads):
        assert all(path.with_suffix(ext).is_file() for ext in (".npz", ".png")), path.name
    original, back = load_inversions(layers)
    torch.testing.assert_close(original, run_test_data(small_run).images[3:4])
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.inversion import inversion

    sec = inversion(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert sec is not None and [b.name for b in sec.blocks if b.kind == "figure"] == ["layers",
                                                                                      "quadrants"]
    assert inversion(ReportContext(convlens.load_run(small_run.dir), tmp_path / "r2")) is None
    with pytest.raises(SystemExit) as ex:
        main(["invert", str(run_dir), "--index", "100000", "--quiet"])
    assert ex.value.code == 2
