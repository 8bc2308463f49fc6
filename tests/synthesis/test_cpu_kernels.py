"""The single-pass CPU kernels (numba) against the torch-operation paths, finite differences and conv2d."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens.synthesis import objectives as O
from convlens.synthesis import cpu_kernels
from convlens.synthesis.image_priors import PriorsStep, priors_grad, priors_value
from convlens.synthesis.optimize import blur


SHAPES = [(3, 2, 7, 9), (2, 2, 1, 5), (2, 2, 4, 1), (1, 1, 1, 1), (2, 3, 64, 40)]


def _objective(c: int):
    channel_ref = torch.linspace(0.1, 0.4, c)
    return (1e-2 * O.tv(2.0) + 0.3 * O.alpha_norm(6.0, 0.5) - 0.2 * O.alpha_norm(3.0, channel_ref)
            + O.l2(torch.tensor(0.2)) + 0.5 * O.alpha_norm(1.0) + 0.1 * O.tv(1.5)
            + 0.05 * O.alpha_norm(2.5, 0.1))                     # tv(1.5) and p = 2.5 have no kernel


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_kernels_equal_the_torch_operations(shape, dtype):
    torch.manual_seed(0)
    x = torch.rand(*shape, dtype=dtype)
    x[0, 0, 0, 0] = 0.5                                            # d = 0 exactly for p = 1, 3, 6 (sign 0)
    priors = _objective(shape[1]).priors
    step = PriorsStep(priors, x)
    assert len(step.rest) == 2 and step.fast[0] == 1e-2 and len(step.fast[1]) == 4   # tv(2), 4 integer powers
    g = torch.randn(shape[0], dtype=dtype)
    start = torch.randn_like(x)
    value, saved = priors_value(x, priors)
    want = priors_grad(priors, saved, g, into=start.clone())
    got_value, got = step(x, g, into=start.clone())
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_value, value, **tol)
    torch.testing.assert_close(got, want, **tol)
    _, fresh = step(x, g)                                          # no gradient to add into: a new one
    torch.testing.assert_close(fresh, want - start, **tol)


@pytest.mark.parametrize("terms", ["tv", "powers", "both"])
def test_kernel_gradient_matches_finite_differences(terms):
    torch.manual_seed(1)
    x = torch.rand(2, 3, 5, 6, dtype=torch.float64)
    objective = {"tv": 1e-1 * O.tv(), "powers": O.alpha_norm(6.0, 0.3) + 0.5 * O.alpha_norm(3.0, 0.6),
                 "both": 1e-1 * O.tv() + O.alpha_norm(6.0, 0.3) + 0.5 * O.alpha_norm(3.0, 0.6)}[terms]
    step = PriorsStep(objective.priors, x)
    assert not step.rest and step.fast is not None
    g = torch.tensor([1.0, -2.0], dtype=torch.float64)
    _, grad = step(x, g)
    rng = np.random.default_rng(0)
    for _ in range(20):
        i = tuple(int(rng.integers(s)) for s in x.shape)
        e = torch.zeros_like(x)
        e[i] = 1e-6
        up, down = (step(x + e, g)[0] @ g).item(), (step(x - e, g)[0] @ g).item()
        assert abs((up - down) / 2e-6 - grad[i].item()) < 1e-6 * max(1.0, abs(grad[i].item()))


def test_without_numba_every_term_runs_as_torch_operations(monkeypatch):
    monkeypatch.setattr(cpu_kernels, "numba", None)
    x = torch.rand(2, 3, 6, 5)
    priors = _objective(3).priors
    step = PriorsStep(priors, x)
    assert step.fast is None and step.rest == priors
    g = -torch.ones(2)
    value, saved = priors_value(x, priors)
    got_value, got = step(x, g)
    torch.testing.assert_close(got_value, value)
    torch.testing.assert_close(got, priors_grad(priors, saved, g))


def test_per_pixel_references_and_half_precision_use_torch_operations():
    x0 = torch.rand(2, 3, 4, 4)
    assert PriorsStep(O.distance(x0, 2.0).priors, x0).fast is None    # the reference varies by pixel
    assert PriorsStep(O.l2().priors, x0.half()).fast is None          # no kernel for float16



@pytest.mark.parametrize("shape", [(2, 3, 20, 17), (1, 2, 4, 9), (1, 1, 5, 4)])
@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_blur_kernel_equals_a_gaussian_conv2d_with_reflected_borders(shape, sigma, monkeypatch):
    torch.manual_seed(0)
    x = torch.rand(*shape, dtype=torch.float64)
    r = math.ceil(3 * sigma)
    k = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float64) ** 2 / (2 * sigma ** 2))
    k /= k.sum()
    weight = torch.outer(k, k).expand(shape[1], 1, 2 * r + 1, 2 * r + 1)
    want = F.conv2d(F.pad(x, (r, r, r, r), mode="reflect"), weight, groups=shape[1])
    calls = []
    kernel = cpu_kernels.blur_
    monkeypatch.setattr(cpu_kernels, "blur_", lambda *a: calls.append(1) or kernel(*a))
    got = x.clone()
    blur(sigma, every=1)(got, 0, None)
    assert calls == [1]
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    monkeypatch.setattr(cpu_kernels, "numba", None)                # the torch operations agree
    plain = x.clone()
    blur(sigma, every=1)(plain, 0, None)
    torch.testing.assert_close(plain, want, rtol=1e-12, atol=1e-12)
