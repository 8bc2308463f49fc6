"""Grad-CAM, Grad-CAM++ and guided Grad-CAM against independent oracles: a hand computation on a tiny model
(numpy loops for the convolution, the gradient read off the fc weights), Captum's LayerGradCam and
GuidedGradCam where their hooks apply, OpenCV's bilinear resize for the upsampling, and the layer gradient of
``capture(grads=True)`` (tensor hooks, another mechanism) on every fixture model."""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FIXTURE_MODELS, assert_as_found, model_state

import convlens
from convlens import InputError
from convlens.units.gradcam import default_layer, grad_cam, guided_grad_cam

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine

# the layer the documented rule picks on each fixture model (the last map after a conv that is not pooled away)
DEFAULT = {"tiny_resnet": "layer3", "inplace_net": "conv", "bn_net": "features.6", "gray_net": "conv2",
           "twice_net": "shared"}


class Tiny(nn.Module):
    """conv (1 -> 2 maps, 3x3, valid) -> nn.ReLU -> flatten -> fc (18 -> 3): the gradient of class c's score
    with respect to the ReLU's maps is fc.weight[c] itself, position by position."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.act = nn.ReLU()
        self.fc = nn.Linear(18, 3)

    def forward(self, x):                      # (N, 1, 5, 5)
        return self.fc(torch.flatten(self.act(self.conv(x)), 1))


def _tiny():
    torch.manual_seed(3)
    model = Tiny().eval()
    x = torch.rand(2, 1, 5, 5)
    w, b = model.conv.weight.detach().numpy().astype(np.float64), model.conv.bias.detach().numpy()
    img = x.numpy().astype(np.float64)
    acts = np.zeros((2, 2, 3, 3))                                     # (N, K, 3, 3) by explicit loops
    for n in range(2):
        for k in range(2):
            for i in range(3):
                for j in range(3):
                    acts[n, k, i, j] = max(0.0, float((img[n, 0, i:i + 3, j:j + 3] * w[k, 0]).sum() + b[k]))
    return model, x, acts


def test_grad_cam_and_grad_cam_plus_plus_equal_a_hand_computation():
    model, x, acts = _tiny()
    fc = model.fc.weight.detach().numpy().astype(np.float64)
    for c in range(3):
        g = fc[c].reshape(2, 3, 3)                                    # dS_c / dA, the same for both images
        alpha = g.mean((1, 2))                                        # Selvaraju eq. 1
        want = np.maximum(0, np.einsum("k,nkij->nij", alpha, acts))   # eq. 2
        res = grad_cam(model, x, c)
        assert res.layer == "act" and res.targets.tolist() == [c, c]
        np.testing.assert_allclose(res.cam.numpy(), want, rtol=1e-5, atol=1e-6)
        # Grad-CAM++ (Chattopadhay eq. 19), element by element
        plus = np.zeros((2, 3, 3))
        for n in range(2):
            weights = np.zeros(2)
            for k in range(2):
                total = acts[n, k].sum()
                for i in range(3):
                    for j in range(3):
                        d = 2 * g[k, i, j] ** 2 + total * g[k, i, j] ** 3
                        a = g[k, i, j] ** 2 / d if g[k, i, j] != 0 else 0.0
                        weights[k] += a * max(0.0, g[k, i, j])
            plus[n] = np.maximum(0, np.einsum("k,kij->ij", weights, acts[n]))
        np.testing.assert_allclose(grad_cam(model, x, c, plus=True).cam.numpy(), plus, rtol=1e-4, atol=1e-6)


def test_upsampling_is_opencvs_bilinear_resize():
    model, x, _ = _tiny()
    res = grad_cam(model, x, 1)
    for n in range(2):  # cv2.resize takes (width, height); INTER_LINEAR uses the same half-pixel centres
        want = cv2.resize(res.cam[n].numpy(), (5, 5), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(res.upsampled[n].numpy(), want, rtol=1e-5, atol=1e-6)
    big = torch.rand(1, 1, 9, 13)
    np.testing.assert_allclose(F.interpolate(big, size=(20, 28), mode="bilinear", align_corners=False)[0, 0].numpy(),
                               cv2.resize(big[0, 0].numpy(), (28, 20), interpolation=cv2.INTER_LINEAR), atol=1e-5)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_default_layer_and_layer_gradient_equal_capture_on_every_fixture(name):
    """The value and gradient Grad-CAM weighs are the layer's own, as capture(grads=True) records them through
    tensor hooks (in-place ReLUs after the layer, a module called twice: its last call)."""
    model = FIXTURE_MODELS[name]().eval()
    torch.manual_seed(0)
    x = torch.rand(3, *model.input_shape)
    state = model_state(model)
    assert default_layer(model, x) == DEFAULT[name]
    res = grad_cam(model, x, 1)
    assert_as_found(model, state)
    with convlens.capture(model, [DEFAULT[name]], grads=True, calls="all") as acts:
        model(x)[:, 1].sum().backward()
    a, g = acts[DEFAULT[name]][-1], acts.grads[DEFAULT[name]][-1]                   # (N, K, h, w) the last call
    want = torch.relu((g.mean((2, 3))[:, :, None, None] * a).sum(1))
    torch.testing.assert_close(res.cam, want, rtol=1e-5, atol=1e-6)
    assert res.layer == DEFAULT[name] and res.upsampled.shape == (3, *x.shape[2:])
    assert (res.cam >= 0).all() and g.abs().sum() > 0 and a.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_the_default_layer_follows_a_changed_model_and_input_size(tiny_resnet):
    x = torch.rand(1, 3, 32, 32)
    assert default_layer(tiny_resnet, x) == "layer3"
    assert default_layer(tiny_resnet, torch.rand(1, 3, 4, 4)) == "layer2"   # layer3's map is 1x1 there
    tiny_resnet.layer3 = nn.MaxPool2d(2)                  # the remembered layer is gone (a pool): found again
    assert default_layer(tiny_resnet, x) == "layer2"


@pytest.mark.parametrize("name", ["tiny_resnet", "bn_net", "gray_net"])
def test_equals_captum_layer_grad_cam(name):
    from captum.attr import LayerGradCam

    model = FIXTURE_MODELS[name]().eval()
    torch.manual_seed(1)
    x = torch.rand(3, *model.input_shape)
    targets = torch.tensor([0, 2, 1])
    layer = convlens.resolve_layer(model, DEFAULT[name])[1]
    want = LayerGradCam(model, layer).attribute(x.clone(), target=targets, relu_attributions=True)[:, 0]
    torch.testing.assert_close(grad_cam(model, x, targets).cam, want, rtol=1e-5, atol=1e-6)


def test_guided_grad_cam_equals_captum_with_bilinear_upsampling(bn_net):
    from captum.attr import GuidedGradCam

    torch.manual_seed(2)
    x = torch.rand(2, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Captum: "Setting backward hooks on ReLU activations"
        want = GuidedGradCam(bn_net, bn_net.features[4]).attribute(x.clone(), target=3, interpolate_mode="bilinear")
    got = guided_grad_cam(bn_net, x, 3, layer="features.4")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert got.shape == (2, 3, 16, 16) and got.abs().sum() > 0


def test_targets_per_image_none_and_batch_independence(bn_net):
    torch.manual_seed(4)
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        predicted = bn_net(x).argmax(1)
    res = grad_cam(bn_net, x)
    assert torch.equal(res.targets, predicted)
    one = [grad_cam(bn_net, x[i:i + 1], int(predicted[i])).cam[0] for i in range(3)]
    torch.testing.assert_close(res.cam, torch.stack(one), rtol=1e-5, atol=1e-6)
    assert res[1].cam.shape == (1, 8, 8) and "Grad-CAM of 3 image(s)" in repr(res)


def test_the_demo_net_and_a_run_use_lecture_names(small_run):
    x = torch.rand(2, 1, 16, 16)
    res = grad_cam(small_run, x, "3")
    assert res.layer == "relu3" and res.cam.shape == (2, 4, 4)                 # CONV3-32,RELU before the GAP
    assert res.targets.tolist() == [small_run.class_names.index("3")] * 2


def test_errors_name_the_layer_and_list_the_conv_layers(bn_net, tmp_path):
    x = torch.rand(1, 3, 16, 16)
    state = model_state(bn_net)
    with pytest.raises(InputError, match=r"layer 'classifier.1' has no spatial output .*\(1, 32\).*Conv layers: "
                                         r"features.0, features.4"):
        grad_cam(bn_net, x, 0, layer="classifier.1")
    assert_as_found(bn_net, state)                          # the hooks are gone after the error too
    with pytest.raises(InputError, match="plus must be True"):
        grad_cam(bn_net, x, 0, plus="yes")
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))
    with pytest.raises(InputError, match="no nn.Conv2d of this model runs.*Conv layers: none"):
        grad_cam(mlp, x, 0)
    with pytest.raises(convlens.LayerNotFoundError, match="Did you mean"):
        grad_cam(bn_net, x, 0, layer="feature.4")
    res = grad_cam(bn_net, x, 0)
    back = type(res).load(res.save(tmp_path / "cam.json"))
    assert torch.equal(back.cam, res.cam) and back.layer == res.layer and back.plot().axes
    assert convlens.grad_cam is grad_cam and convlens.guided_grad_cam is guided_grad_cam
