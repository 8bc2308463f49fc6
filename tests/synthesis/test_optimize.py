"""The image-optimization core: objectives checked by finite differences, composition, the loop's
box/parametrization, between-step regularizers, and the model left as found."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import InputError
from convlens.synthesis import objectives as O
from convlens.synthesis.optimize import (_Forward, blur, clip_small_norm, decay, evaluate, jitter, optimize)


class Small(nn.Module):
    """conv -> in-place ReLU -> maxpool -> conv -> F.relu -> GAP -> fc, float64 for gradcheck."""

    def __init__(self, c_in=3):
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(c_in, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 5, 3)
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        x = F.max_pool2d(self.relu(self.conv1(x)), 2)
        x = F.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


def _state_fn(model, objective):
    fwd = _Forward(model, objective)

    def f(x):
        with fwd:
            return objective(fwd(x, x))
    return f


OBJECTIVES = {
    "class_score": lambda x0: O.class_score(1),
    "class_score_per_image": lambda x0: O.class_score(torch.tensor([2, 0])),
    "class_logprob": lambda x0: O.class_logprob(2),
    "channel": lambda x0: O.channel("conv2", 3),
    "neuron": lambda x0: O.neuron("conv1", 1, (2, 3)),
    "neuron_fc": lambda x0: O.neuron("fc", 0),
    "feature_match": lambda x0: O.feature_match("conv1", torch.randn(2, 4, 8, 10, dtype=torch.float64)),
    "l2": lambda x0: O.l2(torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)),
    "alpha_norm": lambda x0: O.alpha_norm(6.0, 0.5),
    "alpha_norm_odd": lambda x0: O.alpha_norm(3.0, 0.5),
    "tv2": lambda x0: O.tv(2.0),
    "tv1": lambda x0: O.tv(1.0),
    "distance": lambda x0: O.distance(x0, 2.0),
    "distance_p1.5": lambda x0: O.distance(x0, 1.5),
    "tv1.5": lambda x0: O.tv(1.5),
    "combined": lambda x0: O.class_score(0) + 1e-2 * O.l2() + 0.5 * O.channel("conv1", 0) - O.tv(),
}


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_every_objective_gradient_matches_finite_differences(name):
    model = Small().double().eval()
    x = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    objective = OBJECTIVES[name](x + 0.1)
    f = _state_fn(model, objective)
    assert f(x).shape == (2,)
    assert torch.autograd.gradcheck(f, (x.requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_composition_and_tv_equal_hand_computation():
    model = Small().double().eval()
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64)
    a, b = O.class_score(1), O.channel("conv1", 2)
    f = _state_fn(model, a + 2 * b + O.tv(2.0))  # priors carry their minus sign
    fa, fb = _state_fn(model, a), _state_fn(model, b)
    tv = np.zeros(2)
    xn = x.numpy()
    for n in range(2):
        for i in range(6):
            for j in range(7):
                right = xn[n, :, i, j + 1] - xn[n, :, i, j] if j + 1 < 7 else np.zeros(3)
                down = xn[n, :, i + 1, j] - xn[n, :, i, j] if i + 1 < 6 else np.zeros(3)
                tv[n] += (right ** 2 + down ** 2).sum()
    np.testing.assert_allclose(f(x).detach().numpy(), (fa(x) + 2 * fb(x)).detach().numpy() - tv, rtol=1e-10)


def test_forward_stops_after_the_last_layer_when_no_scores_are_needed():
    model = Small().eval()
    ran = []
    model.fc.register_forward_hook(lambda *a: ran.append("fc"))
    f = _state_fn(model, O.channel("conv1", 0))
    f(torch.rand(1, 3, 8, 8))
    assert ran == []
    with pytest.raises(InputError, match="class scores"):
        _state_fn(nn.Sequential(nn.Conv2d(3, 2, 3)), O.class_score(0))(torch.rand(1, 3, 8, 8))


def test_optimize_raises_the_objective_within_the_box_and_leaves_the_model_as_found():
    model = Small().train()
    model.conv2.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = torch.full((2, 3, 12, 12), 0.5)
    res = optimize(model, O.class_score(1) + 1e-3 * O.l2(0.5), init, steps=30, lr=0.05, box=(0.0, 1.0),
                   transforms=[jitter(1)], every=[blur(0.5, 3), decay(0.01, 0.5)])
    assert res.history.shape == (30, 2) and res.final.shape == (2,)
    assert (res.final > res.history[0]).all()
    assert res.images.min() >= 0 and res.images.max() <= 1
    assert model.training and model.conv1.training
    assert model.conv1.weight.requires_grad and not model.conv2.weight.requires_grad
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_hooks_removed_and_state_restored_when_the_objective_raises():
    model = Small().train()
    bad = O.Objective(lambda s: (_ for _ in ()).throw(RuntimeError("boom")), "bad", layers=["conv1"])
    with pytest.raises(RuntimeError, match="boom"):
        optimize(model, bad, torch.rand(1, 3, 8, 8), steps=2)
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_sigmoid_parametrization_stays_strictly_inside_the_box_and_lbfgs_runs():
    model = Small().eval()
    res = optimize(model, O.class_logprob(2), torch.rand(1, 3, 8, 8), steps=20, lr=0.5, optimizer="adam",
                   parametrization="sigmoid", box=(0.0, 1.0))
    assert 0 < res.images.min() and res.images.max() < 1
    res2 = optimize(model, O.class_logprob(2) + 0.1 * O.distance(torch.full((1, 3, 8, 8), 0.5)),
                    torch.full((1, 3, 8, 8), 0.5), steps=5, lr=1.0, optimizer="lbfgs", box=(0.0, 1.0))
    assert res2.final[0] >= res2.history[0][0] - 1e-6


def test_regularizers_do_what_they_say():
    x = torch.full((1, 2, 9, 9), 0.3)
    blur(1.0, every=1)(x, 0, None)
    assert torch.allclose(x, torch.full_like(x, 0.3))  # a constant image is a fixed point of a blur
    x = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(1, 2, 10, 10) / 200
    clip_small_norm(40.0)(x, 0, None)
    assert (x[0, 0] == 0).sum().item() == 40  # 40% of the 100 pixels (norms all distinct) reset to 0


def test_evaluate_equals_plain_forward_and_errors_are_clear():
    model = Small().eval()
    x = torch.rand(5, 3, 8, 8)
    with torch.no_grad():
        expected = torch.log_softmax(model(x), 1)[:, 1]
    torch.testing.assert_close(evaluate(model, O.class_logprob(1), x, batch_size=2), expected)
    with pytest.raises(InputError, match="init must be"):
        optimize(model, O.class_score(0), torch.rand(3, 8, 8))
    with pytest.raises(InputError, match="optimizer must be"):
        optimize(model, O.class_score(0), torch.rand(1, 3, 8, 8), optimizer="rmsprop")
    with pytest.raises(InputError, match="unit must be in"):
        evaluate(model, O.channel("conv1", 9), x)
    with pytest.raises(InputError, match="objective must be"):
        optimize(model, lambda s: s.logits[:, 0], torch.rand(1, 3, 8, 8))


@pytest.mark.parametrize("name", ["sgd", "sgd0", "adam", "adam_written_out"])
def test_update_rules_equal_torch_optim(name):
    from convlens.synthesis import update_rules

    target = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    ours_z = torch.zeros(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    ref_z = ours_z.detach().clone().requires_grad_(True)
    momentum = 0.0 if name == "sgd0" else 0.9
    ours = update_rules.make("adam" if name.startswith("adam") else "sgd", ours_z, 0.05, momentum)
    if name == "adam_written_out":
        ours.fused = False                      # the path for devices and dtypes without a fused kernel
    ref = (torch.optim.Adam([ref_z], lr=0.05) if name.startswith("adam")
           else torch.optim.SGD([ref_z], lr=0.05, momentum=momentum))

    def closure(z):
        def f():
            z.grad = None
            loss = ((z - target) ** 4).sum()
            loss.backward()
            return loss
        return f
    for step in range(7):
        ours.step(closure(ours_z))
        ref.zero_grad()
        ref.step(closure(ref_z))
        ours.lr *= 0.9
        ref.param_groups[0]["lr"] *= 0.9
        torch.testing.assert_close(ours_z, ref_z, rtol=1e-12, atol=1e-12)
    assert name != "adam" or ours.fused          # the fused kernel ran (CPU has it since torch 2.4)


@pytest.mark.parametrize("shape", [(2, 2, 1, 5), (2, 2, 4, 1), (1, 1, 2, 2)])
def test_fused_priors_on_thin_images_match_finite_differences(shape):
    from convlens.synthesis.objectives import State

    objective = 1e-1 * O.tv(2.0) - 0.5 * O.tv(1.5) + 2.0 * O.alpha_norm(4.0, 0.3) + O.l2()
    x = torch.rand(*shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: objective(State(t, t)), (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_loop_with_priors_takes_the_steps_of_plain_autograd():
    """optimize adds the priors' gradient by hand after the model's backward; five normalized SGD steps
    with momentum and the box must equal the same steps on the objective written out in plain torch."""
    model = Small().double().eval()
    torch.manual_seed(1)
    target = torch.randn(2, 4, 8, 10, dtype=torch.float64)
    init = torch.rand(2, 3, 8, 10, dtype=torch.float64)
    objective = O.feature_match("conv1", target) + 1e-2 * O.tv() + 1e-3 * O.alpha_norm(6.0, 0.5) + 0.1 * O.l2()
    ours = optimize(model, objective, init, steps=5, lr=0.05, optimizer="sgd", momentum=0.9, normalize_grad=True,
                    box=(0.0, 1.0))

    x, buf, values = init.clone(), None, []
    for _ in range(5):
        x.requires_grad_(True)
        a = model.conv1(x)
        fm = -((a - target) ** 2).sum(dim=(1, 2, 3)) / (target ** 2).sum(dim=(1, 2, 3))
        tv = (((x[:, :, 1:] - x[:, :, :-1]) ** 2).sum(dim=(1, 2, 3))
              + ((x[..., 1:] - x[..., :-1]) ** 2).sum(dim=(1, 2, 3)))
        value = fm - 1e-2 * tv - 1e-3 * ((x - 0.5) ** 6).sum(dim=(1, 2, 3)) - 0.1 * (x ** 2).sum(dim=(1, 2, 3))
        (g,) = torch.autograd.grad(-value.sum(), x)
        g = g / g.abs().mean(dim=(1, 2, 3), keepdim=True)
        buf = g if buf is None else 0.9 * buf + g
        x = (x.detach() - 0.05 * buf).clamp(0.0, 1.0)
        values.append(value.detach().numpy())
    torch.testing.assert_close(ours.images, x, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ours.history, np.stack(values), rtol=1e-6)  # history is float32
