"""Receptive fields: analytic geometry vs the exact gradient probe, the textbook formula, clipping."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import convlens
from convlens import InputError, ShapeError
from convlens.arch.geometry import Box, receptive_boxes
from convlens.arch.receptive import receptive_field
from convlens.arch.summary import Summary, summary

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


def _ones_gradient_support(model: nn.Sequential, pos, input_size) -> Box:
    """Brute force for a chain of convolutions: with every weight 1 and every bias 0, the input pixels
    with a non-zero gradient of the unit are exactly those that reach it."""
    ones = nn.Sequential(*(nn.Conv2d(1, 1, c.kernel_size, c.stride, c.padding, c.dilation) for c in model))
    for conv in ones:
        nn.init.ones_(conv.weight)
        nn.init.zeros_(conv.bias)
    x = torch.ones(1, *input_size, requires_grad=True)
    ones(x)[0, 0, pos[0], pos[1]].backward()
    rows, cols = x.grad[0, 0].any(1).nonzero().flatten(), x.grad[0, 0].any(0).nonzero().flatten()
    if rows.numel() == 0:
        return Box(0, 0, 0, 0)
    return Box(int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1)


@pytest.mark.parametrize("model, size", [
    (nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, dilation=2)), (1, 8, 8)),       # the issue's case
    (nn.Sequential(nn.Conv2d(1, 1, 3, stride=2), nn.Conv2d(1, 1, 3, padding=2, dilation=2)), (1, 13, 15)),
    (nn.Sequential(nn.Conv2d(1, 1, 1, stride=3, padding=1), nn.Conv2d(1, 1, 3)), (1, 11, 10)),  # stride > kernel
    (nn.Sequential(nn.Conv2d(1, 1, 2, padding=3), nn.Conv2d(1, 1, 3, padding=1, dilation=3)), (1, 6, 7)),  # blind units
])
def test_dilated_and_padded_windows_are_exact_at_every_unit(model, size):
    """A dilated window whose taps skip the first real pixel, gaps left by a stride larger than the kernel,
    windows entirely in padding: the analytic box is the probe's and the brute-force gradient's, at every unit."""
    last = str(len(model) - 1)
    row = summary(model, size)[last]
    h, w, _ = row.output_shape
    for pos in [(r, c) for r in range(h) for c in range(w)]:
        exact = _ones_gradient_support(model, pos, size)
        assert row.geometry.box(*pos, size[1:]) == exact, pos
        assert receptive_field(model, last, pos, size, method="probe") == exact, pos
    assert receptive_field(model, last, (0, 0), size, method="analytic") == _ones_gradient_support(model, (0, 0), size)


def test_issue_example_rows_1_to_4():
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, dilation=2))
    box = receptive_field(model, "0", (0, 0), (1, 8, 8), method="analytic")
    assert box == receptive_field(model, "0", (0, 0), (1, 8, 8), method="probe") == Box(1, 1, 4, 4)


def test_exact_boxes_survive_json(tmp_path):
    """Rows whose boxes are not the textbook spans carry them in JSON; a loaded summary gives the same boxes."""
    model = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1, dilation=2), nn.MaxPool2d(3, 2, 1, ceil_mode=True))
    s = summary(model, (1, 9, 11))
    assert "edges" in s.to_dict()["layers"][1]
    s.save(tmp_path / "s.json")
    loaded = Summary.load(tmp_path / "s.json")
    for live, back in zip(s.rows[1:], loaded.rows[1:]):
        h, w, _ = live.output_shape
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        assert torch.equal(receptive_boxes(live, rows, cols), receptive_boxes(back, rows, cols))
        assert live.geometry.box(0, 0) == receptive_field(model, live.name, (0, 0), (1, 9, 11))


def test_union_with_a_blind_branch_is_unknown_not_wrong():
    """A residual add whose branch has units that see nothing along one axis: the union of the two fields is
    no longer rows x columns, so the analytic method refuses and the probe answers."""
    class Blind(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide = nn.Conv2d(1, 1, (1, 5), padding=(1, 2))  # rows 0 and H+1 see nothing; 5 columns
            self.tall = nn.Conv2d(1, 1, (3, 1), padding=(2, 0))  # row 0 sees image row 0; 1 column
            self.out = nn.Conv2d(1, 1, 1)

        def forward(self, x):                                   # (N, 1, H, W)
            return self.out(self.wide(x) + self.tall(x))         # (N, 1, H + 2, W)

    assert summary(Blind(), (1, 6, 6))["out"].rf is None
    with pytest.raises(ShapeError, match="method='probe'"):
        receptive_field(Blind(), "out", (0, 3), (1, 6, 6), method="analytic")
    assert receptive_field(Blind(), "out", (0, 3), (1, 6, 6)) == Box(0, 3, 1, 4)  # not columns 1:6


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


# -- property: the two methods agree on any chain of windows ---------------------------------------------------
@st.composite
def window_stacks(draw):
    """(model, input_size): 1-4 convolutions and max/average poolings on a small 1-channel non-square image,
    with strides (some larger than the kernel), paddings (some past the kernel's extent), dilations and ceil
    mode, drawn until every map is non-empty."""
    size = (1, draw(st.integers(4, 14)), draw(st.integers(4, 14)))
    layers = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "max", "avg"]))
        k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        if kind == "conv":
            d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
            p = tuple(draw(st.integers(0, (k[i] - 1) * d[i] + 1)) for i in range(2))
            layers.append(nn.Conv2d(1, 1, k, stride, p, d))
        else:
            p = tuple(draw(st.integers(0, k[i] // 2)) for i in range(2))  # PyTorch: at most half the kernel
            ceil = draw(st.booleans())
            layers.append(nn.MaxPool2d(k, stride, p, dilation=draw(st.integers(1, 2)), ceil_mode=ceil)
                          if kind == "max" else nn.AvgPool2d(k, stride, p, ceil_mode=ceil))
    model = nn.Sequential(*layers)
    try:
        out = model(torch.zeros(1, *size))                                # (1, 1, h, w)
    except RuntimeError:                                                  # a map shrank to nothing
        assume(False)
    assume(out.numel() > 0)
    return model, size


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stack=window_stacks())
def test_property_analytic_equals_probe_on_window_stacks(stack, one_thread):
    """Every map's corner units, and the last map's units next to its borders (where taps skip pixels)."""
    model, size = stack
    rows = summary(model, size).rows[1:]
    for row in rows:
        h, w, _ = row.output_shape
        near = (0, 1, -2, -1) if row is rows[-1] else (0, -1)
        for pos in {(r % h, c % w) for r in near for c in near}:
            assert row.geometry.box(*pos, size[1:]) == receptive_field(model, row.name, pos, size), (row.name, pos)


def test_a_run_gives_the_fields_of_its_net_by_the_users_names(small_run):
    from convlens import receptive_field

    net, shape = small_run.model, small_run.input_shape
    for layer, pos in (("conv2", (3, 2)), ("features.conv3", (1, 1))):
        for method in ("analytic", "probe"):
            assert receptive_field(small_run, layer, pos, method=method) == \
                receptive_field(net, layer, pos, shape, method=method)
            assert receptive_field(small_run.pixel_model(), layer, pos, method=method) == \
                receptive_field(net, layer, pos, shape, method=method)
