"""convlens.adversarial: the target is top-1 after the attack (checked by a plain forward), images stay in
the pixel box, L2 / L∞ and probabilities recomputed independently, FGSM's step equal to eps * sign of a
gradient computed here with autograd, PGD inside its eps ball, awkward models, the model left as found,
save/load, the CLI and the report section."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens import InputError, ShapeError, datasets
from convlens.cli.app import main
from convlens.training.evaluate import run_test_data
from convlens.synthesis.adversarial import AdversarialResult, fgsm_sweep
from conftest import assert_as_found, model_state


def _probs(model: nn.Module, x) -> np.ndarray:
    was = model.training
    with torch.no_grad():
        x = torch.as_tensor(x).to(next(model.parameters()).dtype)
        p = torch.softmax(model.eval()(x).double(), 1).numpy()
    model.train(was)
    return p


def _check_numbers(res: AdversarialResult, model: nn.Module) -> None:
    """Distortion and probabilities recomputed from the images with numpy / a plain forward."""
    r = (res.adversarial.astype(np.float64) - res.original.astype(np.float64)).reshape(len(res), -1)
    np.testing.assert_allclose(res.l2, np.sqrt((r ** 2).sum(1)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.linf, np.abs(r).max(1), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.probs_before, _probs(model, res.original), atol=1e-5)
    np.testing.assert_allclose(res.probs_after, _probs(model, res.adversarial), atol=1e-5)


def _correct_rows(run, n, avoid):
    data = run_test_data(run)
    pred = _probs(run.pixel_model(), data.images[:100]).argmax(1)
    rows = [i for i in range(100) if pred[i] == data.labels[i] and data.labels[i] != avoid][:n]
    return data.images[rows], torch.as_tensor(data.labels)[rows]


def test_lbfgs_makes_the_target_top1_with_a_small_distortion_in_the_box(small_run):
    pm = small_run.pixel_model()
    x, y = _correct_rows(small_run, 3, avoid=3)
    before = model_state(pm)
    res = convlens.adversarial(small_run, x, "3", method="lbfgs", labels=y, steps=25, search_steps=4)
    assert_as_found(pm, before)
    assert res.success.all() and (res.target == 3).all()
    assert (_probs(pm, res.adversarial).argmax(1) == 3).all()                   # the target is top-1
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    _check_numbers(res, pm)
    assert (res.pred_before == y.numpy()).all() and 0 < res.l2.max() < 3.0    # small: ~0.1 per pixel at most
    fixed = convlens.adversarial(small_run, x, 3, method="lbfgs", labels=y, steps=25, c=1e-3)
    assert fixed.params["c"] == 1e-3 and fixed.params["search_steps"] is None


def test_fgsm_step_is_eps_times_the_sign_of_the_loss_gradient(tiny_resnet):
    model = tiny_resnet.double()
    x = 0.2 + 0.6 * torch.rand(3, 3, 16, 16, dtype=torch.float64)               # no pixel is clipped
    y = torch.tensor([1, 4, 7])
    eps = 0.05
    for target in (None, 2):
        res = convlens.adversarial(model, x, target, method="fgsm", eps=eps, labels=y, box=(0.0, 1.0))
        xg = x.clone().requires_grad_()
        loss = F.cross_entropy(model.eval()(xg), y if target is None else torch.full((3,), target), reduction="sum")
        (g,) = torch.autograd.grad(loss, xg)                                     # (3, 3, 16, 16)
        expected = x + eps * g.sign() if target is None else x - eps * g.sign()  # ascend CE(y) / descend CE(t)
        clear = g.abs() > 1e-12
        np.testing.assert_allclose(res.adversarial[clear.numpy()], expected[clear].numpy(), atol=1e-12)
        assert np.abs(res.linf - eps).max() < 1e-12
        _check_numbers(res, model)


def test_pgd_stays_in_its_eps_ball_and_the_box_and_fools_the_trained_run(small_run):
    pm = small_run.pixel_model()
    x, y = _correct_rows(small_run, 4, avoid=-1)
    eps = 0.1
    res = convlens.adversarial(small_run, x, None, method="pgd", eps=eps, steps=10, labels=y)
    assert (res.linf <= eps + 1e-6).all()
    assert res.adversarial.min() >= 0 and res.adversarial.max() <= 1
    assert res.success.all() and (_probs(pm, res.adversarial).argmax(1) != y.numpy()).all()
    _check_numbers(res, pm)
    targeted = convlens.adversarial(small_run, x, "0", method="pgd", eps=0.2, steps=15, labels=y)
    assert (_probs(pm, targeted.adversarial).argmax(1) == 0).all()
    assert (targeted.linf <= 0.2 + 1e-6).all()


def test_one_channel_model_with_functional_relus_and_a_model_in_train_mode(gray_net, tiny_resnet):
    x = torch.rand(2, 1, 20, 28)
    before = model_state(gray_net)
    res = convlens.adversarial(gray_net, x, 2, method="lbfgs", steps=20, search_steps=3, box=(0.0, 1.0))
    assert_as_found(gray_net, before)
    assert res.success.all() and res.original.shape == (2, 1, 20, 28)
    _check_numbers(res, gray_net)
    tiny_resnet.train()                                                         # BN + F.relu residual blocks
    tiny_resnet.fc.weight.requires_grad_(False)
    before = model_state(tiny_resnet)
    x = torch.rand(2, 3, 16, 16)
    second = torch.as_tensor(_probs(tiny_resnet, x)).argsort(1, descending=True)[:, 1]
    res = convlens.adversarial(tiny_resnet, x, second, method="lbfgs", steps=10, search_steps=2, box=(0.0, 1.0))
    assert_as_found(tiny_resnet, before)
    # the untrained net's scores barely depend on the image (no success needed): P(target) must still rise
    d = res.to_dict()
    assert all(a > b for a, b in zip(d["p_target_after"], d["p_target_before"]))
    _check_numbers(res, tiny_resnet)


def test_errors_are_clear(tiny_resnet, bn_net, small_run):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InputError, match="method must be"):
        convlens.adversarial(tiny_resnet, x, 1, method="deepfool")
    with pytest.raises(InputError, match="target must be a class for method='lbfgs'"):
        convlens.adversarial(tiny_resnet, x, None)
    with pytest.raises(InputError, match="eps must be"):
        convlens.adversarial(tiny_resnet, x, None, method="fgsm", eps=0)
    with pytest.raises(InputError, match="inside the box"):
        convlens.adversarial(tiny_resnet, x + 2, None, method="fgsm", box=(0.0, 1.0))
    with pytest.raises(InputError, match="not a class of this model"):
        convlens.adversarial(small_run, torch.rand(1, 16, 16), "ostrich")
    with pytest.raises(InputError, match=r"3-channel images.*got \(1, 5, 16, 16\)"):  # refused before the forward
        convlens.adversarial(tiny_resnet, torch.rand(1, 5, 16, 16), 1)
    bn_net.train()
    before = model_state(bn_net)
    for method in ("lbfgs", "pgd"):
        with pytest.raises(ShapeError, match=r"failed on input of shape \(1, 3, 1, 1\)"):  # the max-pool fails
            convlens.adversarial(bn_net, torch.rand(1, 3, 1, 1), 1, method=method)
        assert_as_found(bn_net, before)


def test_save_load_round_trip_repr_and_plot(tmp_path, small_run):
    x, y = _correct_rows(small_run, 2, avoid=7)
    res = convlens.adversarial(small_run, x, "7", method="fgsm", eps=0.1, labels=y)
    res.save(tmp_path / "adv")
    back = AdversarialResult.load(tmp_path / "adv.json")
    np.testing.assert_array_equal(back.adversarial, res.adversarial)
    np.testing.assert_array_equal(back.target, res.target)
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    assert "fgsm" in repr(res) and "L∞" in repr(res)
    assert res._repr_png_().startswith(b"\x89PNG")
    untargeted = convlens.adversarial(small_run, x, None, method="fgsm", eps=0.1, labels=y)
    untargeted.save(tmp_path / "u")
    assert AdversarialResult.load(tmp_path / "u").target is None


def test_fgsm_sweep_accuracy_falls_with_eps(small_run):
    data = run_test_data(small_run)
    sweep = fgsm_sweep(small_run, data.images[:60], data.labels[:60], (0.0, 0.05, 0.2))
    pred = _probs(small_run.pixel_model(), data.images[:60]).argmax(1)
    assert sweep.accuracy[0] == pytest.approx((pred == np.asarray(data.labels[:60])).mean())
    assert sweep.accuracy[2] < sweep.accuracy[0]


def test_demo_model_made_into_one_class(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    x = datasets.load("shapes", split="test", size=64, n=2, seed=0).images
    res = convlens.adversarial(run, x, "heart", steps=30, search_steps=4)
    assert res.success.all() and (res.linf < 0.2).all()
    _check_numbers(res, run.pixel_model())


def test_cli_saves_results_figures_and_the_report_section_reads_them(small_run, tmp_path, capsys):
    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["adversarial", str(run_dir), "--target", "3", "--steps", "15", "--sweep", "--quiet", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["method"] == "lbfgs" and len(d["l2"]) == 4 and set(d["target"]) == {3} and 3 not in d["labels"]
    out = run_dir / "results"
    [attack] = out.glob("adversarial@*.json")  # options given: kept beside the default result
    for path in (attack, attack.with_suffix(".npz"), attack.with_suffix(".png"), out / "fgsm-sweep.json",
                 out / "fgsm-sweep.png"):
        assert path.is_file(), path.name
    main(["adversarial", str(run_dir), "--index", "0", "--index", "5", "--method", "pgd", "--target", "none",
          "--eps", "0.1", "--quiet"])
    assert "pgd" in capsys.readouterr().out
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.adversarial import adversarial

    sec = adversarial(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))
    assert sec is not None and [b.name for b in sec.blocks if b.kind == "figure"] == ["triptych",
                                                                                      "fgsm-sweep"]
    assert adversarial(ReportContext(convlens.load_run(small_run.dir), tmp_path / "r2")) is None
    with pytest.raises(SystemExit) as ex:
        main(["adversarial", str(run_dir), "--target", "ostrich", "--quiet"])
    assert ex.value.code == 2
