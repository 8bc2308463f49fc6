"""capture(): recorded outputs equal a manual forward through the same sub-modules; the model is
left as found (no hooks, same modes, same requires_grad) even when the forward raises."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from convlens import LayerNotFoundError, parse
from convlens.errors import InputError
from convlens.taps import activations, capture
from conftest import FIXTURE_MODELS, hooks_left


def grammar_net():
    torch.manual_seed(0)
    return parse("CONV3-8,RELU,POOL2,CONV3-16,RELU,POOL2,FC-12,RELU,FC-5", input_shape=(3, 16, 16)).eval()


def test_grammar_net_matches_manual_prefix_forward():
    model, x = grammar_net(), torch.rand(4, 3, 16, 16)
    with capture(model, ["conv1", "relu2", "features.pool2", "fc3"]) as acts:
        out = model(x)
    feats = model.features
    names = list(dict(feats.named_children()))
    for name, k in (("conv1", 1), ("relu2", names.index("relu2") + 1), ("features.pool2", len(feats))):
        torch.testing.assert_close(acts[name], feats[:k](x), rtol=0, atol=0)
    fc_in = torch.flatten(feats(x), 1)
    torch.testing.assert_close(acts["fc3"], model.classifier[0](fc_in), rtol=0, atol=0)
    assert acts["conv1"].shape == (4, 8, 16, 16)
    assert not acts["conv1"].requires_grad
    assert acts.paths["conv1"] == "features.conv1"
    assert out.shape == (4, 5) and hooks_left(model) == 0


def test_residual_fixture_matches_block_by_block(tiny_resnet):
    m, x = tiny_resnet, torch.rand(2, 3, 32, 32)
    with capture(m, ["stem", "layer1", "layer2.conv1", "layer2.shortcut", "layer3", "fc"]) as acts:
        logits = m(x)
    h0 = F.relu(m.stem(x))
    h1 = m.layer1(h0)
    h2 = m.layer2(h1)
    h3 = m.layer3(h2)
    torch.testing.assert_close(acts["stem"], m.stem(x))
    torch.testing.assert_close(acts["layer1"], h1)
    torch.testing.assert_close(acts["layer2.conv1"], m.layer2.conv1(h1))
    torch.testing.assert_close(acts["layer2.shortcut"], m.layer2.shortcut(h1))
    torch.testing.assert_close(acts["layer3"], h3)
    torch.testing.assert_close(acts["fc"], logits)


def test_inplace_ops_after_the_layer_do_not_change_the_record(inplace_net):
    m, x = inplace_net, torch.randn(3, 3, 16, 16)
    with capture(m, ["features.0", "features.3", "conv", "features.1"]) as acts:
        m(x)
    conv0 = m.features[0](x)
    assert (conv0 < 0).any()  # the in-place ReLU would have zeroed these
    torch.testing.assert_close(acts["features.0"], conv0)
    torch.testing.assert_close(acts["features.1"], conv0.relu())
    mid = m.features(x)
    torch.testing.assert_close(acts["features.3"], m.features[:4](x))
    conv = m.conv(mid)
    assert (conv < 0).any()
    torch.testing.assert_close(acts["conv"], conv)  # not the .relu_()'d tensor


def test_module_called_twice(twice_net):
    m, x = twice_net, torch.rand(2, 3, 12, 12)
    first = m.shared(F.relu(m.stem(x)))
    second = m.shared(F.relu(first))
    with capture(m, ["shared"], calls="all") as acts:
        m(x)
    assert len(acts["shared"]) == 2
    torch.testing.assert_close(acts["shared"][0], first)
    torch.testing.assert_close(acts["shared"][1], second)
    with capture(m, ["shared"]) as acts:
        m(x)
        m(x)  # records restart at each forward of the model
    torch.testing.assert_close(acts["shared"], second)


def test_twice_grads_per_call(twice_net):
    m, x = twice_net, torch.rand(2, 3, 12, 12)
    with capture(m, ["shared"], calls="all", grads=True) as acts:
        m(x).sum().backward()
    a = F.relu(m.stem(x)).detach()
    y1 = m.shared(a)
    y2 = m.shared(F.relu(y1))
    g1, g2 = torch.autograd.grad(m.head(y2.amax((2, 3))).sum(), [y1, y2])
    torch.testing.assert_close(acts.grads["shared"][0], g1)
    torch.testing.assert_close(acts.grads["shared"][1], g2)


def test_grads_equal_autograd_even_through_inplace_relu(inplace_net):
    m, x = inplace_net, torch.randn(2, 3, 16, 16)
    with capture(m, ["features.0", "conv"], grads=True) as acts:
        m(x)[:, 1].sum().backward()
    y0 = m.features[0](x)
    mid = m.features[2:](F.relu(y0))
    y = m.conv(mid)
    score = m.fc(torch.flatten(F.relu(y), 1))[:, 1].sum()
    g0, g = torch.autograd.grad(score, [y0, y])
    torch.testing.assert_close(acts.grads["features.0"], g0)
    torch.testing.assert_close(acts.grads["conv"], g)
    torch.testing.assert_close(acts["conv"], y.detach())


def test_grads_with_frozen_parameters_and_state_restored(bn_net):
    m = bn_net
    for p in m.parameters():
        p.requires_grad_(False)
    m.features[1].weight.requires_grad_(True)  # a mix, to see each flag restored
    flags = [p.requires_grad for p in m.parameters()]
    x = torch.rand(2, 3, 16, 16)
    with capture(m, ["features.0", "classifier.1"], grads=True) as acts:
        m(x).sum().backward()
    assert acts.grads["features.0"].shape == acts["features.0"].shape
    assert acts.grads["classifier.1"].shape == (2, 32)
    assert [p.requires_grad for p in m.parameters()] == flags
    assert x.grad is None and hooks_left(m) == 0


def test_grads_need_grad_mode(tiny_resnet):
    with pytest.raises(InputError, match="grads=True"):
        with torch.no_grad(), capture(tiny_resnet, ["stem"], grads=True):
            tiny_resnet(torch.rand(1, 3, 32, 32))
    assert hooks_left(tiny_resnet) == 0


def test_unknown_name_raises_before_any_hook(tiny_resnet):
    with pytest.raises(LayerNotFoundError, match="Did you mean 'layer1'"):
        capture(tiny_resnet, ["stem", "layr1"])
    assert hooks_left(tiny_resnet) == 0
    with pytest.raises(LayerNotFoundError, match="conv6"):
        capture(grammar_net(), "conv6")


def test_bad_arguments():
    m = grammar_net()
    with pytest.raises(InputError, match="calls must be"):
        capture(m, ["conv1"], calls="first")
    with pytest.raises(InputError, match="layers must be"):
        capture(m, [])
    with pytest.raises(InputError, match="model must be"):
        capture("net", ["conv1"])
    with pytest.raises(InputError, match="stop_at_last"):
        capture(m, ["conv1"], grads=True, stop_at_last=True)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_exception_in_forward_leaves_model_as_found(name):
    m = FIXTURE_MODELS[name]().train()
    children = list(m.modules())
    children[-1].train()  # a mixed-mode model: each module's own mode must come back
    modes = [mm.training for mm in m.modules()]
    flags = [p.requires_grad for p in m.parameters()]
    leaves = [p for p, mm in m.named_modules() if p and not list(mm.children())]
    bad = torch.rand(2, 5, 7, 7)  # wrong channel count: every fixture raises
    for grads in (False, True):
        with pytest.raises(RuntimeError):
            with capture(m, leaves, grads=grads):
                m(bad)
        assert hooks_left(m) == 0
        assert [mm.training for mm in m.modules()] == modes
        assert [p.requires_grad for p in m.parameters()] == flags


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_every_leaf_capturable_and_mode_kept(name):
    m = FIXTURE_MODELS[name]().eval()
    x = torch.rand(2, *m.input_shape)
    leaves = [p for p, mm in m.named_modules() if p and not list(mm.children())]
    with capture(m, leaves, calls="all") as acts:
        out = m(x)
    last = [n for n in leaves if n in acts][-1]
    assert all(n in acts for n in leaves if not n.endswith("shortcut"))
    torch.testing.assert_close(acts[last][-1], out)  # the head is the last leaf of every fixture
    assert not m.training and hooks_left(m) == 0


def test_stop_at_last_skips_the_rest():
    m, x = grammar_net(), torch.rand(2, 3, 16, 16)
    calls = []
    m.classifier.register_forward_pre_hook(lambda *a: calls.append(1))
    with capture(m, ["conv1", "relu2"], stop_at_last=True) as acts:
        assert acts.forward(x) is None
        assert acts.stopped
        assert acts.forward(x) is None  # again: a new forward, stopped again
    assert calls == []
    torch.testing.assert_close(acts["relu2"], m.features[:5](x))
    with capture(m, ["conv1"], stop_at_last=True) as acts:
        m(x)  # plain call: the with-block swallows the stop
        raise AssertionError("not reached")
    torch.testing.assert_close(acts["conv1"], m.features.conv1(x))
    assert len(m.classifier._forward_pre_hooks) == 1  # only the test's own hook


def test_activations_helper_and_missing_layer(gray_net):
    x = torch.rand(3, 1, 20, 28)
    acts = activations(gray_net, x, ["conv2", "pool1"])
    assert acts["conv2"].shape == (3, 8, 4, 6)
    torch.testing.assert_close(acts["pool1"], gray_net.pool1(torch.tanh(gray_net.conv1(x))))
    with capture(gray_net, ["fc"], stop_at_last=True) as acts2:
        pass
    with pytest.raises(KeyError, match="did not run"):
        acts2["fc"]
    assert "conv2" in repr(acts)


def test_transform_runs_inside_the_hook(inplace_net):
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad(), capture(inplace_net, ["features.0"], transform=lambda t: t.amin((2, 3))) as acts:
        inplace_net(x)
    torch.testing.assert_close(acts["features.0"], inplace_net.features[0](x).amin((2, 3)))
    assert (acts["features.0"] < 0).any()  # taken before the in-place ReLU


def test_torchscript_layers_get_a_clear_error(tiny_resnet):
    scripted = torch.jit.script(tiny_resnet)
    with pytest.raises(InputError, match="TorchScript has no forward hooks"):
        with capture(scripted, ["layer1"]):
            pass


def test_a_run_is_tapped_through_its_pixel_model(small_run):
    from conftest import assert_as_found, model_state

    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(1))  # pixels in [0, 1]
    state = model_state(small_run.model)
    with torch.no_grad(), capture(small_run, ["conv2", "features.relu1"]) as acts:
        acts.forward(x)
    assert_as_found(small_run.model, state)
    with torch.no_grad():  # the oracle: the net's own prefix on normalized pixels
        h = small_run.preprocess(x)
        for name, module in small_run.model.features.named_children():
            h = module(h)
            if name == "relu1":
                relu1 = h.clone()
            if name == "conv2":
                break
    torch.testing.assert_close(acts["features.relu1"], relu1)
    torch.testing.assert_close(acts["conv2"], h)
    assert acts.paths == {"conv2": "features.conv2", "features.relu1": "features.relu1"}
    with pytest.raises(InputError, match="model must be a torch.nn.Module or a Run"):
        capture(object(), ["conv1"])
