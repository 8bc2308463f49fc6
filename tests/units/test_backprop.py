"""Backprop visualizations (saliency, deconvnet, guided backprop) against independent oracles:
Captum's Saliency / Deconvolution / GuidedBackprop on nn.ReLU models, the same numbers on functional
and in-place ReLU twins (where Captum silently falls back to plain gradients), finite differences,
and a brute-force layer/unit projection written with module backward hooks. TorchScript, where no
rule reaches a ReLU: deconvnet and guided backprop refuse it naming the scripted module, saliency
equals the eager model's."""
from __future__ import annotations

import warnings
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FIXTURE_MODELS, BasicBlock, TinyResNet

import convlens
from convlens import InputError, LayerNotFoundError, ShapeError
from convlens.units.backprop import deconvnet, guided_backprop, modified_gradient, saliency, unit_maxima

METHODS = {"deconvnet": deconvnet, "guided": guided_backprop}
QUIET_JIT = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")


def _captum(name, model, x, target):
    from captum.attr import Deconvolution, GuidedBackprop, Saliency

    cls = {"saliency": Saliency, "deconvnet": Deconvolution, "guided": GuidedBackprop}[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Setting backward hooks on ReLU activations"
        out = cls(model).attribute(x.clone(), target=target)
    return out.abs().amax(1) if name == "saliency" else out


# ---- twins: one network, ReLUs written three ways ----------------------------------------------------------

class Twin(nn.Module):
    """conv-BN-ReLU-maxpool, conv-BN-ReLU, a residual conv, maxpool, fc-ReLU-fc. ``style``: "module"
    (nn.ReLU modules: Captum applies), "functional" (F.relu, torch.relu, Tensor.relu) or "inplace"
    (x.relu_(), F.relu(inplace=True), torch.relu_, nn.ReLU(inplace=True))."""

    input_shape = (3, 16, 12)

    def __init__(self, style: str = "module"):
        super().__init__()
        self.style = style
        self.conv1, self.bn1 = nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6)
        self.conv2, self.bn2 = nn.Conv2d(6, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc1, self.fc2 = nn.Linear(8 * 4 * 3, 12), nn.Linear(12, 5)
        self.relus = nn.ModuleList([nn.ReLU(inplace=style == "inplace") for _ in range(4)])

    def act(self, x, i):
        if self.style == "module":
            return self.relus[i](x)
        if self.style == "functional":
            return [F.relu, torch.relu, lambda t: t.relu(), F.relu][i](x)
        return [lambda t: t.relu_(), lambda t: F.relu(t, inplace=True), torch.relu_, self.relus[3]][i](x)

    def forward(self, x):                                   # (N, 3, 16, 12)
        x = self.pool(self.act(self.bn1(self.conv1(x)), 0))  # (N, 6, 8, 6)
        y = self.act(self.bn2(self.conv2(x)), 1)             # (N, 8, 8, 6)
        y = self.pool(self.act(self.conv3(y) + y, 2))        # (N, 8, 4, 3) residual
        return self.fc2(self.act(self.fc1(y.flatten(1)), 3))  # (N, 5)


def twins():
    torch.manual_seed(0)
    ref = Twin("module")
    for bn in (ref.bn1, ref.bn2):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2.0)
    out = {"module": ref.eval()}
    for style in ("functional", "inplace"):
        out[style] = Twin(style)
        out[style].load_state_dict(ref.state_dict())
        out[style].eval()
    return out


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.rand(4, 3, 16, 12)


TARGETS = torch.tensor([0, 3, 1, 4])


@pytest.mark.parametrize("name", ["saliency", "deconvnet", "guided"])
def test_equals_captum_on_module_relus_and_same_on_twins(name, images):
    models = twins()
    fn = saliency if name == "saliency" else METHODS[name]
    expected = _captum(name, models["module"], images, TARGETS)
    for style, model in models.items():
        got = fn(model, images, TARGETS)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7, msg=f"{name} on the {style} twin")
    assert expected.abs().sum() > 0


def test_captum_falls_back_to_the_gradient_on_functional_relus_and_we_do_not(images):
    models = twins()
    x = images.clone().requires_grad_()
    plain = torch.autograd.grad(models["functional"](x).gather(1, TARGETS[:, None]).sum(), x)[0]
    captum = _captum("guided", models["functional"], images, TARGETS)
    torch.testing.assert_close(captum, plain)  # Captum's hooks never fired
    ours = guided_backprop(models["functional"], images, TARGETS)
    assert not torch.allclose(ours, plain)
    torch.testing.assert_close(ours, _captum("guided", models["module"], images, TARGETS))


@pytest.mark.parametrize("name", ["saliency", "deconvnet", "guided"])
def test_bn_net_equals_captum(name, bn_net):
    torch.manual_seed(2)
    x = torch.rand(3, 3, 16, 16)
    fn = saliency if name == "saliency" else METHODS[name]
    torch.testing.assert_close(fn(bn_net, x, 7), _captum(name, bn_net, x, 7))


class ModuleResNet(TinyResNet):
    """tiny_resnet with nn.ReLU modules (one per call site) so that Captum applies; same weights."""

    def __init__(self):
        super().__init__()
        self.stem_relu = nn.ReLU()
        for block in (self.layer1, self.layer2, self.layer3):
            block.relu_a, block.relu_b = nn.ReLU(), nn.ReLU()
            block.forward = self._block_forward(block)

    @staticmethod
    def _block_forward(b: BasicBlock):
        return lambda x: b.relu_b(b.bn2(b.conv2(b.relu_a(b.bn1(b.conv1(x))))) + b.shortcut(x))

    def forward(self, x):
        x = self.stem_relu(self.stem(x))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


@pytest.mark.parametrize("name", ["deconvnet", "guided"])
def test_residual_functional_relus_equal_captum_on_a_module_twin(name, tiny_resnet):
    twin = ModuleResNet()
    twin.load_state_dict(tiny_resnet.state_dict())
    twin.eval()
    torch.manual_seed(3)
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(METHODS[name](tiny_resnet, x, [2, 5]), _captum(name, twin, x, [2, 5]))


# ---- saliency is the gradient ------------------------------------------------------------------------------

def test_saliency_matches_finite_differences(bn_net):
    model = bn_net.double()
    torch.manual_seed(4)
    x = torch.rand(1, 3, 16, 16, dtype=torch.float64)
    got = saliency(model, x, 5)
    assert got.dtype == torch.float64 and got.shape == (1, 16, 16)
    eps = 1e-6
    for i, j in [(0, 0), (3, 7), (8, 8), (15, 2), (11, 14)]:
        d = []
        for c in range(3):
            e = torch.zeros_like(x)
            e[0, c, i, j] = eps
            with torch.no_grad():
                d.append(((model(x + e) - model(x - e))[0, 5] / (2 * eps)).abs())
        assert got[0, i, j].item() == pytest.approx(max(d).item(), rel=1e-5, abs=1e-9)


def test_batch_images_are_independent_and_targets_per_image(bn_net):
    torch.manual_seed(5)
    x = torch.rand(3, 3, 16, 16)
    together = guided_backprop(bn_net, x, [1, 2, 3])
    for n in range(3):
        torch.testing.assert_close(together[n:n + 1], guided_backprop(bn_net, x[n:n + 1], n + 1))


def test_target_none_is_the_predicted_class_and_names_work(bn_net):
    from convlens.training.runs import PixelModel

    model = PixelModel(bn_net, torch.full((3,), 0.5), torch.full((3,), 0.25), class_names=list("abcdefghij"))
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        pred = model(x).argmax(1)
    torch.testing.assert_close(saliency(model, x, None), saliency(model, x, pred))
    torch.testing.assert_close(deconvnet(model, x, "d"), deconvnet(model, x, 3))
    torch.testing.assert_close(guided_backprop(model, x, ["a", 1, "c", 3]), guided_backprop(model, x, [0, 1, 2, 3]))
    with pytest.raises(InputError, match="not a class"):
        saliency(model, x, "z")


def test_gray_non_square_and_twice_called_models(gray_net, twice_net):
    x = torch.rand(2, 1, 20, 28)
    assert saliency(gray_net, x, 1).shape == (2, 20, 28)
    assert guided_backprop(gray_net, x, 1).shape == (2, 1, 20, 28)
    assert deconvnet(twice_net, torch.rand(1, 3, 12, 12), 0).shape == (1, 3, 12, 12)


# ---- layer / unit: the Zeiler & Fergus projection of one feature map's strongest activation -------------

def _brute_force(model: Twin, x, layer: str, unit: int, rule: str):
    """Captum-style backward hooks on the nn.ReLU modules, the full forward, then the gradient of the
    layer's output at each image's argmax of map ``unit`` (everything else in the layer zero)."""
    module = dict(model.named_modules())[layer]
    seen = []
    handles = [module.register_forward_hook(lambda m, a, out: seen.append(out))]
    if rule != "gradient":
        def hook(m, grad_in, grad_out):
            return (F.relu(grad_out[0] if rule == "deconvnet" else grad_in[0]),)
        handles += [r.register_full_backward_hook(hook) for r in model.relus]
    try:
        x = x.clone().requires_grad_()
        model(x)
        acts = seen[0]                                              # (N, C, ...)
        flat = acts[:, unit].reshape(len(x), -1)                    # (N, P)
        picked = flat.gather(1, flat.argmax(1, keepdim=True)).sum()  # one activation per image
        return torch.autograd.grad(picked, x)[0]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("layer,unit", [("conv2", 3), ("bn2", 5), ("relus.1", 5), ("fc1", 7)])
@pytest.mark.parametrize("rule", ["deconvnet", "guided"])
def test_layer_unit_equals_brute_force_on_every_twin(layer, unit, rule, images):
    models = twins()
    expected = _brute_force(models["module"], images, layer, unit, rule)
    for style, model in models.items():
        if layer.startswith("relus") and style != "module":
            with pytest.raises(InputError, match="did not run"):  # no ReLU module in a functional forward
                METHODS[rule](model, images, layer=layer, unit=unit)
            continue
        got = METHODS[rule](model, images, layer=layer, unit=unit)
        torch.testing.assert_close(got, expected, msg=f"{rule} {layer}/{unit} on the {style} twin")
    assert expected.abs().sum() > 0


def test_layer_unit_gradient_rule_and_unit_maxima(images):
    model = twins()["module"]
    got = modified_gradient(model, images, lambda a: _onehot(a, 2), rule="gradient", layer="conv2")
    torch.testing.assert_close(got, _brute_force(model, images, "conv2", 2, "gradient"))
    values, positions = unit_maxima(model, images, "conv2", 2)
    with torch.no_grad():
        maps = model.conv2(model.pool(F.relu(model.bn1(model.conv1(images)))))[:, 2]  # (N, 8, 6)
    for n in range(len(images)):
        r, c = positions[n].tolist()
        assert values[n].item() == pytest.approx(maps[n].max().item())
        assert maps[n, r, c].item() == pytest.approx(maps[n].max().item())


def _onehot(acts, unit):
    seed = torch.zeros_like(acts)
    flat = acts[:, unit].reshape(len(acts), -1)
    idx = flat.argmax(1)
    for n in range(len(acts)):
        seed[n, unit].view(-1)[idx[n]] = 1
    return seed


def test_layer_mode_uses_the_first_call_of_a_shared_module(twice_net):
    torch.manual_seed(6)
    x = torch.rand(2, 3, 12, 12)
    got = deconvnet(twice_net, x, layer="shared", unit=1)
    # oracle, step by step: the first call is shared(relu(stem(x))); go down with transposed filters
    # (autograd of each conv) and rectify the signal at the ReLU
    xx = x.clone().requires_grad_()
    pre = twice_net.stem(xx)                                        # (2, 4, 12, 12)
    a = F.relu(pre).detach().requires_grad_()
    first = twice_net.shared(a)                                     # (2, 4, 12, 12)
    (g_a,) = torch.autograd.grad(first, a, _onehot(first.detach(), 1))
    (expected,) = torch.autograd.grad(pre, xx, F.relu(g_a))
    torch.testing.assert_close(got, expected)


# ---- leaving the model as found ----------------------------------------------------------------------------

def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()}, [m.training for m in model.modules()],
            [p.requires_grad for p in model.parameters()])


def _assert_as_found(model, before):
    state, modes, flags = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
        assert not m._backward_pre_hooks
    assert torch._C._len_torch_function_stack() == 0


@pytest.mark.parametrize("call", [
    lambda m, x: saliency(m, x, 1), lambda m, x: deconvnet(m, x, 1), lambda m, x: guided_backprop(m, x, None),
    lambda m, x: guided_backprop(m, x, layer="features.4", unit=2)])
def test_model_left_as_found_also_when_the_forward_raises(call, bn_net):
    bn_net.train()
    bn_net.features[0].weight.requires_grad_(False)
    before = _state(bn_net)
    x = torch.rand(2, 3, 16, 16)
    x0 = x.clone()
    call(bn_net, x)
    _assert_as_found(bn_net, before)  # BN running statistics untouched: the call ran in eval mode
    assert torch.equal(x, x0) and not x.requires_grad
    with pytest.raises(ShapeError, match=r"failed on input of shape \(2, 3, 1, 1\)"):
        call(bn_net, torch.rand(2, 3, 1, 1))  # 1x1 pixel: the first max-pool raises, inside the forward
    _assert_as_found(bn_net, before)


def test_train_mode_model_gives_the_eval_answer(bn_net):
    x = torch.rand(2, 3, 16, 16)
    expected = guided_backprop(bn_net, x, 3)
    bn_net.train()
    torch.testing.assert_close(guided_backprop(bn_net, x, 3), expected)
    assert bn_net.training


def test_inplace_relu_keeps_in_place_semantics(inplace_net):
    from convlens.units.backprop import _ReluRule

    x = torch.rand(2, 3, 16, 16)
    for rule in ("deconvnet", "guided"):  # the forward under the rule computes exactly the model's output
        with torch.no_grad():
            expected = inplace_net(x)
        with _ReluRule(rule):
            got = inplace_net(x.clone().requires_grad_())
        torch.testing.assert_close(got, expected)
    for fn in (deconvnet, guided_backprop):
        assert fn(inplace_net, x, 2).abs().sum() > 0  # no version-counter error; x.relu_() read after


def test_errors_name_the_argument(bn_net):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InputError, match="layer and unit go together"):
        deconvnet(bn_net, x, layer="features.2")
    with pytest.raises(InputError, match="not both"):
        guided_backprop(bn_net, x, 1, layer="features.2", unit=0)
    with pytest.raises(InputError, match=r"unit must be a feature map index in \[0, 7\]"):
        deconvnet(bn_net, x, layer="features.2", unit=8)
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        deconvnet(bn_net, x, layer="feature.2", unit=0)
    with pytest.raises(InputError, match="rule must be one of"):
        modified_gradient(bn_net, x, lambda o: o, rule="lrp")
    with pytest.raises(InputError, match="a float image"):
        saliency(bn_net, torch.zeros(1, 3, 16, 16, dtype=torch.int64), 0)
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        saliency(bn_net, torch.rand(16, 16), 0)
    with pytest.raises(InputError, match=r"target must be a class index in \[0, 9\]"):
        saliency(bn_net, x, 10)
    assert convlens.saliency is saliency and convlens.guided_backprop is guided_backprop


# ---- TorchScript: no rule reaches a ReLU inside it, so deconvnet and guided backprop refuse it -------------

@QUIET_JIT
def test_the_relu_rule_never_reaches_torchscript_code(bn_net):
    """Why they refuse: under the rule, a scripted forward gives the plain gradient, bit for bit."""
    from convlens.units.backprop import _ReluRule

    scripted = torch.jit.script(bn_net)
    x = torch.rand(2, 3, 16, 16, requires_grad=True)
    with _ReluRule("guided"):
        ruled = torch.autograd.grad(scripted(x)[:, 3].sum(), x)[0]
    plain = torch.autograd.grad(scripted(x)[:, 3].sum(), x)[0]
    assert torch.equal(ruled, plain)
    assert not torch.allclose(guided_backprop(bn_net, x.detach(), 3), plain)  # the eager model gets the rule


@QUIET_JIT
@pytest.mark.parametrize("name", ["deconvnet", "guided"])
def test_torchscript_is_refused_naming_the_module_and_the_eager_twin_equals_captum(name, images):
    from convlens.training.runs import PixelModel

    models = twins()
    mean, std = torch.full((3,), 0.5), torch.full((3,), 0.25)
    traced = torch.jit.trace(models["module"], images)
    cases = [("the model is TorchScript", traced),
             ("the model is TorchScript", PixelModel(traced, mean, std)),  # a Run's whole net: the user's model
             ("the model's module 'body' is TorchScript", nn.Sequential(OrderedDict(body=traced)))]
    for where, model in cases:
        with pytest.raises(InputError, match=f"{where}, and the '{name}' ReLU rule never runs") as err:
            METHODS[name](model, images, TARGETS)
        assert "eager nn.Module" in str(err.value) and "load_run(weights_file, arch=" in str(err.value)
    expected = _captum(name, PixelModel(models["module"], mean, std), images, TARGETS)
    torch.testing.assert_close(METHODS[name](PixelModel(models["functional"], mean, std), images, TARGETS), expected)
    with pytest.raises(InputError, match="TorchScript has no forward hooks"):  # a scripted layer to seed from
        modified_gradient(nn.Sequential(OrderedDict(body=traced)), images, lambda a: a, layer="body")


@QUIET_JIT
def test_runs_loaded_from_torchscript_files_refuse_the_rules_and_keep_saliency(bn_net, tmp_path):
    from convlens.training.runs import PixelModel

    eager = PixelModel(bn_net, torch.full((3,), 0.5), torch.full((3,), 0.25))
    x = torch.rand(3, 3, 16, 16)
    torch.jit.trace(eager, x).save(str(tmp_path / "model.pt"))
    loaded = convlens.load_run(tmp_path / "model.pt", input_shape=(3, 16, 16))
    for fn in (deconvnet, guided_backprop):
        with pytest.raises(InputError, match="the model is TorchScript.*torch.export.save"):
            fn(loaded, x, 1)
    torch.testing.assert_close(saliency(loaded, x, 1), saliency(eager, x, 1))


@QUIET_JIT
@pytest.mark.parametrize("fixture", sorted(FIXTURE_MODELS))
def test_every_method_on_torchscript_gives_the_eager_answer_or_refuses(fixture):
    """The property that would have caught the silent fallback, over every fixture model."""
    eager = FIXTURE_MODELS[fixture]().eval()
    x = torch.rand(2, *eager.input_shape)
    traced = torch.jit.trace(eager, x)
    torch.testing.assert_close(saliency(traced, x, 1), saliency(eager, x, 1))
    for fn in (deconvnet, guided_backprop):
        try:
            got = fn(traced, x, 1)
        except InputError as err:
            assert "is TorchScript" in str(err)
        else:
            torch.testing.assert_close(got, fn(eager, x, 1))


# ---- Zeiler & Fergus Fig. 2: projections of the top-k patches ----------------------------------------------

def test_top_projections_are_the_layer_unit_projections_cropped_like_the_patches(bn_net):
    from convlens.plots.backprop import deconv_top_figure
    from convlens.units.backprop import top_projections
    from convlens.units.patches import top_patches

    torch.manual_seed(7)
    data = torch.rand(24, 3, 16, 16)
    top = top_patches(bn_net, data, ["features.2", "features.6"], k=4, progress=False)
    for layer, unit in [("features.2", 3), ("features.6", 5)]:
        r = top.row(layer, unit)
        rows = top.indices[layer][r]
        crops = top_projections(bn_net, top, data, layer, unit, pad=False)
        full = deconvnet(bn_net, data[rows], layer=layer, unit=unit)   # seeds at the argmax: the ranked position
        for crop, (t, left, b, right), patch, img in zip(crops, top.boxes[layer][r], top.crops(layer, unit, data),
                                                       full):
            assert crop.shape == patch.shape
            torch.testing.assert_close(crop, img[:, t:b, left:right])
        padded = top_projections(bn_net, top, data, layer, unit, rule="guided")
        assert [p.shape for p in padded] == [p.shape for p in top.crops(layer, unit, data, pad=True)]
    by_layer = [(layer, [(u, top_projections(bn_net, top, data, layer, u), top.crops(layer, u, data, pad=True))
                         for u in (0, 1)]) for layer in ("features.2", "features.6")]
    assert len(deconv_top_figure(by_layer, k=top.k).axes) == 4               # 2 layers x 2 units
