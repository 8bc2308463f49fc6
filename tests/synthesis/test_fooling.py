"""Fooling images (Nguyen et al. 2015): every class reaches >= 99.6% confidence (recomputed by a plain forward
pass), evolution computes no gradient at all, the model is left as found, the CLI and the report section."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens.errors import InputError
from convlens.synthesis.fooling import cppn_render, fooling_image
from conftest import assert_as_found, model_state


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread


def _confidence(model, images, targets):
    with torch.no_grad():
        p = torch.softmax(model(images), 1)
    return p[torch.arange(len(p)), torch.as_tensor(targets)]


@pytest.mark.parametrize("method", ["gradient", "evolution"])
def test_every_class_reaches_the_papers_confidence(small_run, method):
    res = fooling_image(small_run, method=method)
    info = res.info
    assert res.images.shape == (10, 1, 16, 16) and info["targets"] == list(range(10))
    assert res.images.min() >= 0 and res.images.max() <= 1
    conf = _confidence(small_run.pixel_model().eval(), res.images, info["targets"])  # the oracle: a plain forward
    assert (conf >= 0.996).all(), conf
    np.testing.assert_allclose(info["confidence"], conf.numpy(), rtol=1e-5)
    assert all(info["reached"]) and info["top1"] == info["targets"]
    when = info["steps_to_reach"] if method == "gradient" else info["generation_reached"]
    assert all(w is not None for w in when) and max(when) == (info["steps"] if method == "gradient"
                                                              else info["generations"])
    assert res.history.shape[1] == 10 and info["evaluations"] > 0


def test_gradient_images_stay_close_to_the_noise_they_started_from(small_run):
    res = fooling_image(small_run, [3, 8], steps=200)
    start = torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert res.info["labels"] == ["3", "8"]
    # unrecognizable: still largely the uniform noise it started from (correlated with it, far from 0)
    corr = np.corrcoef(start.flatten().numpy(), res.images.flatten().numpy())[0, 1]
    assert corr > 0.3


class _NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("a gradient was computed")


class OutputsOnly(nn.Module):
    """Wraps a model: raises if a forward runs with gradients enabled or a backward reaches it."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.input_shape = net.input_shape
        self.calls = 0

    def forward(self, x):
        if torch.is_grad_enabled() or x.requires_grad:
            raise RuntimeError("forward with gradients enabled")
        self.calls += 1
        return self.net(_NoBackward.apply(x))


def test_evolution_uses_the_outputs_only_and_leaves_the_model_as_found(tiny_resnet):
    model = OutputsOnly(tiny_resnet).train()
    tiny_resnet.stem.weight.requires_grad_(False)
    before = model_state(model)
    res = fooling_image(model, [0, 4], method="evolution", generations=5, init_population=20, population=6)
    assert model.calls > 0 and res.info["generations"] <= 5
    assert res.info["evaluations"] >= 20 and (res.info["evaluations"] - 20) % 6 == 0  # 6 mutants per target
    assert_as_found(model, before)
    with pytest.raises(RuntimeError, match="forward with gradients"):  # the guard works: gradient ascent trips it
        fooling_image(model, 0, steps=2)
    assert_as_found(model, before)


@pytest.mark.parametrize("fixture", ["tiny_resnet", "gray_net"])
def test_gradient_method_on_any_model_leaves_it_as_found(fixture, request):
    model = request.getfixturevalue(fixture).train()
    before = model_state(model)
    res = fooling_image(model, 1, steps=60)  # random weights: the goal may be out of reach; P(1) must rise
    assert res.images.shape == (1, *model.input_shape) and res.history[-1, 0] > res.history[0, 0]
    assert_as_found(model, before)


def test_a_bare_model_with_normalization_gets_normalized_images(gray_net):
    mean, std = [0.4], [0.2]
    res = fooling_image(gray_net, 2, steps=300, mean=mean, std=std)
    assert res.mean == (0.4,) and res.std == (0.2,)
    shown = res.display()                                                      # un-normalized pixels in [0, 1]
    assert shown.min() >= 0 and shown.max() <= 1
    np.testing.assert_allclose(shown[..., 0], (res.images[:, 0] * 0.2 + 0.4).numpy(), atol=1e-6)
    # the model takes the returned images as they are: its P(2) on them is the confidence recorded
    assert _confidence(gray_net, res.images, [2])[0].item() == pytest.approx(res.info["confidence"][0], rel=1e-5)


class Capped(nn.Module):
    """Scores whose softmax never gives class 0 more than 1/2: 2 + min(4 x mean pixel, 1) against 2 and 3."""

    input_shape = (1, 8, 8)

    def forward(self, x):                                                      # (N, 1, 8, 8)
        s = (4 * x.mean((1, 2, 3))).clamp(max=1.0)                              # (N,) at most 1
        return torch.stack([2 + s, torch.full_like(s, 2.0), torch.full_like(s, 3.0)], 1)  # (N, 3)


def test_a_goal_out_of_reach_is_reported_with_the_reason():
    """P(0) = e^(2+s) / (e^(2+s) + e^2 + e^3) <= 1/2 for every image (the oracle): the evolution restarts its
    steps, stops at its budget and says the class stalled; a budget cut short says the search still gained."""
    res = fooling_image(Capped(), 0, method="evolution", generations=120, confidence=0.9)
    info = res.info
    assert not info["reached"][0] and info["generations"] == 120 and info["confidence"][0] <= 0.5
    assert info["restarts"][0] >= 2 and list(info["unreached"]) == ["0"]
    assert info["unreached"]["0"].startswith(f"P = {info['confidence'][0]:.4f} < 0.9: stalled")
    short = fooling_image(Capped(), 0, method="evolution", generations=3, confidence=0.9)
    assert "still gaining when the budget of 3 generations ran out" in short.info["unreached"]["0"]
    grad = fooling_image(Capped(), 0, steps=5, confidence=0.9)
    assert "the budget of 5 steps ran out" in grad.info["unreached"]["0"]


def test_direct_encoding_and_cppn_render():
    torch.manual_seed(0)
    layers = [(4, 6), (7, 6), (7, 3)]
    genomes = torch.randn(5, sum(a * b for a, b in layers))
    coords = torch.rand(11, 4)
    out = cppn_render(genomes, coords, layers)
    assert out.shape == (5, 11, 3) and 0 < out.min() and out.max() < 1
    # pixel j of image i depends only on that pixel's inputs: rendering one pixel alone gives the same colour
    torch.testing.assert_close(cppn_render(genomes, coords[4:5], layers)[:, 0], out[:, 4])


def test_direct_encoding_fools_the_digits_model_as_in_the_paper(small_run):
    res = fooling_image(small_run, [1, 7, 2], method="evolution", encoding="direct")
    assert res.info["encoding"] == "direct" and res.info["direct_size"] == [16, 16]
    assert all(res.info["reached"]) and res.info["generations"] < 500
    coarse = fooling_image(small_run, 1, method="evolution", encoding="direct", direct_size=(8, 5), generations=2)
    assert coarse.images.shape == (1, 1, 16, 16) and coarse.info["direct_size"] == [8, 5]


def test_clear_errors(small_run):
    with pytest.raises(InputError, match="method must be"):
        fooling_image(small_run, 0, method="annealing")
    with pytest.raises(InputError, match="confidence must be"):
        fooling_image(small_run, 0, confidence=1.0)
    with pytest.raises(InputError, match="encoding must be"):
        fooling_image(small_run, 0, method="evolution", encoding="bits")
    with pytest.raises(InputError, match="'nine' is not a class"):
        fooling_image(small_run, "nine")


def test_demo_model_every_class_reaches_the_papers_confidence(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    res = convlens.fooling_image(run)
    conf = _confidence(run.pixel_model().eval(), res.images, list(range(10)))
    assert (conf >= 0.996).all() and res.info["top1"] == list(range(10))


@pytest.mark.slow
def test_demo_model_is_fooled_by_evolution_for_every_class(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    res = convlens.fooling_image(run, method="evolution", population=16)  # as `convlens demo`: goal or budget
    conf = _confidence(run.pixel_model().eval(), res.images, list(range(10)))
    assert (conf >= 0.996).all() and res.info["unreached"] == {}, res.info["unreached"]


def test_cli_saves_results_and_the_report_section_reads_them(small_run, tmp_path, capsys):
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.fooling import fooling as section

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["fooling", str(run_dir), "--class", "2", "--class", "6", "--quiet"])
    assert "2/2 reached 99.6%" in capsys.readouterr().out
    main(["fooling", str(run_dir), "--all", "--method", "evolution", "--generations", "3", "--quiet"])
    for name in ("fooling-gradient", "fooling-evolution"):  # options given: kept beside the default results
        [saved] = (run_dir / "results").glob(f"{name}@*.json")
        assert all(saved.with_suffix(ext).is_file() for ext in (".npz", ".png"))
    sec = section(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert [b.kind for b in sec.blocks] == ["metrics", "figure", "table", "text"]
    assert len(sec.blocks[2].rows) == 12 and set(sec.blocks[0].items) == {"gradient", "evolution"}
    with pytest.raises(SystemExit) as exit_:
        main(["fooling", str(run_dir), "--method", "magic"])
    assert exit_.value.code == 2
