"""Class model visualization (Simonyan et al. 2014) and hidden-unit maximization on the optimization core:
the hidden-unit objective checked by finite differences, scores/probabilities recomputed by plain forward
passes, the model left as found, saved results, the CLI and the report section."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens.errors import InputError, LayerNotFoundError
from convlens.synthesis.class_model import class_model, load_optimized, save_optimized, unit_objective
from convlens.synthesis.optimize import _Forward
from conftest import assert_as_found, model_state


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread


class Small(nn.Module):
    """conv -> in-place ReLU -> conv -> F.relu -> GAP -> fc (float64 for gradcheck)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.relu(self.conv2(self.relu(self.conv1(x))))
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("layer,units,position", [("conv2", [3, 0], None), ("conv1", [1, 2], "center"),
                                                  ("conv1", [0, 3], (2, 5)), ("fc", [2, 0], None)])
def test_unit_objective_gradient_matches_finite_differences(layer, units, position):
    model = Small().double().eval()
    objective = unit_objective(layer, torch.tensor(units), position)
    fwd = _Forward(model, objective)

    def f(x):
        with fwd:
            return objective(fwd(x, x))
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)
    with torch.no_grad():  # the value itself, against the layer's output read directly
        acts = {}
        getattr(model, layer).register_forward_hook(lambda m, a, o: acts.setdefault("a", o.clone()))
        model(x)
        a = acts["a"]
    expected = [a[i, u] if a.ndim == 2 else (a[i, u].mean() if position is None else
                a[i, u, a.shape[2] // 2, a.shape[3] // 2] if position == "center" else a[i, u, 2, 5])
                for i, u in enumerate(units)]
    torch.testing.assert_close(f(x.detach()), torch.stack(expected))


def _logits(model, x):
    with torch.no_grad():
        return model(x)


def test_class_models_of_every_class_rise_far_above_the_mean_image_and_are_top1(small_run):
    res = class_model(small_run, n_seeds=2, steps=100)
    info = res.info
    assert res.images.shape == (20, 1, 16, 16) and info["n_targets"] == 10 and info["seeds"][:11] == [0] * 10 + [1]
    assert res.images.min() >= 0 and res.images.max() <= 1
    pm = small_run.pixel_model().eval()
    mean_image = small_run.mean.reshape(1, -1, 1, 1).expand(1, 1, 16, 16)
    t = torch.tensor(info["targets"])
    before, after = _logits(pm, mean_image)[0], _logits(pm, res.images)       # the oracle: plain forward passes
    rows = torch.arange(len(t))
    np.testing.assert_allclose(info["score_before"], before[t].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info["score_after"], after[rows, t].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(info["prob_after"], after.softmax(1)[rows, t].numpy(), rtol=1e-5, atol=1e-6)
    assert (after.argmax(1) == t).all()                                        # top-1 is the target, every class
    rise = after[rows, t] - before[t]
    assert (rise > 1.0).all() and rise.median() > 4.0                          # the score rose far, every class
    assert (after.softmax(1)[rows, t] > before.softmax(0)[t]).all()
    assert np.median(info["prob_after"]) > 0.8 and np.median(info["prob_before"]) < 0.05
    assert not torch.equal(res.images[0], res.images[10])                      # seeds differ


def test_the_papers_objective_alone_raises_the_score(small_run):
    res = class_model(small_run, ["3", 7], logprob=0.0, steps=40, jitter=0, blur=0)
    assert res.info["labels"] == ["3", "7"] and res.info["targets"] == [3, 7]
    assert all(a > b + 1 for a, b in zip(res.info["score_after"], res.info["score_before"]))
    assert "logP" not in res.objective


@pytest.mark.parametrize("fixture", ["tiny_resnet", "gray_net"])
def test_any_model_is_left_as_found(fixture, request):
    model = request.getfixturevalue(fixture).train()
    next(model.parameters()).requires_grad_(False)
    list(model.children())[-1].eval()                                          # a mixed train/eval model
    before = model_state(model)
    res = class_model(model, 1, steps=8, clip_norm=10.0, clip_contribution=10.0, decay=0.01, mean=[0.5], std=[0.25])
    assert res.images.shape == (1, *model.input_shape)
    assert res.info["score_after"][0] > res.info["score_before"][0]
    assert res.display().shape == (1, *model.input_shape[1:], model.input_shape[0])
    assert_as_found(model, before)


def test_model_left_as_found_when_it_raises(tiny_resnet):
    tiny_resnet.train()
    before = model_state(tiny_resnet)
    with pytest.raises(InputError, match="unit must be in"):
        class_model(tiny_resnet, layer="layer1", unit=[99], steps=3)
    assert_as_found(tiny_resnet, before)


def test_hidden_units_are_maximized_in_a_batch(tiny_resnet, small_run):
    res = class_model(tiny_resnet, layer="layer2.bn2", unit=[0, 5, 9], steps=25, l2=0.0)  # before its F.relu
    assert res.info["kind"] == "unit" and res.info["labels"] == ["layer2.bn2:0", "layer2.bn2:5", "layer2.bn2:9"]
    assert all(a > b + 0.1 for a, b in zip(res.info["activation_after"], res.info["activation_before"]))
    res = class_model(small_run, layer="conv3", unit=2, position="center", steps=25)  # a lecture name
    assert res.info["activation_after"][0] > res.info["activation_before"][0]


def test_clear_errors(small_run, tiny_resnet):
    with pytest.raises(InputError, match="'seven' is not a class"):
        class_model(small_run, "seven", steps=2)
    with pytest.raises(InputError, match=r"target must be a class index in \[0, 9\]"):
        class_model(small_run, 10, steps=2)
    with pytest.raises(InputError, match="either target"):
        class_model(small_run, 1, layer="conv1", unit=0)
    with pytest.raises(InputError, match="unit and position go with layer"):
        class_model(small_run, 1, unit=0)
    with pytest.raises(LayerNotFoundError, match="conv9"):
        class_model(small_run, layer="conv9", unit=0, steps=2)
    with pytest.raises(InputError, match="n_seeds must be"):
        class_model(small_run, 1, n_seeds=0)
    with pytest.raises(InputError, match="input_shape must be given"):
        class_model(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.LazyLinear(2)), 0)
    with pytest.raises(InputError, match="position must be"):
        class_model(tiny_resnet, layer="stem", unit=0, position="middle")


def test_save_and_load_round_trip(small_run, tmp_path):
    res = class_model(small_run, [0, 1], steps=5)
    save_optimized(tmp_path / "cm", res, schema="convlens.class_model/1")
    back = load_optimized(tmp_path / "cm.json")
    assert torch.equal(back.images, res.images) and np.array_equal(back.history, res.history)
    assert back.info == res.info and back.steps == res.steps >= 5 and back.objective == res.objective
    assert back.missed == res.missed and back.goal["reached"] == [t == c for t, c in zip(res.info["top1"],
                                                                                         res.info["targets"])]


def test_demo_model_class_models_are_top1_for_every_class(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    res = convlens.class_model(run, steps=100)
    info = res.info
    assert info["top1"] == info["targets"] == list(range(10))
    assert min(np.subtract(info["score_after"], info["score_before"])) > 5
    assert min(info["prob_after"]) > 0.5 and max(info["prob_before"]) < 0.5


def test_cli_saves_results_and_the_report_section_reads_them(small_run, tmp_path, capsys):
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.class_model import class_model as section

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["class-model", str(run_dir), "--class", "3", "--class", "5", "--seeds", "2", "--steps", "10", "--quiet"])
    assert "top-1" in capsys.readouterr().out
    main(["class-model", str(run_dir), "--layer", "conv2", "--unit", "0,1", "--seeds", "1", "--steps", "5", "--quiet"])
    for name in ("class-model", "unit-model"):  # options given: kept beside the default results
        [saved] = (run_dir / "results").glob(f"{name}@*.json")
        assert all(saved.with_suffix(ext).is_file() for ext in (".npz", ".png"))
    sec = section(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert [b.kind for b in sec.blocks] == ["metrics", "figure", "table", "text", "figure"]
    assert [row[0] for row in sec.blocks[2].rows] == ["3", "5"]
    with pytest.raises(SystemExit) as exit_:
        main(["class-model", str(run_dir)])
    assert exit_.value.code == 2


@pytest.mark.parametrize("shape,sigma", [((2, 3, 9, 11), 0.5), ((1, 1, 4, 5), 1.0), ((1, 3, 30, 20), 0.8)])
def test_blur_equals_a_depthwise_gaussian_convolution(shape, sigma):
    """The core's blur (weighted sums of shifted views, for speed) against conv2d with the same kernel."""
    import math

    from convlens.synthesis.optimize import blur

    x = torch.rand(*shape, dtype=torch.float64)
    r = max(1, math.ceil(3 * sigma))
    k = torch.exp(-torch.arange(-r, r + 1, dtype=x.dtype) ** 2 / (2 * sigma ** 2))
    k, c = k / k.sum(), shape[1]
    y = F.pad(x, (r, r, r, r), mode="reflect" if min(shape[2:]) > r else "replicate")
    y = F.conv2d(F.conv2d(y, k.reshape(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c),
                 k.reshape(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    blur(sigma, every=1)(x, 0, None)
    torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
