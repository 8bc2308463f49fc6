"""Receptive fields: analytic geometry vs the exact gradient probe, the textbook formula, clipping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens import InputError, ShapeError
from convlens.arch.geometry import Box, receptive_boxes
from convlens.arch.receptive import receptive_field
from convlens.arch.summary import summary

from conftest import FIXTURE_MODELS

# zoo models at small, non-square inputs (the smallest sizes their downsampling allows, plus a little)
ZOO_SMALL = {"lenet": (1, 32, 36), "alexnet": (3, 67, 79), "alexnet_tv": (3, 63, 70), "zfnet": (3, 63, 71),
             "vgg11": (3, 32, 40), "vgg16": (3, 32, 40), "vgg19": (3, 32, 40)}
SLOW_ZOO = {"vgg16", "vgg19", "zfnet", "alexnet_tv"}  # same layer kinds as vgg11 / alexnet: run with -m slow


def _positions(h: int, w: int) -> list[tuple[int, int]]:
    """Opposite corners (where clipping happens) and an off-centre unit."""
    return sorted({(0, 0), (h - 1, w - 1), (h // 3, (2 * w) // 3)})


def _agree(model, input_size):
    """Analytic (summary geometry) == probe at corners and inside, for every row whose geometry differs
    from the row before it (a ReLU repeats its conv's field); returns the number of units checked."""
    s = summary(model, input_size)
    checked = 0
    for before, row in zip(s.rows, s.rows[1:]):
        if row.geometry == before.geometry and row.output_shape == before.output_shape:
            continue
        h, w, _ = row.output_shape
        for pos in _positions(h, w):
            analytic = row.geometry.box(*pos, input_size[1:])
            probe = receptive_field(model, row.name, pos, input_size, method="probe")
            assert analytic == probe, (row.name, pos, analytic, probe)
            checked += 1
    last = s.rows[-1]
    assert receptive_field(model, last.name, (0, 0), input_size, method="analytic") == last.geometry.box(0, 0)
    return checked


def test_textbook_formula_on_a_chain():
    chain = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(2, 2, 5, stride=2, padding=2),
                          nn.MaxPool2d(3, stride=2, padding=1), nn.Conv2d(2, 2, 3, padding=2, dilation=2),
                          nn.AvgPool2d(2), nn.Conv2d(2, 2, 1))
    layers = [(3, 1, 1, 1), (5, 2, 2, 1), (3, 2, 1, 1), (3, 1, 2, 2), (2, 2, 0, 1), (1, 1, 0, 1)]  # k, s, p, d
    rf, jump, start = 1, 1, 0
    s = summary(chain, (1, 64, 64))
    for row, (k, stride, pad, dil) in zip(s.rows[1:], layers):
        rf, start, jump = rf + (k - 1) * dil * jump, start - pad * jump, jump * stride  # r_l = r + (k-1) d prod(s)
        assert (row.rf, row.jump, row.start) == (rf, jump, start), row.name
    assert _agree(chain, (1, 64, 64)) > 0


def test_vgg16_boxes_by_hand():
    # conv5_3: rf 196, jump 16, start -90 (13 convs with padding 1 at jumps 1,1,2,2,4,4,4,8,8,8,16,16,16)
    assert receptive_field("vgg16", "conv5_3", (0, 0), method="analytic") == Box(0, 0, 106, 106)
    assert receptive_field("vgg16", "conv5_3", (13, 13), method="analytic") == Box(118, 118, 224, 224)
    assert receptive_field("vgg16", "conv5_3", (7, 3), method="analytic") == Box(22, 0, 218, 154)
    # pool5: rf 212, jump 32: unit 0 at -90..121, unit 6 at 102..313 (clipped to 223)
    assert receptive_field("vgg16", "pool5", (0, 0), method="analytic") == Box(0, 0, 122, 122)
    assert receptive_field("vgg16", "pool5", (6, 6), method="analytic") == Box(102, 102, 224, 224)
    box = receptive_field("vgg16", "fc6", (0, 0), method="analytic")
    assert (box.height, box.width) == (224, 224)


@pytest.mark.slow
def test_vgg16_probe_agrees_at_224():
    model = convlens.create("vgg16")
    for layer, pos in (("conv5_3", (0, 0)), ("pool5", (6, 6)), ("conv3_1", (3, 50)), ("pool5", (0, 6))):
        assert receptive_field(model, layer, pos) == receptive_field(model, layer, pos, method="analytic")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_ZOO else n
                                  for n in sorted(ZOO_SMALL)])
def test_zoo_analytic_equals_probe(name):
    size = ZOO_SMALL[name]
    with torch.device("meta"):  # the probe needs no weights (it substitutes its own): build none
        model = convlens.create(name, input_shape=size)
    assert _agree(model, size) > 0


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_fixtures_analytic_equals_probe(name):
    model = FIXTURE_MODELS[name]().eval()
    assert _agree(model, model.input_shape) > 0


class TwoBranches(nn.Module):
    """Inception-like concatenation of a 1x1 and a 5x5 branch, then a squeeze-excitation gate."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 2, 1)
        self.b = nn.Conv2d(3, 2, 5, padding=2)
        self.gate = nn.Linear(4, 4)
        self.c = nn.Conv2d(4, 4, 3, stride=2)

    def forward(self, x):
        x = torch.cat([self.a(x), F.relu(self.b(x))], dim=1)          # (N, 4, H, W)
        y = self.c(x)                                                  # (N, 4, H', W')
        gate = torch.sigmoid(self.gate(y.mean((2, 3))))[:, :, None, None]  # (N, 4, 1, 1): sees everything
        return y, y * gate


def test_union_rule_for_concatenation_and_gating():
    model = TwoBranches()
    s = summary(model, (3, 17, 15))
    assert s["a"].rf == 1 and s["b"].rf == 5 and s["c"].rf == 7 and s["c"].start == -2
    assert s["gate"].rf == (17, 15) and s["gate"].jump == 0
    assert _agree(model, (3, 17, 15)) > 0


def test_probe_needs_linearization_to_be_exact():
    """A plain gradient through max-pooling reaches one pixel per window; the probe sees the window."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(1, 1, 3, padding=1))
    x = torch.randn(1, 1, 8, 8, requires_grad=True)
    model(x)[0, 0, 1, 1].backward()
    plain = x.grad[0, 0].ne(0).sum().item()
    box = receptive_field(model, "3", (1, 1), (1, 8, 8))
    # unit (1, 1) of the last conv: pool units 0..2 -> first-conv units 0..5 -> pixels -1..6, clipped to 0..6
    assert box == Box(0, 0, 7, 7) and plain < box.height * box.width


def test_unknown_analytic_geometry_falls_back_to_probe():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.after = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.after(F.interpolate(self.conv(x), scale_factor=2, mode="nearest"))

    with pytest.raises(ShapeError, match="method='probe'"):
        receptive_field(Up(), "after", (0, 0), (1, 8, 8), method="analytic")
    # nearest x2 then 3x3: output unit (0, 0) sees upsampled rows -1..1 = input rows 0..0 -> conv: rows 0..1
    assert receptive_field(Up(), "after", (0, 0), (1, 8, 8)) == Box(0, 0, 2, 2)


def test_unit_position_is_validated():
    with pytest.raises(InputError, match=r"unit_position must be a \(row, col\) inside conv5_3's 14x14 output"):
        receptive_field("vgg16", "conv5_3", (14, 0), method="analytic")
    with pytest.raises(InputError, match="unit_position"):
        receptive_field(convlens.create("lenet"), "conv1", (0, 28))
    with pytest.raises(InputError, match="unit_position"):
        receptive_field("lenet", "conv1", "centre")
    with pytest.raises(InputError, match="method must be one of"):
        receptive_field("lenet", "conv1", (0, 0), method="exact")
    with pytest.raises(convlens.LayerNotFoundError, match="Did you mean .*'conv1'"):
        receptive_field("lenet", "conv9", (0, 0))


def test_probe_leaves_model_as_found(tiny_resnet):
    tiny_resnet.train()
    tiny_resnet.fc.weight.requires_grad_(False)
    before = {n: (p, p.detach().clone(), p.requires_grad) for n, p in tiny_resnet.named_parameters()}
    stats = tiny_resnet.layer1.bn1.running_var.clone()
    receptive_field(tiny_resnet, "layer2.conv2", (3, 3))
    for n, p in tiny_resnet.named_parameters():
        assert p is before[n][0] and torch.equal(p, before[n][1]) and p.requires_grad == before[n][2]
        assert p.grad is None
    assert torch.equal(tiny_resnet.layer1.bn1.running_var, stats)
    assert all(m.training for m in tiny_resnet.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny_resnet.modules())


def test_second_call_of_a_shared_module(twice_net):
    first = receptive_field(twice_net, "shared", (0, 0))
    second = receptive_field(twice_net, "shared (2)", (0, 0))
    assert (first, second) == (Box(0, 0, 3, 3), Box(0, 0, 4, 4))
    assert second == receptive_field(twice_net, "shared (2)", (0, 0), method="analytic")


def test_receptive_boxes_vectorised(gray_net):
    s = summary(gray_net)
    row = s["conv2"]
    h, w, _ = row.output_shape
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    boxes = receptive_boxes(row, rows, cols, (20, 28))                # (h, w, 4)
    assert boxes.shape == (h, w, 4)
    for r in range(h):
        for c in range(w):
            expected = receptive_field(gray_net, "conv2", (r, c), method="analytic")
            assert tuple(boxes[r, c].tolist()) == (expected.top, expected.left, expected.bottom, expected.right)
    assert receptive_boxes(row.geometry, [0, 3], 5, (20, 28)).shape == (2, 4)
    with pytest.raises(InputError, match="receptive_boxes needs a Geometry"):
        receptive_boxes(None, 0, 0, (20, 28))


def test_box_helpers():
    box = Box(2, 3, 10, 7)
    image = torch.zeros(1, 12, 12)
    assert (box.height, box.width) == (8, 4) and image[(..., *box.slices)].shape == (1, 8, 4)
    assert "8x4" in str(box)


class OddWindows(nn.Module):
    """'same' padding with an even kernel, stride larger than the kernel, explicit F.pad, a ceil-mode
    max-pool with padding, a non-square window and an in-place residual add."""

    def __init__(self):
        super().__init__()
        self.same = nn.Conv2d(1, 2, 4, padding="same")
        self.sparse = nn.Conv2d(2, 2, 2, stride=3)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.wide = nn.Conv2d(2, 2, (1, 3), padding=(0, 1))

    def forward(self, x):                                       # (N, 1, 29, 31)
        x = self.sparse(F.pad(torch.relu(self.same(x)), (1, 1, 0, 2)))  # (N, 2, 11, 11)
        x = self.pool(x)
        out = self.wide(x)
        out += x
        return out


@pytest.mark.filterwarnings("ignore:Using padding=.same. with even kernel")
def test_odd_windows_analytic_equals_probe():
    assert _agree(OddWindows(), (1, 29, 31)) > 0


def test_dilated_windows_at_the_border_are_bounded():
    """A dilated window's taps can skip the first/last real unit at a border: the analytic box then
    contains the probe's (documented in convlens.arch.geometry), and they agree away from borders."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, padding=2, dilation=2))
    s = summary(model, (1, 13, 15))
    for pos in [(0, 0), (2, 4), (5, 6), (3, 3)]:
        a, p = s["1"].geometry.box(*pos), receptive_field(model, "1", pos, (1, 13, 15))
        assert a.top <= p.top and a.left <= p.left and a.bottom >= p.bottom and a.right >= p.right
    assert s["1"].geometry.box(3, 3) == receptive_field(model, "1", (3, 3), (1, 13, 15))


def test_negative_pad_crops_to_unknown():
    class Crop(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3)

        def forward(self, x):
            return self.conv(F.pad(x, (-1, -1, -1, -1)))

    assert summary(Crop(), (1, 9, 9))["conv"].rf is None
    assert receptive_field(Crop(), "conv", (0, 0), (1, 9, 9)) == Box(1, 1, 4, 4)


def test_normalization_in_front_does_not_widen_fields(small_run):
    """``Normalize`` computes ``mean.to(x)``: x lends only its device/dtype, not its pixels, so a Run's
    pixel model has the same fields as its net (regression: every field was the whole image)."""
    from convlens import receptive_field

    pm = small_run.pixel_model()
    for layer, pos in (("conv1", (0, 0)), ("conv2", (3, 2)), ("conv3", (1, 1))):
        analytic = receptive_field(pm, layer, pos, method="analytic")
        assert analytic == receptive_field(pm, layer, pos, method="probe")
        assert analytic.height < 16
