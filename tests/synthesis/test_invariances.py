"""The invariances of an optimal stimulus from the Hessian (Berkes & Wiskott 2006; Le et al. 2010) and the
smooth copy of a piecewise-linear net, against independent oracles: the full Hessian from
``torch.autograd.functional.hessian`` projected on the sphere's tangent space (a null-space basis from
scipy), activations measured by plain forward passes along geodesics, hand-written softplus networks."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens.errors import InputError, LayerNotFoundError
from convlens.synthesis.invariances import HessianInvariances, hessian_invariances
from convlens.synthesis.optimal_stimuli import optimal_stimuli
from convlens.synthesis.smooth import Smoothed
from conftest import assert_as_found, model_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread


class SoftNet(nn.Module):
    """A smooth unit on 1x8x8: conv -> softplus -> conv (float64)."""

    input_shape = (1, 8, 8)

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 3, 3)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g)
        self.act = nn.Softplus(beta=2.0)

    def forward(self, x):                                          # (N, 1, 8, 8)
        return self.conv2(self.act(self.conv1(x)))                 # (N, 3, 4, 4)


class ReluNet(SoftNet):
    """The same weights with ReLUs: an nn.ReLU module, and F.relu written in forward."""

    def __init__(self):
        super().__init__()
        self.act = nn.ReLU()

    def forward(self, x):
        return F.relu(self.conv2(self.act(self.conv1(x))))


def unit_value(model, x, unit=1):
    """The unit the tests analyse, written out: channel ``unit`` of conv2's output, averaged over positions."""
    return model.conv2(model.act(model.conv1(x.reshape(1, *model.input_shape))))[0, unit].mean()


def tangent_oracle(model, x: torch.Tensor):
    """(eigenvalues descending, eigenvectors (D, D-1) in input space, μ) of A = T^T (H - μ I) T from the full
    Hessian H (torch.autograd.functional.hessian), T an orthonormal basis of {v : v . x = 0} (scipy null_space)."""
    x = x.reshape(-1).double()
    H = torch.autograd.functional.hessian(lambda v: unit_value(model, v), x).numpy()        # (D, D)
    xg = x.clone().requires_grad_(True)
    g = torch.autograd.grad(unit_value(model, xg), xg)[0].numpy()
    r = float(x.norm())
    n = x.numpy() / r
    mu = float(n @ g) / r
    T = scipy.linalg.null_space(n[None])                                                   # (D, D-1)
    vals, vecs = np.linalg.eigh(T.T @ (H - mu * np.eye(len(n))) @ T)
    return vals[::-1], (T @ vecs)[:, ::-1], mu


def test_lanczos_eigenpairs_equal_the_full_hessian_projected_on_the_tangent_space():
    model = SoftNet().double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    res = hessian_invariances(model, "conv2", 1, at=x, beta=None, refine=0, k=5, n_least=2, tol=0, n_frames=3)
    torch.testing.assert_close(res.x_star, x)                     # the sphere through x itself: x is x*
    vals, vecs, mu = tangent_oracle(model, res.x_star)
    np.testing.assert_allclose(res.eigenvalues[:5], vals[:5], rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(res.eigenvalues[5:7], vals[::-1][:2], rtol=1e-7, atol=1e-12)
    dirs = res.directions.reshape(len(res), -1).numpy()
    assert np.all(np.diff(vals[:6]) < -1e-6) and np.all(np.diff(vals[::-1][:3]) > 1e-6)  # distinct: vectors defined
    for got, want in zip(dirs[:5], vecs.T[:5]):
        assert abs(got @ want) == pytest.approx(1.0, abs=1e-8)
    for got, want in zip(dirs[5:7], vecs.T[::-1][:2]):
        assert abs(got @ want) == pytest.approx(1.0, abs=1e-8)
    assert np.abs(dirs @ res.x_star.reshape(-1).numpy()).max() < 1e-9           # every direction is tangent
    assert res.info["mu"] == pytest.approx(mu, rel=1e-9)
    T = np.stack([vecs[:, i] for i in range(vecs.shape[1])], axis=1)
    A = T @ np.diag(vals) @ T.T                                                    # A on the tangent space
    v = dirs[-1]                                                                   # the random row: v^T A v
    assert res.eigenvalues[-1] == pytest.approx(v @ A @ v, rel=1e-7)
    assert res.info["smooth"]["used"] is False and not res.info["degenerate"]


def test_lanczos_needs_far_fewer_products_than_dimensions():
    class Wide(SoftNet):
        input_shape = (3, 24, 24)

        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 5, stride=2)

    model = Wide().eval()
    res = hessian_invariances(model, "conv2", 0, at=torch.randn(1, 3, 24, 24), beta=None, refine=0, k=4, n_least=1,
                              n_frames=3)
    assert res.info["dimensions"] == 1728 and res.info["hvps"] < 1728 / 4


def test_the_most_invariant_direction_changes_the_activation_least():
    model = SoftNet().double().eval()
    stimuli = optimal_stimuli(model, "conv2", 1, n_inits=2, norm=3.0, steps=1000)
    res = hessian_invariances(model, at=stimuli, k=3, n_least=1, refine=100, n_frames=3)
    assert not res.missed                                          # every eigenvalue <= 0: x* is a maximum
    assert res.info["tangential_gradient"] < 1e-4
    sphere, x = res.sphere, res.x_star
    gen = torch.Generator().manual_seed(7)
    randoms = [sphere.tangent(x, torch.randn(x.shape, generator=gen, dtype=x.dtype)) for _ in range(12)]

    def f(image) -> float:
        with torch.no_grad():
            return float(unit_value(model, image))

    def change(v, t=0.05):                                         # measured: plain forward passes at ± t
        return max(abs(f(sphere.geodesic(x, v, [s])[0]) - f(x)) for s in (-t, t))
    most, least = change(res.directions[0:1]), change(res.directions[3:4])
    assert most < min(change(v) for v in randoms) and most < least / 2


def test_a_relu_net_has_no_curvature_and_its_softplus_copy_is_the_hand_written_one():
    relu = ReluNet().double().eval()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    flat = hessian_invariances(relu, "conv2", 1, at=x, beta=None, refine=0, k=3, n_least=1, n_frames=3)
    xg = flat.x_star.clone().requires_grad_(True)
    g = torch.autograd.grad(unit_value(relu, xg), xg)[0]
    mu = float((g * flat.x_star).sum()) / float(flat.x_star.norm()) ** 2
    assert flat.info["degenerate"]
    np.testing.assert_allclose(flat.eigenvalues[:4], -mu, rtol=1e-9)         # H = 0: every direction alike
    smooth = hessian_invariances(relu, "conv2", 1, at=x, beta=10.0, refine=0, k=3, n_least=1, n_frames=3)
    by_hand = SoftNet().double().eval()
    by_hand.act = nn.Softplus(beta=10.0)
    assert smooth.info["smooth"]["replaced"] == {"relu": 1}        # nn.ReLU; F.relu after conv2 is not reached
    with torch.no_grad():
        copy, model = float(unit_value(by_hand, smooth.x_star)), float(unit_value(relu, smooth.x_star))
    # equal up to the copy's cut below βx = -20 (< e^-20 / β per unit)
    assert smooth.info["smooth"]["activation"] == pytest.approx(copy, rel=1e-9, abs=1e-9)
    assert smooth.info["smooth"]["activation_gap"] == pytest.approx(copy - model, rel=1e-7, abs=1e-9)
    vals, _, _ = tangent_oracle(by_hand, smooth.x_star)
    np.testing.assert_allclose(smooth.eigenvalues[:3], vals[:3], rtol=1e-5)
    assert not smooth.info["degenerate"]


class Clamps(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(6, 6)
        self.relu6 = nn.ReLU6()
        self.inplace = nn.ReLU(inplace=True)

    def forward(self, x):
        y = self.inplace(self.lin(x) * 4)
        return torch.stack([self.relu6(x * 5), F.hardtanh(x, -0.5, 0.5), x.clamp(min=0.2), x.clamp(max=0.1),
                            F.leaky_relu(x, 0.1), y, x.clone().relu_()])


def test_the_smooth_ops_are_softplus_and_the_smooth_clamp():
    def sp(z, b):                                                  # softplus written out
        return torch.log1p(torch.exp(b * z)) / b

    model = Clamps().double().eval()
    before = model_state(model)
    x = torch.linspace(-1.5, 1.5, 6, dtype=torch.float64).reshape(1, 6)
    for beta in (3.0, 10.0):
        got = Smoothed(model, beta)(x)
        y = model.lin(x) * 4
        want = torch.stack([sp(5 * x, beta) - sp(5 * x - 6, beta), -0.5 + sp(x + 0.5, beta) - sp(x - 0.5, beta),
                            0.2 + sp(x - 0.2, beta), 0.1 - sp(0.1 - x, beta), 0.1 * x + 0.9 * sp(x, beta), sp(y, beta),
                            sp(x, beta)])
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 / beta)  # exactly 0 below βz = -20: e^-20 / β
    torch.testing.assert_close(Smoothed(model, 1e4)(x), model(x), atol=1e-4, rtol=0)
    assert_as_found(model, before)


@pytest.mark.parametrize("mult,k,stride,padding,dilation", [(1, 3, 1, 1, 1), (2, 5, 2, 2, 1), (1, 3, 2, 0, 2)])
def test_depthwise_convolutions_as_shifts_give_the_same_values_and_hessian_vector_products(mult, k, stride, padding,
                                                                                          dilation):
    conv = nn.Conv2d(4, 4 * mult, k, stride=stride, padding=padding, dilation=dilation, groups=4).double()
    net = nn.Sequential(conv, nn.Softplus(), nn.Conv2d(4 * mult, 2, 1)).double()
    shifted = Smoothed(net, None, depthwise_shifts=True)
    x = torch.randn(1, 4, 11, 13, dtype=torch.float64, requires_grad=True)
    v = torch.randn_like(x)
    hvps = []
    for model in (net, shifted):                                   # H v by double backprop through each
        (g,) = torch.autograd.grad(model(x).square().sum(), x, create_graph=True)
        hvps.append(torch.autograd.grad(g, x, v)[0])
    torch.testing.assert_close(shifted(x), net(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(hvps[1], hvps[0], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("fixture,layer", [("inplace_net", "conv"), ("tiny_resnet", "layer2.bn2")])
def test_any_model_is_left_as_found(fixture, layer, request):
    model = request.getfixturevalue(fixture).train()
    next(model.parameters()).requires_grad_(False)
    list(model.children())[-1].eval()                              # a mixed train/eval model
    before = model_state(model)
    stimuli = optimal_stimuli(model, layer, 1, n_inits=2, steps=3)
    res = hessian_invariances(model, at=stimuli, k=2, n_least=1, refine=2, n_frames=3, tol=1e-2)
    assert res.info["smooth"]["used"] and res.directions.shape == (4, *model.input_shape)
    assert_as_found(model, before)
    with pytest.raises(InputError, match="unit must be in"):
        hessian_invariances(model, layer, 99, at=stimuli.images[:1], k=2)
    assert_as_found(model, before)


def test_clear_errors(tiny_resnet):
    x = torch.randn(1, 3, 32, 32)
    with pytest.raises(LayerNotFoundError, match="Did you mean 'layer2'"):
        hessian_invariances(tiny_resnet, "layer22", 0, at=x)
    with pytest.raises(InputError, match="k must be an int >= 1"):
        hessian_invariances(tiny_resnet, "stem", 0, at=x, k=0)
    with pytest.raises(InputError, match="beta must be a positive number"):
        hessian_invariances(tiny_resnet, "stem", 0, at=x, beta=-1.0)
    with pytest.raises(InputError, match="norm must be a positive number"):
        hessian_invariances(tiny_resnet, "stem", 0, at=x, norm=0.0)
    with pytest.raises(InputError, match=r"at must be an OptimalStimuli, a float image \(1, 3, 32, 32\)"):
        hessian_invariances(tiny_resnet, "stem", 0, at=torch.randn(2, 3, 32, 32))
    with pytest.raises(InputError, match="k \\+ n_least must be at most"):
        hessian_invariances(SoftNet().eval(), "conv2", 0, at=torch.randn(1, 1, 8, 8), k=62)
    stimuli = optimal_stimuli(SoftNet().eval(), "conv2", 0, n_inits=2, steps=2)
    with pytest.raises(InputError, match="unit must match the optimal stimuli given"):
        hessian_invariances(SoftNet().eval(), "conv2", 1, at=stimuli)

    class Detached(SoftNet):
        def forward(self, x):
            return self.conv2(self.act(self.conv1(x)).detach())
    with pytest.raises(InputError, match="no differentiable path"):
        hessian_invariances(Detached().eval(), "conv2", 0, at=torch.randn(1, 1, 8, 8))


def test_save_load_plot_and_the_flat_api(tmp_path):
    assert convlens.hessian_invariances is hessian_invariances and convlens.HessianInvariances is HessianInvariances
    model = SoftNet().eval()
    res = hessian_invariances(model, "conv2", 2, at=torch.randn(1, 1, 8, 8), k=2, n_least=1, n_frames=5)
    assert len(hessian_invariances(model, at=res.x_star, layer="conv2", unit=2, k=2, n_least=0, n_frames=3)) == 3
    res.save(tmp_path / "inv")
    back = HessianInvariances.load(tmp_path / "inv.json")
    assert torch.equal(back.x_star, res.x_star) and torch.equal(back.directions, res.directions)
    np.testing.assert_array_equal(back.eigenvalues, res.eigenvalues)
    assert back.info == res.info and back.kinds == ["invariance", "invariance", "least invariant", "random"]
    np.testing.assert_allclose(back.frames(1)[len(res.angles) // 2], res.x_star[0], atol=1e-6)
    assert back.display().shape == (4, 5, 8, 8, 1) and back.predicted().shape == (4, 5)
    fig = back.plot()
    assert len(fig.axes) == 4 * 6
    assert "HessianInvariances(conv2:2" in repr(back)
    assert math.isfinite(back.info["max_angle"])
