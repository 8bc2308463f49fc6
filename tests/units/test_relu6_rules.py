"""Deconvnet and guided backprop at ReLU6 and other clamps (the rule of convlens/units/backprop.py's
docstring), against oracles that never touch convlens's TorchFunctionMode: a table worked out by hand
at every kink, a brute-force backward written layer by layer in numpy (conv adjoints as loops over
taps, BatchNorm, max-pool switches, global pooling, TF "SAME" padding, depthwise convolutions), and,
on EfficientNet-Lite0, a copy whose nn.ReLU6 modules are swapped for a hand-written autograd.Function."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from conftest import assert_as_found, model_state
from convlens.arch.efficientnet import tf_same_padding
from convlens.units.backprop import deconvnet, guided_backprop, modified_gradient, saliency

RULES = ("gradient", "deconvnet", "guided")
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine


# ---- 1. the rule by hand, one element per case -------------------------------------------------------------
X = torch.tensor([-1.0, 0.0, 3.0, 6.0, 7.0, 2.0, 5.0, -3.0])    # below, at 0, inside, at 6, above ...
W = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])   # the incoming signal, both signs
INSIDE = torch.tensor([0.0, 0, 1, 0, 0, 1, 1, 0])              # 0 < x < 6 strictly
AT_KINK = torch.tensor([0.0, 1, 0, 1, 0, 0, 0, 0])             # x == 0 or x == 6
RELU6_SPELLINGS = {  # name -> (call, PyTorch's own derivative at the kinks)
    "nn.ReLU6": (nn.ReLU6(), 0), "nn.ReLU6(inplace)": (nn.ReLU6(inplace=True), 0),
    "F.relu6": (F.relu6, 0), "F.relu6(inplace)": (lambda t: F.relu6(t, inplace=True), 0),
    "F.hardtanh(0, 6)": (lambda t: F.hardtanh(t, 0.0, 6.0), 0), "F.hardtanh_": (lambda t: F.hardtanh_(t, 0.0, 6.0), 0),
    "nn.Hardtanh(0, 6)": (nn.Hardtanh(0, 6), 0), "torch.clamp": (lambda t: torch.clamp(t, 0, 6), 1),
    "Tensor.clamp": (lambda t: t.clamp(min=0, max=6), 1), "Tensor.clamp_": (lambda t: t.clamp_(0, 6), 1),
    "torch.clip": (lambda t: torch.clip(t, 0.0, 6.0), 1), "torch.clamp_": (lambda t: torch.clamp_(t, 0, 6), 1),
    "Tensor.clip_": (lambda t: t.clip_(0, 6), 1),
}


class OneOp(nn.Module):
    """score = sum(W * act(x)): the signal arriving at the op is W."""

    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):                              # (1, 1, 1, 8)
        y = self.act(x.reshape(1, 8) * 1.0)            # * 1.0: a non-leaf, so in-place ops are allowed
        return (y * W).sum(1, keepdim=True)            # (1, 1)


def _rules(act):
    x = X.reshape(1, 1, 1, 8)
    return {r: modified_gradient(OneOp(act), x, torch.ones_like, rule=r).flatten() for r in RULES}


@pytest.mark.parametrize("name", RELU6_SPELLINGS)
def test_relu6_rule_by_hand_in_every_spelling(name):
    act, kink = RELU6_SPELLINGS[name]
    got = _rules(act)
    torch.testing.assert_close(got["gradient"], W * (INSIDE + kink * AT_KINK), rtol=0, atol=0)
    torch.testing.assert_close(got["deconvnet"], W.clamp_min(0), rtol=0, atol=0)  # the forward ignored
    torch.testing.assert_close(got["guided"], W.clamp_min(0) * INSIDE, rtol=0, atol=0)  # 0 at both kinks


def test_clamp_without_an_upper_bound_is_a_relu():
    relu = _rules(F.relu)
    for act in (lambda t: t.clamp(min=0), lambda t: torch.clamp_min(t, 0), lambda t: t.clamp_min_(0.0),
                lambda t: t.clamp(0, float("inf"))):
        got = _rules(act)
        torch.testing.assert_close(got["deconvnet"], relu["deconvnet"], rtol=0, atol=0)
        torch.testing.assert_close(got["guided"], relu["guided"], rtol=0, atol=0)
        torch.testing.assert_close(got["guided"], W.clamp_min(0) * (X > 0), rtol=0, atol=0)


@pytest.mark.parametrize("act", [F.hardtanh, nn.Hardtanh(), lambda t: t.clamp(-1, 1), lambda t: t.clamp_max(6),
                                 lambda t: t.clamp(1, 6), lambda t: t.clamp(torch.tensor(0.0), torch.tensor(6.0)),
                                 lambda t: F.leaky_relu(t, 0.1)],
                         ids=["hardtanh", "nn.Hardtanh", "clamp(-1,1)", "clamp_max", "clamp(1,6)", "tensor-bounds",
                              "leaky_relu"])
def test_clamps_that_are_not_rectifiers_keep_their_plain_gradient(act):
    got = _rules(act)
    x = X.reshape(1, 8).clone().requires_grad_()
    (plain,) = torch.autograd.grad((act(x * 1.0) * W).sum(), x)
    for r in RULES:
        torch.testing.assert_close(got[r], plain.flatten(), rtol=0, atol=0)


# ---- 2. a small ReLU6 network with depthwise convolutions against a numpy backward ---------------------------
class DepthwiseNet(nn.Module):
    """A TF-SAME stride-2 stem, an MBConv-like block (depthwise 3x3, 1x1 project, residual), a hardtanh(-3, 3)
    that is no rectifier, a TF-SAME stride-2 depthwise 5x5, max pooling, global average pooling, FC.
    ``style`` spells the three ReLU6s: "module", "functional" or "inplace"."""

    input_shape = (3, 15, 14)

    def __init__(self, style: str = "module"):
        super().__init__()
        self.style = style
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8)
        self.dw, self.bn1 = nn.Conv2d(8, 8, 3, 1, 1, groups=8, bias=False), nn.BatchNorm2d(8)
        self.project, self.bn2 = nn.Conv2d(8, 8, 1, bias=False), nn.BatchNorm2d(8)
        self.dw2, self.bn3 = nn.Conv2d(8, 8, 5, 2, groups=8, bias=True), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.relu6 = nn.ModuleList([nn.ReLU6(inplace=style == "inplace") for _ in range(3)])

    def act(self, x, i):
        if self.style == "module":
            return self.relu6[i](x)
        if self.style == "functional":
            return [F.relu6, lambda t: F.hardtanh(t, 0.0, 6.0), lambda t: torch.clamp(t, 0, 6)][i](x)
        return [lambda t: F.relu6(t, inplace=True), self.relu6[1], lambda t: t.clamp_(min=0, max=6)][i](x)

    @staticmethod
    def same(conv, x):
        return conv(F.pad(x, tf_same_padding(tuple(x.shape[-2:]), conv.kernel_size, conv.stride)))

    def forward(self, x):                                        # (N, 3, 15, 14)
        a = self.act(self.bn0(self.same(self.stem, x)), 0)       # (N, 8, 8, 7)
        y = self.act(self.bn1(self.dw(a)), 1)                    # (N, 8, 8, 7)
        z = F.hardtanh(self.bn2(self.project(y)) + a, -3.0, 3.0)
        z = self.act(self.bn3(self.same(self.dw2, z)), 2)        # (N, 8, 4, 4)
        z = F.max_pool2d(z, 2)                                   # (N, 8, 2, 2)
        return self.fc(z.mean((2, 3)))                           # (N, 5)


def depthwise_net(style: str = "module") -> DepthwiseNet:
    """Seeded weights; BatchNorm statistics from a calibration batch, then a scale that puts about a sixth
    of every ReLU6 input above 6 and two fifths below 0."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = DepthwiseNet(style)
        calib = torch.rand(16, *net.input_shape)
    for bn in (net.bn0, net.bn1, net.bn2, net.bn3):
        bn.momentum = 1.0
    with torch.no_grad():
        net.train()(calib)
        for bn in (net.bn0, net.bn1, net.bn2, net.bn3):
            bn.weight.fill_(5.0)
            bn.bias.fill_(1.0)
    return net.eval()


def conv_adjoint(g, w, stride, pad, groups, in_hw):
    """The transpose of conv2d(x, w, stride, padding=pad (top, bottom, left, right), groups) applied to g,
    as a loop over output positions and taps: (N, C_out, h, w) -> (N, C_in, H, W)."""
    n, c_out, oh, ow = g.shape
    _, cpg, kh, kw = w.shape                                     # (C_out, C_in / groups, kh, kw)
    opg = c_out // groups
    top, bottom, left, right = pad
    out = np.zeros((n, cpg * groups, in_hw[0] + top + bottom, in_hw[1] + left + right))
    for gi in range(groups):
        wg = w[gi * opg:(gi + 1) * opg]                          # (opg, cpg, kh, kw)
        gg = g[:, gi * opg:(gi + 1) * opg]                       # (N, opg, oh, ow)
        for i in range(oh):
            for j in range(ow):
                for a in range(kh):
                    for b in range(kw):
                        tap = gg[:, :, i, j] @ wg[:, :, a, b]                # (N, cpg)
                        out[:, gi * cpg:(gi + 1) * cpg, i * stride + a, j * stride + b] += tap
    return out[:, :, top:top + in_hw[0], left:left + in_hw[1]]


def bn_scale(bn):
    return (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()[None, :, None, None]


def rule(g, pre, name):
    """The rule at a ReLU6 whose forward input was ``pre`` (module docstring of backprop.py)."""
    inside = (pre > 0) & (pre < 6)
    return {"gradient": g * inside, "deconvnet": np.maximum(g, 0), "guided": np.maximum(g, 0) * inside}[name]


def tf_pad(x, conv):
    left, right, top, bottom = tf_same_padding(tuple(x.shape[-2:]), conv.kernel_size, conv.stride)
    return top, bottom, left, right


def brute_force(net, x, name, seed=None, layer=None, unit=None):
    """The input map under rule ``name``, backward written by hand; seed: one-hot class scores (N, 5), or
    layer "dw"/``unit``: 1 at the first argmax of that depthwise output map, all else 0."""
    with torch.no_grad():  # the forward, the pre-activations kept (the model's own layers, no hooks)
        s0 = net.same(net.stem, x)
        p0 = net.bn0(s0)
        a = p0.clamp(0, 6)
        d = net.dw(a)
        p1 = net.bn1(d)
        y = p1.clamp(0, 6)
        h = net.bn2(net.project(y)) + a
        z = h.clamp(-3, 3)
        p2 = net.bn3(net.same(net.dw2, z))
        r = p2.clamp(0, 6)
        pooled, switches = F.max_pool2d(r, 2, return_indices=True)
    P = {k: v.double().numpy() for k, v in dict(p0=p0, p1=p1, h=h, p2=p2, r=r).items()}
    weights = {k: getattr(net, k).weight.detach().double().numpy() for k in ("stem", "dw", "project", "dw2")}
    pads = {"stem": tf_pad(x, net.stem), "dw": (1, 1, 1, 1), "dw2": tf_pad(z, net.dw2)}
    n = len(x)
    if layer is None:
        g = seed @ net.fc.weight.detach().double().numpy()        # (N, 8)
        g = np.repeat(np.repeat(g[:, :, None, None] / 4, 2, 2), 2, 3)  # mean over 2x2: (N, 8, 2, 2)
        gr = np.zeros(P["r"].shape).reshape(n, 8, -1)             # max pool: to the switches
        np.put_along_axis(gr, switches.reshape(n, 8, -1).numpy(), g.reshape(n, 8, -1), axis=2)
        g = rule(gr.reshape(P["r"].shape), P["p2"], name) * bn_scale(net.bn3)
        g = conv_adjoint(g, weights["dw2"], 2, pads["dw2"], 8, z.shape[-2:])
        g = g * ((P["h"] > -3) & (P["h"] < 3))                    # hardtanh(-3, 3): plain in every rule
        g_a = g.copy()                                            # the residual branch
        g = conv_adjoint(g * bn_scale(net.bn2), weights["project"], 1, (0, 0, 0, 0), 1, y.shape[-2:])
        g = rule(g, P["p1"], name) * bn_scale(net.bn1)
        g = conv_adjoint(g, weights["dw"], 1, pads["dw"], 8, a.shape[-2:]) + g_a
    else:
        assert layer == "dw"
        flat = d[:, unit].reshape(n, -1).argmax(1).numpy()        # first argmax per image
        g = np.zeros(d.shape)
        g[np.arange(n), unit, flat // d.shape[3], flat % d.shape[3]] = 1
        g = conv_adjoint(g, weights["dw"], 1, pads["dw"], 8, a.shape[-2:])
    g = rule(g, P["p0"], name) * bn_scale(net.bn0)
    return conv_adjoint(g, weights["stem"], 2, pads["stem"], 1, x.shape[-2:])  # (N, 3, H, W)


@pytest.fixture(scope="module")
def images():
    return torch.rand(3, *DepthwiseNet.input_shape, generator=torch.Generator().manual_seed(1))


def test_the_fixture_exercises_every_region_of_every_relu6(images):
    net = depthwise_net()
    with torch.no_grad():
        a = net.bn0(net.same(net.stem, images))
        p1 = net.bn1(net.dw(a.clamp(0, 6)))
    for pre in (a, p1):
        share = [float((pre < 0).float().mean()), float(((pre > 0) & (pre < 6)).float().mean()),
                 float((pre > 6).float().mean())]
        assert min(share) > 0.1, share


@pytest.mark.parametrize("style", ["module", "functional", "inplace"])
@pytest.mark.parametrize("name", RULES)
def test_class_projection_equals_the_brute_force_backward(style, name, images):
    net = depthwise_net(style)
    targets = [0, 3, 4]
    seed = np.eye(5)[targets]
    state = model_state(net)
    got = modified_gradient(net, images, lambda out: F.one_hot(torch.tensor(targets), 5).to(out.dtype), rule=name)
    assert_as_found(net, state)
    want = brute_force(net, images, name, seed=seed)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
    if name != "gradient":
        public = {"deconvnet": deconvnet, "guided": guided_backprop}[name](net, images, target=targets)
        torch.testing.assert_close(public, got, rtol=0, atol=0)


@pytest.mark.parametrize("style", ["module", "inplace"])
@pytest.mark.parametrize("name", ["deconvnet", "guided"])
def test_layer_unit_projection_equals_the_brute_force_backward(style, name, images):
    net = depthwise_net(style)
    got = {"deconvnet": deconvnet, "guided": guided_backprop}[name](net, images, layer="dw", unit=5)
    want = brute_force(net, images, name, layer="dw", unit=5)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_the_three_rules_differ_and_saliency_is_the_plain_gradient(images):
    net = depthwise_net("functional")
    seed = np.eye(5)[[1, 1, 2]]
    maps = {r: brute_force(net, images, r, seed=seed) for r in RULES}
    for a, b in (("gradient", "deconvnet"), ("gradient", "guided"), ("deconvnet", "guided")):
        assert np.abs(maps[a] - maps[b]).max() > 0.1 * np.abs(maps[a]).max(), (a, b)
    got = saliency(net, images, target=[1, 1, 2])
    np.testing.assert_allclose(got.double().numpy(), np.abs(maps["gradient"]).max(1), rtol=1e-4,
                               atol=1e-5 * np.abs(maps["gradient"]).max())


# ---- 3. EfficientNet-Lite0 (random weights, 64x64) ------------------------------------------------------------
class _HandReLU6(torch.autograd.Function):
    """The rule written once more, for nn.ReLU6 modules only (the oracle for EfficientNet)."""

    @staticmethod
    def forward(ctx, x, name):
        ctx.save_for_backward(x)
        ctx.name = name
        return torch.minimum(torch.maximum(x, torch.zeros_like(x)), torch.full_like(x, 6.0))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        inside = ((x > 0) & (x < 6)).to(g.dtype)
        return (torch.where(g > 0, g, torch.zeros_like(g)) * (inside if ctx.name == "guided" else 1.0)), None


class _HandModule(nn.Module):
    def __init__(self, name):
        super().__init__()
        self.name = name

    def forward(self, x):
        return _HandReLU6.apply(x, self.name)


def _swapped(net, name):
    twin = copy.deepcopy(net).eval()
    for module in list(twin.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU6):
                setattr(module, child_name, _HandModule(name))
    return twin


def _autograd(net, x, seed_fn, layer=None):
    x = x.clone().requires_grad_()
    if layer is None:
        out = net(x)
    else:
        seen = []
        handle = dict(net.named_modules())[layer].register_forward_hook(lambda m, a, o: seen.append(o))
        try:
            net(x)
        finally:
            handle.remove()
        out = seen[0]
    (grad,) = torch.autograd.grad(out, x, seed_fn(out.detach()))
    return grad


@pytest.fixture(scope="module")
def lite():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = convlens.create("efficientnet_lite0", num_classes=10, input_shape=(3, 64, 64))
        x = torch.rand(2, 3, 64, 64)
    return net, x


@pytest.mark.parametrize("name", ["deconvnet", "guided"])
def test_efficientnet_lite0_maps_equal_a_hand_written_relu6_twin_and_leave_it_as_found(name, lite):
    net, x = lite
    net.train()  # the method runs in eval mode and gives the training mode back
    state = model_state(net)
    method = {"deconvnet": deconvnet, "guided": guided_backprop}[name]
    by_class = method(net, x, target=[3, 7])
    by_unit = method(net, x, layer="_blocks.3._depthwise_conv", unit=5)
    assert_as_found(net, state)
    twin = _swapped(net, name)
    want_class = _autograd(twin, x, lambda out: F.one_hot(torch.tensor([3, 7]), 10).to(out.dtype))

    def unit_seed(acts):                                         # 1 at each image's first argmax of unit 5
        flat = acts[:, 5].reshape(len(acts), -1).argmax(1)
        seed = torch.zeros_like(acts).reshape(len(acts), acts.shape[1], -1)
        seed[torch.arange(len(acts)), 5, flat] = 1
        return seed.reshape(acts.shape)

    want_unit = _autograd(twin, x, unit_seed, layer="_blocks.3._depthwise_conv")
    for got, want in ((by_class, want_class), (by_unit, want_unit)):
        assert got.shape == (2, 3, 64, 64) and torch.isfinite(got).all() and got.abs().amax() > 0
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))
    plain = modified_gradient(net, x, lambda out: F.one_hot(torch.tensor([3, 7]), 10).to(out.dtype))
    assert (by_class - plain).abs().max() > 0.1 * plain.abs().max()  # the rule did reach the ReLU6s
    net.eval()


def test_efficientnet_deconvnet_of_a_class_does_not_depend_on_the_image(lite):
    # no max pooling, eval-mode BatchNorm: nothing of the forward is left in the deconvnet's backward
    net, x = lite
    a = deconvnet(net, x[:1], target=4)
    b = deconvnet(net, torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(9)), target=4)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6 * float(a.abs().max()))
    g1, g2 = guided_backprop(net, x[:1], target=4), guided_backprop(net, x[1:], target=4)
    assert (g1 - g2).abs().max() > 0.1 * g1.abs().max()  # guided backprop does
