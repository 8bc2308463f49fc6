"""Images that are accepted but wrong get a ConvLensError naming what was expected and what was given,
at every public entry point that takes images (they all go through ``convlens.inputs.as_images``):
0-255 floats where [0, 1] pixels are documented (a Run), NaN/inf, a channel count other than the
model's (a 1-channel image broadcast by a Run's normalization, an HWC tensor), an empty batch, and the
model's own RuntimeError on an input it cannot take. Valid inputs keep working: 1-channel and
non-square images, float64 models, numpy arrays, single images; the oracle there is torch's own
autograd gradient on the same model."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

import convlens
from convlens import ConvLensError, InputError, ShapeError
from convlens.training.runs import PixelModel
from convlens.inputs import as_images, forward_errors

# every public method taking images, with a layer for invert: a module path of the fixtures, a lecture name of a Run
CALLS = {
    "saliency": lambda m, x, layer: convlens.saliency(m, x, 0),
    "deconvnet": lambda m, x, layer: convlens.deconvnet(m, x, 0),
    "guided_backprop": lambda m, x, layer: convlens.guided_backprop(m, x, 0),
    "segment": lambda m, x, layer: convlens.segment(m, x, 0),
    "occlusion": lambda m, x, layer: convlens.occlusion(m, x, 0, window=4, stride=4),
    "invert": lambda m, x, layer: convlens.invert(m, x, layer, steps=1),
    "adversarial": lambda m, x, layer: convlens.adversarial(m, x, 0, method="fgsm"),
}


def _pixel_model(net: nn.Module) -> PixelModel:
    """A Run's pixel model around ``net`` (3 channels): takes [0, 1] pixels and normalizes them."""
    return PixelModel(net, torch.full((3,), 0.5), torch.full((3,), 0.25), input_shape=net.input_shape)


def _message(call, model, x, layer, error=InputError) -> str:
    with pytest.raises(error) as err:
        call(model, x, layer)
    return str(err.value)


# ---- [0, 1] pixels where documented ----------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_run_refuses_0_255_pixels_saying_divide_by_255(name, small_run):
    x = torch.rand(2, *small_run.input_shape) * 255
    msg = _message(CALLS[name], small_run, x, "conv1")
    assert "pixels in [0, 1]" in msg and "got 'values in [" in msg and "divide by 255" in msg


def test_a_run_refuses_normalized_pixels_naming_the_range(small_run):
    x = small_run.preprocess(torch.rand(2, *small_run.input_shape))  # normalized twice if fed to the Run
    msg = _message(CALLS["saliency"], small_run, x, None)
    lo, hi = float(x.min()), float(x.max())
    assert f"values in [{lo:.4g}, {hi:.4g}]" in msg and "divide by 255" not in msg


def test_a_bare_model_takes_any_range(bn_net):
    x = torch.rand(1, 3, 16, 16) * 255  # no documented range: inputs are what the module takes
    assert convlens.saliency(bn_net, x, 0).shape == (1, 16, 16)


# ---- NaN, inf, empty batches, wrong kinds ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALLS))
def test_nan_and_inf_are_refused_with_their_count(name, bn_net):
    x = torch.rand(2, 3, 16, 16)
    x[0, 0, :2, 0], x[1, 2, 3, 3] = float("nan"), float("inf")
    msg = _message(CALLS[name], bn_net, x, "features.0")
    assert "x must be finite (no NaN or inf); got '2 NaN and 1 inf values'" in msg


@pytest.mark.parametrize("name", sorted(CALLS))
def test_an_empty_batch_is_refused_naming_its_shape(name, bn_net):
    msg = _message(CALLS[name], bn_net, torch.rand(0, 3, 16, 16), "features.0")
    assert "at least one image" in msg and "(0, 3, 16, 16)" in msg


def test_wrong_kinds_and_ranks_name_the_expected_layout(bn_net):
    assert "(16, 16)" in _message(CALLS["saliency"], bn_net, torch.rand(16, 16), None)
    assert "(1, 1, 3, 16, 16)" in _message(CALLS["saliency"], bn_net, torch.rand(1, 1, 3, 16, 16), None)
    msg = _message(CALLS["saliency"], bn_net, np.zeros((3, 16, 16), np.uint8), None)
    assert "a float image (C, H, W) or a batch (N, C, H, W)" in msg and "x.float() / 255" in msg


# ---- channels: the model's input shape, else its first conv ------------------------------------------------

@pytest.mark.parametrize("name", sorted(CALLS))
def test_a_1_channel_image_is_not_broadcast_to_a_3_channel_run(name, bn_net):
    pm = _pixel_model(bn_net)  # its normalization would broadcast (N, 1, H, W) to 3 channels
    msg = _message(CALLS[name], pm, torch.rand(2, 1, 16, 16), "net.features.0")
    assert "3-channel images" in msg and "the model's input shape (3, 16, 16)" in msg and "got (2, 1, 16, 16)" in msg
    assert "x.expand(-1, 3, -1, -1)" in msg


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.parametrize("shape,order", [((16, 16, 3), "2, 0, 1"), ((2, 16, 16, 3), "0, 3, 1, 2")])
def test_hwc_images_get_a_permute_hint(name, shape, order, bn_net):
    msg = _message(CALLS[name], bn_net, torch.rand(shape), "features.0")
    assert f"got {shape}" in msg and "3-channel images" in msg
    assert f"looks like HWC (channels last): permute to CHW with x.permute({order})" in msg


def test_a_run_names_its_input_shape(small_run):
    msg = _message(CALLS["saliency"], small_run, torch.rand(2, 3, 16, 16), None)
    assert "1-channel images" in msg and f"the model's input shape {small_run.input_shape}" in msg


def test_a_model_without_input_shape_is_checked_against_its_first_conv():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    class Normalized(nn.Module):  # a user's own normalization would broadcast a gray image
        def __init__(self):
            super().__init__()
            self.net, self.mean = net, torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1)

        def forward(self, x):
            return self.net(x - self.mean)

    msg = _message(CALLS["saliency"], Normalized(), torch.rand(1, 1, 8, 8), None)
    assert "3-channel images" in msg and "the model's first conv 'net.0' takes 3 channels" in msg
    assert "looks like HWC" in _message(CALLS["saliency"], net, torch.rand(8, 8, 3), None)


# ---- the model's own error at the first forward ------------------------------------------------------------

@pytest.mark.parametrize("name", ["saliency", "deconvnet", "guided_backprop", "segment", "invert", "adversarial"])
def test_the_models_own_runtime_error_names_the_input_and_the_expected_shape(name, bn_net):
    msg = _message(CALLS[name], bn_net, torch.rand(2, 3, 8, 8), "classifier.1", error=ShapeError)
    assert msg.startswith("the model (BatchNormNet) failed on input of shape (2, 3, 8, 8)")
    assert "(expected: the model's input shape (3, 16, 16))" in msg and "mat1 and mat2" in msg


def test_forward_errors_keeps_convlens_errors_and_out_of_memory(bn_net):
    x = torch.rand(1, 3, 16, 16)
    for err in (ShapeError("this network expects input of shape (N, 3, 16, 16)"), torch.OutOfMemoryError("oom")):
        with pytest.raises(type(err)) as got:
            with forward_errors(bn_net, x):
                raise err
        assert got.value is err
    with pytest.raises(ShapeError, match=r"failed on input of shape \(1, 3, 16, 16\): boom") as got:
        with forward_errors(nn.Identity(), x):
            raise RuntimeError("boom\nsecond line")
    assert isinstance(got.value.__cause__, RuntimeError)


def test_every_refusal_is_a_convlens_error(bn_net):
    for x in (torch.rand(0, 3, 16, 16), torch.rand(16, 16, 3), torch.full((1, 3, 16, 16), float("nan"))):
        with pytest.raises(ConvLensError):
            as_images(x, bn_net)


# ---- valid inputs keep working ------------------------------------------------------------------------------

def _gradient_oracle(model: nn.Module, x: torch.Tensor, target: int) -> torch.Tensor:
    """max_c |dS/dx| by plain autograd, (N, H, W)."""
    x = x.clone().requires_grad_()
    (grad,) = torch.autograd.grad(model(x)[:, target].sum(), x)
    return grad.abs().amax(1)


def test_gray_non_square_numpy_and_single_images_work(gray_net):
    torch.manual_seed(1)
    x = torch.rand(2, 1, 20, 28)                                        # 1 channel, non-square
    expected = _gradient_oracle(gray_net, x, 2)
    torch.testing.assert_close(convlens.saliency(gray_net, x, 2), expected)
    torch.testing.assert_close(convlens.saliency(gray_net, x.numpy(), 2), expected)
    torch.testing.assert_close(convlens.saliency(gray_net, x[1], 2), expected[1:])
    assert convlens.occlusion(gray_net, x[0], 2, window=5, stride=5).p_target.shape == (4, 5)
    assert convlens.segment(gray_net, x, 2).shape == (2, 20, 28)


def test_float64_models_and_other_sizes_than_the_input_shape_work(tiny_resnet):
    model = tiny_resnet.double()                                         # its input_shape is (3, 32, 32)
    x = torch.rand(2, 3, 16, 24, dtype=torch.float64)                    # global pooling: any size works
    got = convlens.guided_backprop(model, x.float(), 1)
    assert got.dtype == torch.float64 and got.shape == (2, 3, 16, 24)
    torch.testing.assert_close(convlens.saliency(model, x, 1), _gradient_oracle(model, x, 1))


def test_a_run_takes_its_own_test_images(small_run):
    from convlens.training.evaluate import run_test_data

    x = run_test_data(small_run).images[:3]                              # [0, 1] pixels, (3, 1, 16, 16)
    pm = small_run.pixel_model()
    torch.testing.assert_close(convlens.saliency(small_run, x, 4), _gradient_oracle(pm, x, 4))
    assert convlens.adversarial(small_run, x, 4, method="fgsm").adversarial.shape == tuple(x.shape)


# ---- dataset-wide methods: the same check on the first batch the model takes -------------------------------

DATASET_CALLS = {
    "features": lambda m, x: convlens.features(m, x, layers=["features.0"], progress=False),
    "health": lambda m, x: convlens.health(m, x, layers=["features.0"], progress=False),
    "invariance": lambda m, x: convlens.invariance(m, x, transform="translate", amounts=[0, 2]),
    "top_patches": lambda m, x: convlens.top_patches(m, x, layers=["features.0"], progress=False),
    "codes": lambda m, x: convlens.codes(m, x, progress=False),
}


@pytest.mark.parametrize("name", sorted(DATASET_CALLS))
def test_dataset_wide_methods_refuse_empty_nan_and_hwc_data(name, bn_net):
    for bad, words in [(torch.rand(0, 3, 16, 16), "at least one image"),
                       (torch.full((2, 3, 16, 16), float("nan")), "finite (no NaN or inf)"),
                       (torch.rand(2, 16, 16, 3), "permute to CHW")]:
        with pytest.raises(InputError, match=re.escape(words)):
            DATASET_CALLS[name](bn_net, bad)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in bn_net.modules())


def test_a_run_refuses_0_255_data_in_dataset_wide_methods(small_run):
    x = torch.rand(4, *small_run.input_shape) * 255
    with pytest.raises(InputError, match="data must be pixels in \\[0, 1\\].*divide by 255"):
        convlens.features(small_run.pixel_model(), x, layers=["conv1"], progress=False)
