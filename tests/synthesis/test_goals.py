"""Results that say whether they reached their goal (class models, fooling images, inversions, adversarial
examples), and class-model defaults that scale with the model: every goal record is checked against plain
forward passes, a class model's scale against a gradient taken by hand, top-1 on a net whose scores are
100x smaller and on untrained nets against plain gradient ascent, and the CLI's warnings."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens.cli.app import main
from convlens.synthesis.adversarial import AdversarialResult, adversarial
from convlens.synthesis.class_model import (L2_RELATIVE, SCORE_SCALE, class_model, load_optimized,
                                            save_optimized)
from convlens.synthesis.fooling import fooling_image
from convlens.synthesis.inversion import load_inversions, save_inversions
from convlens.training.evaluate import run_test_data
from convlens.training.runs import Run


pytestmark = pytest.mark.usefixtures("one_thread")  # small images: one torch thread


class Scaled(nn.Module):
    """The same net with every score divided by ``k``: the same classifier, on another scale."""

    def __init__(self, net: nn.Module, k: float):
        super().__init__()
        self.net, self.k = net, k

    def forward(self, x):
        return self.net(x) / self.k


def _like(run, model) -> Run:
    """A Run of ``model`` with ``run``'s pixel space (normalization, class names, input shape)."""
    return Run(model=model, class_names=run.class_names, mean=run.mean, std=run.std, input_shape=run.input_shape)


def _untrained_run(seed: int) -> Run:
    """A randomly initialised conv net (fixed seed) behind a [0, 1] pixel normalization."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                            nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(32, 10))
    return Run(model=net.eval(), class_names=None, mean=torch.tensor([0.5]), std=torch.tensor([0.25]),
               input_shape=(3, 16, 16))


def _scores(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _start(run: Run, seeds: list[int]) -> torch.Tensor:
    """A class model's documented start: the mean image plus N(0, 0.02²) noise from each seed, in the box."""
    zero = run.mean.reshape(1, -1, 1, 1).expand(1, *run.input_shape)
    return torch.cat([zero + 0.02 * torch.randn(1, *run.input_shape, generator=torch.Generator().manual_seed(s))
                      for s in seeds]).clamp(0, 1)


def _top1(run: Run, res) -> np.ndarray:
    """Oracle: whether each returned image is its target's top-1, by a plain forward pass."""
    return (_scores(run.pixel_model(), res.images).argmax(1) == torch.tensor(res.info["targets"])).numpy()


# ---- (a), (b): defaults that scale with the model ------------------------------------------------------------

@pytest.mark.parametrize("which", ["small_run", "demo_run_dir"])
def test_scores_100x_smaller_get_top1_class_models_for_the_same_classes(which, request):
    run = convlens.load_run(request.getfixturevalue(which)) if which == "demo_run_dir" else \
        request.getfixturevalue(which)
    small = _like(run, Scaled(run.model, 100.0))
    res, res_small = class_model(run), class_model(small)
    hit, hit_small = _top1(run, res), _top1(small, res_small)
    assert hit.all() and np.array_equal(hit_small, hit)
    assert res_small.goal["reached"] == hit_small.tolist() and res_small.missed == {}
    # the weight and the temperature scale with the scores: exactly 1/100 (the same start, gradients / 100)
    np.testing.assert_allclose(np.multiply(res_small.info["l2_per_image"], 100), res.info["l2_per_image"], rtol=1e-3)
    assert res_small.info["temperature"] * 100 == pytest.approx(res.info["temperature"], rel=1e-3)
    if which == "small_run":  # the fixed settings of before hold the small scores' images where they started
        fixed = class_model(small, l2=0.05, temperature=1.0, plain_steps=0)
        assert not _top1(small, fixed).all() and fixed.missed


def test_the_scale_is_the_score_gradient_at_the_start_as_documented(small_run):
    res = class_model(small_run, [2, 7], n_seeds=2, steps=3)
    x = _start(small_run, res.info["seeds"]).requires_grad_(True)              # (4, 1, 16, 16)
    t = torch.tensor(res.info["targets"])
    (g,) = torch.autograd.grad(small_run.pixel_model().eval()(x)[torch.arange(4), t].sum(), x)  # by hand
    norms = g.flatten(1).norm(dim=1).double().numpy()
    np.testing.assert_allclose(res.info["score_gradient"], norms, rtol=1e-4)
    np.testing.assert_allclose(res.info["l2_per_image"], L2_RELATIVE * norms, rtol=1e-4)
    assert res.info["l2"] == pytest.approx(np.median(L2_RELATIVE * norms), rel=1e-4)
    assert res.info["temperature"] == pytest.approx(np.median(norms) / SCORE_SCALE, rel=1e-4)


def _plain_ascent_top1(run: Run, steps: int = 300) -> np.ndarray:
    """Oracle (plain torch, no convlens): Adam on log softmax of each class from the class model's start,
    no regularizer, pixels clipped to [0, 1]: which classes have a top-1 image in the box."""
    pm = run.pixel_model().eval()
    t = torch.arange(10)
    x = _start(run, [0] * 10).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        (-F.log_softmax(pm(x), dim=1)[t, t].sum()).backward()
        opt.step()
        with torch.no_grad():
            x.clamp_(0, 1)
    return (_scores(pm, x.detach()).argmax(1) == t).numpy()


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_net_gets_a_top1_class_model_wherever_plain_ascent_finds_one(seed):
    run = _untrained_run(seed)
    exists = _plain_ascent_top1(run)
    assert exists.sum() >= 5                                                    # the oracle finds most
    res = class_model(run)
    hit = _top1(run, res)
    assert hit[exists].all(), (exists, hit)
    assert res.goal["reached"] == hit.tolist()
    assert set(res.missed) == {str(c) for c in np.flatnonzero(~hit)}
    # the fixed settings of before (and Yosinski's blur with no plain steps) miss classes the oracle reaches
    fixed = class_model(run, l2=0.05, temperature=1.0, plain_steps=0)
    assert not _top1(run, fixed)[exists].all()


# ---- (c): goal records against an independent recomputation -------------------------------------------------

def test_class_model_goal_record_matches_a_plain_forward_pass(small_run, tmp_path):
    res = class_model(small_run, steps=1, plain_steps=0)                        # mostly not there yet
    p = torch.softmax(_scores(small_run.pixel_model(), res.images), 1)
    t = torch.arange(10)
    hit = (p.argmax(1) == t).numpy()
    assert 0 < hit.sum() < 10
    goal = res.goal
    assert goal["measure"] == "P(class)" and "top-1" in goal["goal"]
    np.testing.assert_allclose(goal["values"], p[t, t].numpy(), rtol=1e-5, atol=1e-7)
    assert goal["reached"] == hit.tolist()
    names = small_run.class_names
    assert set(res.missed) == {names[c] for c in np.flatnonzero(~hit)}
    for c in np.flatnonzero(~hit):
        assert f"classified as {names[int(p[c].argmax())]}, not {names[c]}" in res.missed[names[c]]
    save_optimized(tmp_path / "cm", res, schema="convlens.class_model/1")
    assert load_optimized(tmp_path / "cm").goal == goal
    d = json.loads((tmp_path / "cm.json").read_text())                         # a file saved before goals
    del d["info"]["goal"], d["info"]["plain_steps"]
    (tmp_path / "cm.json").write_text(json.dumps(d))
    assert load_optimized(tmp_path / "cm").goal == goal


def test_unit_goal_is_rising_above_the_zero_images_activation(small_run):
    res = class_model(small_run, layer="conv2", unit=[0, 1], steps=5)
    pm = small_run.pixel_model().eval()
    module = dict(pm.named_modules())[pm.lecture_names["conv2"]]
    got = []
    handle = module.register_forward_hook(lambda m, a, out: got.append(out.detach()))
    try:
        zero = small_run.mean.reshape(1, -1, 1, 1).expand(2, *small_run.input_shape)
        _scores(pm, zero), _scores(pm, res.images)
    finally:
        handle.remove()
    before, after = (a[[0, 1], [0, 1]].mean(dim=(1, 2)).numpy() for a in got)  # channel u of image u
    np.testing.assert_allclose(res.goal["values"], after, rtol=1e-5, atol=1e-6)
    assert res.goal["reached"] == (after > before).tolist() and res.goal["measure"] == "activation"


def test_fooling_goal_record_matches_a_plain_forward_pass(small_run, tmp_path):
    res = fooling_image(small_run, [2, 6, 8], steps=20, confidence=0.95)
    p = torch.softmax(_scores(small_run.pixel_model(), res.images), 1)[torch.arange(3), torch.tensor([2, 6, 8])]
    reached = (p >= 0.95).numpy()
    assert 0 < reached.sum() < 3
    np.testing.assert_allclose(res.goal["values"], p.numpy(), rtol=1e-5)
    assert res.goal["reached"] == reached.tolist() and res.goal["goal"] == "P(target) >= 0.95"
    assert res.missed == res.info["unreached"] and set(res.missed) == {str(c) for c, r in zip([2, 6, 8], reached)
                                                                         if not r}
    save_optimized(tmp_path / "f", res, schema="convlens.fooling/1")
    d = json.loads((tmp_path / "f.json").read_text())
    del d["info"]["goal"]
    (tmp_path / "f.json").write_text(json.dumps(d))
    assert load_optimized(tmp_path / "f").goal == res.goal


def test_inversion_goal_is_the_feature_error_against_its_threshold(small_run, tmp_path):
    x = run_test_data(small_run).images[:3]
    res = convlens.invert(small_run, x, ["conv1", "conv3"], steps=15)
    pm = small_run.pixel_model().eval()
    for name, r in res.items():
        module = dict(pm.named_modules())[pm.lecture_names[r.info["tapped"]]]
        got = []
        handle = module.register_forward_hook(lambda m, a, out: got.append(out.detach().clone()))
        try:
            _scores(pm, r.images), _scores(pm, x)
        finally:
            handle.remove()
        a, b = got[0].flatten(1).double(), got[1].flatten(1).double()
        error = ((a - b).norm(dim=1) / b.norm(dim=1)).numpy()
        np.testing.assert_allclose(r.goal["values"], error, rtol=1e-4, atol=1e-6)
        assert r.goal["reached"] == (error <= 0.3).tolist() and r.goal["measure"] == "feature error"
        assert set(r.missed) == {f"image {i}" for i in np.flatnonzero(error > 0.3)}
    assert not all(res["conv1"].goal["reached"]) and any(res["conv3"].goal["reached"])  # both kinds here
    strict = convlens.invert(small_run, x[:1], "conv3", steps=15, error_goal=0.01, n_inits=2)
    assert set(strict.missed) == {"image 0, init 0", "image 0, init 1"}
    save_inversions(tmp_path / "inv", x, res)
    d = json.loads((tmp_path / "inv.json").read_text())
    for e in d["layers"]:
        del e["info"]["goal"]
    (tmp_path / "inv.json").write_text(json.dumps(d))
    _, back = load_inversions(tmp_path / "inv")
    assert {k: r.goal for k, r in back.items()} == {k: r.goal for k, r in res.items()}


def test_adversarial_goal_record_matches_a_plain_forward_pass(small_run, tmp_path):
    data = run_test_data(small_run)
    x, y = data.images[:6], torch.as_tensor(data.labels[:6])
    res = adversarial(small_run, x, None, method="pgd", eps=0.01, steps=5, labels=y)
    logits = _scores(small_run.pixel_model(), torch.as_tensor(res.adversarial))
    fooled = (logits.argmax(1) != y).numpy()
    assert 0 < fooled.sum() < 6
    goal = res.goal
    np.testing.assert_allclose(goal["values"], torch.softmax(logits.double(), 1)[torch.arange(6), y].numpy(),
                               rtol=1e-5)
    assert goal["reached"] == fooled.tolist() and "within L∞ 0.01" in goal["goal"]
    r = (torch.as_tensor(res.adversarial) - x).flatten(1).double()
    np.testing.assert_allclose(goal["l2"], r.norm(dim=1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(goal["linf"], r.abs().amax(dim=1).numpy(), rtol=1e-6)
    assert set(res.missed) == {f"[{i}] {y[i].item()}" for i in np.flatnonzero(~fooled)}
    res.save(tmp_path / "adv")
    assert json.loads((tmp_path / "adv.json").read_text())["goal"] == goal
    assert AdversarialResult.load(tmp_path / "adv").goal == goal
    targeted = adversarial(small_run, x[:2], 3, method="lbfgs", steps=1, c=1e6)   # c huge: hardly moves
    p = torch.softmax(_scores(small_run.pixel_model(), torch.as_tensor(targeted.adversarial)).double(), 1)
    np.testing.assert_allclose(targeted.goal["values"], p[:, 3].numpy(), rtol=1e-5)
    assert targeted.goal["reached"] == (p.argmax(1) == 3).tolist() and "[0] " in next(iter(targeted.missed))


# ---- (d): the CLI warns about each missed goal and still saves the result ------------------------------------

def test_cli_warns_once_per_missed_goal_and_saves(small_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    out = run_dir / "results"

    def warnings() -> list[str]:
        err = capsys.readouterr().err
        return [line for line in err.splitlines() if line.startswith("warning: ")]

    main(["class-model", str(run_dir), "--class", "3", "--class", "5", "--seeds", "2", "--steps", "1", "--quiet"])
    [saved] = out.glob("class-model@*.json")
    missed = load_optimized(saved).missed
    lines = warnings()
    assert missed and len(lines) == len(missed)
    assert all(line.startswith(f"warning: class-model: {key} missed its goal") for line, key in zip(lines, missed))
    main(["fooling", str(run_dir), "--class", "2", "--steps", "1", "--quiet"])
    lines = warnings()
    assert len(lines) == 1 and lines[0].startswith("warning: fooling-gradient: 2 missed its goal (P(target) >= ")
    assert list(out.glob("fooling-gradient@*.json"))
    main(["invert", str(run_dir), "--index", "3", "--layers", "conv1", "--steps", "1", "--quadrants", "none",
          "--quiet", "--json"])
    printed = capsys.readouterr()
    assert json.loads(printed.out)[0]["reached"] == [False]                             # stdout: the JSON only
    lines = [line for line in printed.err.splitlines() if line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("warning: invert conv1: image 0 missed its goal (||Φ(x*) - Φ0|| "
                                                   "/ ||Φ0|| <= 0.3 at conv1): feature error ")
    assert list(out.glob("inversion@*.json"))
    main(["adversarial", str(run_dir), "--index", "0", "--method", "pgd", "--target", "none", "--eps", "0.0001",
          "--steps", "1", "--quiet"])
    lines = warnings()
    assert len(lines) == 1 and lines[0].startswith("warning: adversarial: [0] ") and "raise eps" in lines[0]
    assert list(out.glob("adversarial@*.json"))
    main(["class-model", str(run_dir), "--class", "3", "--seeds", "1", "--quiet"])     # reached: no warning
    assert warnings() == []
