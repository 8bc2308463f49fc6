"""SmoothGrad and Integrated Gradients against independent oracles: Captum's NoiseTunnel (the same seed, the
same samples per pass) over Saliency and GuidedBackprop, Captum's IntegratedGradients (its Gauss-Legendre
and Riemann rules), a brute-force Riemann sum written with plain autograd, and completeness on a model that is
linear in its input (where the integral is exact); bad input gets named errors."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from conftest import FIXTURE_MODELS, assert_as_found, model_state

import convlens
from convlens import InputError
from convlens.units.attribution import integrated_gradients, smoothgrad

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine


def _images(model, n=2, seed=0):
    """Images whose values span exactly [0, 1] (each image's range is 1: one noise std for all, as Captum takes)."""
    torch.manual_seed(seed)
    x = torch.rand(n, *model.input_shape)
    x.view(n, -1)[:, 0], x.view(n, -1)[:, 1] = 0.0, 1.0
    return x


def _noise_tunnel(cls, model, x, target, *, n, per, sigma, seed, **kwargs):
    from captum.attr import NoiseTunnel

    torch.manual_seed(seed)  # NoiseTunnel draws from the global RNG
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return NoiseTunnel(cls(model)).attribute(x.clone(), nt_type="smoothgrad", nt_samples=n, nt_samples_batch_size=per,
                                                 stdevs=sigma, target=target, **kwargs)


@pytest.mark.parametrize("name", ["tiny_resnet", "bn_net"])
def test_smoothgrad_of_the_gradient_equals_captum_noise_tunnel(name):
    from captum.attr import Saliency

    model = FIXTURE_MODELS[name]().eval()
    x = _images(model)
    rng = torch.random.get_rng_state()
    # 2 images x 10 samples in passes of 8 rows: 4 samples per image per pass (4, 4, then 2)
    got = smoothgrad(model, x, torch.tensor([1, 3]), method="gradient", n=10, noise=0.2, seed=7, batch_size=8)
    assert torch.equal(torch.random.get_rng_state(), rng)  # a private generator: the global RNG untouched
    want = _noise_tunnel(Saliency, model, x, torch.tensor([1, 3]), n=10, per=4, sigma=0.2, seed=7, abs=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_smoothgrad_of_guided_backprop_equals_captum_on_module_relus(bn_net):
    from captum.attr import GuidedBackprop

    x = _images(bn_net, 3, seed=1)
    got = smoothgrad(bn_net, x, 2, method="guided", n=6, noise=0.1, seed=3, batch_size=64)
    want = _noise_tunnel(GuidedBackprop, bn_net, x, 2, n=6, per=6, sigma=0.1, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_smoothgrad_of_the_saliency_map_equals_captum_on_one_channel(gray_net):
    """With one colour channel, the max over channels is the channel: Captum's mean |gradient| is our map."""
    from captum.attr import Saliency

    x = _images(gray_net, 2, seed=2)
    got = smoothgrad(gray_net, x, 1, n=5, noise=0.15, seed=0, batch_size=4)    # 2 samples per image per pass
    want = _noise_tunnel(Saliency, gray_net, x, 1, n=5, per=2, sigma=0.15, seed=0)[:, 0]
    assert got.shape == (2, 20, 28)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_right", "riemann_middle"])
def test_integrated_gradients_equal_captum_on_every_fixture(name, method):
    from captum.attr import IntegratedGradients

    model = FIXTURE_MODELS[name]().eval()
    x = _images(model, 2, seed=3)
    base = torch.rand_like(x) * 0.2
    state = model_state(model)
    res = integrated_gradients(model, x, torch.tensor([1, 0]), baseline=base, steps=12, method=method, batch_size=10)
    assert_as_found(model, state)
    want, delta = IntegratedGradients(model).attribute(x.clone(), base, target=torch.tensor([1, 0]), n_steps=12,
                                                       method=method, internal_batch_size=10,
                                                       return_convergence_delta=True)
    torch.testing.assert_close(res.attributions, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(res.delta, delta.float(), rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("method,alphas,weights", [
    ("riemann_right", lambda m: [k / m for k in range(1, m + 1)], lambda m: [1 / m] * m),
    ("riemann_left", lambda m: [k / m for k in range(m)], lambda m: [1 / m] * m),
    ("riemann_trapezoid", lambda m: [k / (m - 1) for k in range(m)],
     lambda m: [0.5 / (m - 1)] + [1 / (m - 1)] * (m - 2) + [0.5 / (m - 1)])])
def test_integrated_gradients_equal_a_brute_force_riemann_sum(method, alphas, weights, bn_net):
    x = _images(bn_net, 2, seed=4)
    m = 9
    total = torch.zeros_like(x)
    for a, w in zip(alphas(m), weights(m)):  # one point at a time, plain autograd, baseline 0
        p = (a * x).requires_grad_()
        total += w * torch.autograd.grad(bn_net(p)[:, 4].sum(), p)[0]
    res = integrated_gradients(bn_net, x, 4, steps=m, method=method, batch_size=5)
    torch.testing.assert_close(res.attributions, x * total, rtol=1e-4, atol=1e-6)


class ViewNet(nn.Module):
    """``x.view(n, -1)`` after a convolution: a forward that fails on channels-last tensors."""

    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).view(len(x), -1))


def test_a_forward_that_needs_contiguous_tensors_gets_the_same_maps():
    from captum.attr import IntegratedGradients, Saliency

    torch.manual_seed(6)
    model = ViewNet().eval()
    x = _images(model, 2, seed=7)
    ig = integrated_gradients(model, x, 2, steps=5, batch_size=4)
    torch.testing.assert_close(ig.attributions, IntegratedGradients(model).attribute(x.clone(), target=2, n_steps=5,
                                                                                     internal_batch_size=4))
    got = smoothgrad(model, x, 2, method="gradient", n=4, noise=0.1, seed=1, batch_size=4)
    want = _noise_tunnel(Saliency, model, x, 2, n=4, per=2, sigma=0.1, seed=1, abs=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert torch._C._len_torch_function_stack() == 0  # the forward that failed left no mode behind


class StatsNet(nn.Module):
    """Batch norms far from the identity (the fixtures' are freshly built: mean 0, var 1, weight 1), which the
    passes differentiate as affine maps: 2d with and without weights, 1d; and one without running statistics
    (batch statistics even in eval mode), left to PyTorch's own backward."""

    input_shape = (3, 8, 8)

    def __init__(self):
        super().__init__()
        torch.manual_seed(8)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 8 * 8, 6)
        self.bn, self.bn_plain, self.bn1d = nn.BatchNorm2d(4), nn.BatchNorm2d(4, affine=False), nn.BatchNorm1d(6)
        self.bn_batch = nn.BatchNorm2d(4, track_running_stats=False)
        with torch.no_grad():
            for bn in (self.bn, self.bn_plain, self.bn1d):
                bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.2, 3)
            for bn in (self.bn, self.bn1d, self.bn_batch):
                bn.weight.uniform_(-2, 2), bn.bias.uniform_(-1, 1)

    def forward(self, x):
        x = self.bn_batch(self.bn_plain(torch.relu(self.bn(self.conv(x)))))
        return self.bn1d(self.fc(torch.flatten(x, 1)))


def test_batch_norm_with_real_statistics_gets_the_same_maps():
    from captum.attr import IntegratedGradients, Saliency

    model = StatsNet().eval()
    x, t = _images(model, 3, seed=9), torch.tensor([0, 5, 2])
    state = model_state(model)
    ig = integrated_gradients(model, x, t, steps=7, batch_size=6)
    want = IntegratedGradients(model).attribute(x.clone(), target=t, n_steps=7, internal_batch_size=6)
    torch.testing.assert_close(ig.attributions, want, rtol=1e-4, atol=1e-6)
    got = smoothgrad(model, x, t, method="gradient", n=5, noise=0.2, seed=2, batch_size=6)
    want = _noise_tunnel(Saliency, model, x, t, n=5, per=2, sigma=0.2, seed=2, abs=False)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert_as_found(model, state)
    assert torch._C._len_torch_function_stack() == 0  # no mode left behind


def test_completeness_is_exact_for_a_model_linear_in_its_input():
    """S(x) = w . x + b: the gradient is constant along the path, so one step integrates it exactly."""
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).eval()
    x = torch.rand(3, 3, 8, 8)
    res = integrated_gradients(model, x, torch.tensor([0, 2, 4]), baseline=0.5, steps=1)
    with torch.no_grad():
        diff = model(x) - model(torch.full_like(x, 0.5))
    torch.testing.assert_close(res.attributions.flatten(1).sum(1), diff[[0, 1, 2], [0, 2, 4]], rtol=1e-4, atol=1e-5)
    assert res.completeness_error.max() < 1e-4
    torch.testing.assert_close(res.scores - res.baseline_scores, diff[[0, 1, 2], [0, 2, 4]], rtol=1e-5, atol=1e-6)


def test_more_steps_shrink_the_completeness_error(bn_net):
    x = _images(bn_net, 2, seed=6)
    errors = [float(integrated_gradients(bn_net, x, 5, steps=s, method="riemann_right").completeness_error.max())
              for s in (4, 64)]
    assert errors[1] < errors[0] and errors[1] < 0.05


def test_a_run_takes_noisy_copies_outside_0_1_and_targets_by_name(small_run):
    x = torch.rand(2, 1, 16, 16)
    sg = smoothgrad(small_run, x, "7", n=4, noise=0.5)        # copies far outside [0, 1]: no pixel-range error
    assert sg.shape == (2, 16, 16) and torch.isfinite(sg).all() and sg.abs().sum() > 0
    ig = integrated_gradients(small_run, x, "7", steps=4)
    assert ig.targets.tolist() == [small_run.class_names.index("7")] * 2
    with torch.no_grad():
        scores = small_run.pixel_model()(torch.cat([x, torch.zeros_like(x)]))[:, ig.targets[0]]
    torch.testing.assert_close(ig.scores, scores[:2]), torch.testing.assert_close(ig.baseline_scores, scores[2:])


def test_bad_input_gets_named_errors(bn_net, tmp_path):
    x = torch.rand(2, 3, 16, 16)
    state = model_state(bn_net)
    for kwargs, match in [(dict(n=0), "n must be a positive int"), (dict(noise=-1), "noise must be a number >= 0"),
                          (dict(method="lrp"), "method must be one of"), (dict(batch_size=0), "batch_size must be")]:
        with pytest.raises(InputError, match=match):
            smoothgrad(bn_net, x, 0, **kwargs)
    for kwargs, match in [(dict(steps=0), "steps must be a positive int"), (dict(steps=1.5), "steps must be"),
                          (dict(method="riemann_trapezoid", steps=1), "steps must be an int >= 2"),
                          (dict(baseline=torch.zeros(3, 8, 8)), r"baseline must be the images' shape.*\(3, 8, 8\)"),
                          (dict(baseline=torch.zeros(3, 3, 16, 16)), "baseline must be the images' shape"),
                          (dict(baseline="black"), "baseline must be None, a number"),
                          (dict(baseline=torch.full((3, 16, 16), float("nan"))), "baseline must be finite")]:
        with pytest.raises(InputError, match=match):
            integrated_gradients(bn_net, x, 0, **kwargs)
    with pytest.raises(InputError, match=r"target must be a class index in \[0, 9\]"):
        integrated_gradients(bn_net, x, 10)
    assert_as_found(bn_net, state)
    res = integrated_gradients(bn_net, x, 1, steps=3)
    back = type(res).load(res.save(tmp_path / "ig.json"))
    torch.testing.assert_close(back.delta, res.delta) and back.plot().axes
    assert "completeness error" in repr(res) and res[0].attributions.shape == (1, 3, 16, 16)
    assert convlens.smoothgrad is smoothgrad and convlens.integrated_gradients is integrated_gradients
