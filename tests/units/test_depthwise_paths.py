"""Depthwise and grouped convolutions, TensorFlow "SAME" padding (TFSameConv2d: F.pad, then the conv),
PyTorch's asymmetric padding="same" and dilation, through every path that reads a network's geometry,
each against its naive twin: summary vs torchinfo row by row, analytic receptive fields vs the gradient
probe at every unit, incremental occlusion vs one full forward per position, top_patches vs a brute-force
top-k over all activations (its boxes vs the probe); on a small MBConv net and on EfficientNet-Lite0."""
from __future__ import annotations

import warnings
from math import prod

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchinfo
from torch import nn

import convlens
from conftest import assert_as_found, model_state
from convlens.arch.efficientnet import TFSameConv2d
from convlens.arch.receptive import receptive_field
from convlens.arch.summary import summary
from convlens.units.incremental import Incremental
from convlens.units.occlusion import occlusion
from convlens.units.opgraph import record
from convlens.units.patches import top_patches

pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning"),
              pytest.mark.usefixtures("one_thread")]  # tiny tensors: one thread is faster on a busy machine


class MBNet(nn.Module):
    """A TF-SAME stride-2 stem, an MBConv block (1x1 expand, TF-SAME stride-2 depthwise 5x5, 1x1 project),
    a residual branch of a depthwise 3x3 and a grouped 4x4 conv with PyTorch's asymmetric "same" padding,
    a dilated depthwise conv, a 1x1 head; ReLU6 as a module (called twice), functional and as hardtanh."""

    input_shape = (3, 17, 20)  # odd and even sides: SAME pads them differently

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = TFSameConv2d(3, 8, 3, 2, bias=False), nn.BatchNorm2d(8)
        self.expand, self.bn1 = nn.Conv2d(8, 16, 1, bias=False), nn.BatchNorm2d(16)
        self.dw1, self.bn2 = TFSameConv2d(16, 16, 5, 2, groups=16, bias=False), nn.BatchNorm2d(16)
        self.project, self.bn3 = nn.Conv2d(16, 12, 1, bias=False), nn.BatchNorm2d(12)
        self.dw2, self.bn4 = nn.Conv2d(12, 12, 3, 1, 1, groups=12), nn.BatchNorm2d(12)
        self.grouped = nn.Conv2d(12, 12, 4, padding="same", groups=3)
        self.dilated = nn.Conv2d(12, 12, 3, padding=2, dilation=2, groups=12)
        self.head = nn.Conv2d(12, 16, 1)
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(16, 6)

    def forward(self, x):                                   # (N, 3, 17, 20)
        x = self.relu6(self.bn0(self.stem(x)))              # (N, 8, 9, 10)
        x = F.relu6(self.bn1(self.expand(x)))               # (N, 16, 9, 10)
        x = F.relu6(self.bn2(self.dw1(x)))                  # (N, 16, 5, 5)
        x = self.bn3(self.project(x))                       # (N, 12, 5, 5)
        x = x + self.grouped(F.relu6(self.bn4(self.dw2(x))))
        x = F.hardtanh(self.dilated(x), 0.0, 6.0)
        x = self.relu6(self.head(x))                        # (N, 16, 5, 5)
        return self.fc(x.mean((2, 3)))                      # (N, 6)


def mbnet() -> MBNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = MBNet()
        for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):  # non-trivial statistics
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
    return net.eval()


def lite(size=(3, 64, 64)):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return convlens.create("efficientnet_lite0", num_classes=10, input_shape=size).eval()


def images(n, shape, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


# ---- summary ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, size", [(mbnet, MBNet.input_shape), (lite, (3, 64, 64)), (lite, (3, 45, 38))],
                         ids=["mbnet", "lite0-64", "lite0-45x38"])
def test_summary_equals_torchinfo_row_by_row(make, size):
    net = make() if make is mbnet else make(size)
    state = model_state(net)
    ours = summary(net, size)
    stats = torchinfo.summary(net, input_size=(1, *size), verbose=0)
    assert_as_found(net, state)
    leaves = [layer for layer in stats.summary_list if layer.is_leaf_layer]
    assert ours.total_macs == stats.total_mult_adds
    assert ours.total_params == stats.total_params == sum(p.numel() for p in net.parameters())
    rows = ours.rows[1:]
    assert [r.type for r in rows] == [layer.class_name for layer in leaves]
    for row, layer in zip(rows, leaves):
        n, c, h, w = layer.output_size if len(layer.output_size) == 4 else (1, layer.output_size[1], 1, 1)
        assert (row.macs, row.params, row.output_shape) == (layer.macs, layer.num_params, (h, w, c)), row.name
    by_hand = {  # conv mult-adds by hand: output units x (input channels per group) x kernel area
        "stem": 9 * 10 * 8 * 3 * 9, "dw1": 5 * 5 * 16 * 1 * 25, "grouped": 5 * 5 * 12 * 4 * 16,
        "dilated": 5 * 5 * 12 * 1 * 9,
    } if make is mbnet else {}
    for row in rows:
        if row.name in by_hand:
            bias = prod(row.output_shape) if getattr(net, row.name).bias is not None else 0
            assert row.macs == by_hand[row.name] + bias, row.name


# ---- receptive fields ----------------------------------------------------------------------------------------
MB_LAYERS = ["stem", "dw1", "project", "dw2", "grouped", "dilated", "head", "relu6 (2)"]


def test_receptive_fields_analytic_equal_probe_at_every_unit():
    net, size = mbnet(), MBNet.input_shape
    rows = {r.name: r for r in summary(net, size).rows}
    for layer in MB_LAYERS:
        h, w, _ = rows[layer].output_shape
        for pos in ((i, j) for i in range(h) for j in range(w)):
            analytic = rows[layer].geometry.box(*pos, size[1:])  # what method="analytic" returns
            assert analytic == receptive_field(net, layer, pos, size, method="probe"), (layer, pos)
        corner = receptive_field(net, layer, (h - 1, w - 1), size, method="analytic")
        assert corner == rows[layer].geometry.box(h - 1, w - 1, size[1:])
    # by hand. The stem (k 3, stride 2; SAME pads 17 rows 1 + 1, 20 cols 0 + 1): unit (i, j) sees rows
    # 2i-1..2i+1, cols 2j..2j+2. dw1 (k 5, stride 2 on its 9x10 map; SAME pads rows 2 + 2, cols 1 + 2):
    # unit (0, 0) takes stem rows 0..2, cols 0..3; unit (4, 4) stem rows 6..8, cols 7..9.
    for layer, pos, want in (("stem", (0, 0), (0, 0, 2, 3)), ("stem", (8, 9), (15, 18, 17, 20)),
                             ("dw1", (0, 0), (0, 0, 6, 9)), ("dw1", (4, 4), (11, 14, 17, 20))):
        box = receptive_field(net, layer, pos, size, method="analytic")
        assert (box.top, box.left, box.bottom, box.right) == want, (layer, pos)


@pytest.mark.parametrize("size", [(3, 33, 40), (3, 64, 64)])  # odd and even sides: SAME pads them differently
def test_efficientnet_receptive_fields_analytic_equal_probe_at_corners_and_centre(size):
    with torch.device("meta"):
        net = convlens.create("efficientnet_lite0", input_shape=size)
    rows = {r.name: r for r in summary(net, size).rows}
    for layer in ("_conv_stem", "_blocks.0._depthwise_conv", "_blocks.2._depthwise_conv",
                  "_blocks.4._project_conv", "_blocks.10._depthwise_conv", "_conv_head"):
        h, w, _ = rows[layer].output_shape
        for pos in {(0, 0), (0, w - 1), (h - 1, 0), (h - 1, w - 1), (h // 2, w // 2)}:
            assert rows[layer].geometry.box(*pos, size[1:]) == receptive_field(net, layer, pos, size,
                                                                                method="probe"), (layer, pos)


# ---- incremental occlusion -----------------------------------------------------------------------------------
def naive(model, x, window, stride, baseline, layer, unit):
    """One full forward per position: softmax probabilities (rows, cols, K) and the layer's total
    activation of ``unit`` (rows, cols), float64."""
    c, h, w = x.shape
    module = dict(model.named_modules())[layer]
    seen = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o[0, unit].double().sum()))
    rows, cols = range(0, h - window + 1, stride), range(0, w - window + 1, stride)
    probs = []
    try:
        with torch.no_grad():
            for r in rows:
                for q in cols:
                    y = x.clone()
                    y[:, r:r + window, q:q + window] = baseline
                    probs.append(torch.softmax(model(y[None]).double(), 1)[0])
    finally:
        handle.remove()
    return (torch.stack(probs).reshape(len(rows), len(cols), -1).numpy(),
            torch.stack(seen).reshape(len(rows), len(cols)).numpy())


def assert_occlusion_equals_naive(model, x, window, stride, layer, unit, target):
    state = model_state(model)
    result = occlusion(model, x, target=target, window=window, stride=stride, baseline=0.3, layer=layer,
                       unit=unit, batch_size=5)
    assert_as_found(model, state)
    assert result.method == "incremental" and not result.note, result.note
    p, act = naive(model, x, window, stride, 0.3, layer, unit)
    np.testing.assert_allclose(result.p_target, p[..., target], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.top_prob, p.max(-1), atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.activation, act, rtol=1e-5, atol=1e-5 * np.abs(act).max())


@pytest.mark.parametrize("window, stride, layer", [(4, 2, "dw2"), (5, 3, "grouped"), (3, 4, "stem"),
                                                   (7, 1, "head")])
def test_incremental_occlusion_equals_naive_loop(window, stride, layer):
    net = mbnet()
    assert_occlusion_equals_naive(net, images(1, MBNet.input_shape)[0], window, stride, layer, 3, target=2)


def test_same_padding_keeps_the_occluder_local():
    # F.pad is a one-tap window: the stem and the block run on patches, not on whole maps
    net = mbnet()
    graph = record(net, images(1, MBNet.input_shape))
    engine = Incremental(graph, np.array([[0, 0], [12, 15]]), 3, rho=0.9)
    steps = [(graph.ops[s.op].name, s.kind) for s in engine.plan.steps]
    assert steps[0] == ("pad", "window") and ("pad", "generic") not in steps
    assert engine.local_ops >= 10, steps


def test_efficientnet_incremental_occlusion_equals_naive_loop():
    net = lite((3, 48, 40))
    x = images(1, (3, 48, 40), seed=2)[0]
    assert_occlusion_equals_naive(net, x, 12, 5, "_blocks.2._depthwise_conv", 17, target=5)


# ---- top-k patches ---------------------------------------------------------------------------------------------
def brute_topk(model, x, path, k, units=None, batch_size=4):
    """Every activation of ``path`` in memory (a plain forward hook; the miner's batches, so the float
    rounding is the same); per unit the k images with the largest map maximum (ties: the lower image)
    and the first position of that maximum."""
    module = dict(model.named_modules())[path]
    seen = []
    handle = module.register_forward_hook(lambda m, a, o: seen.append(o.detach().clone()))
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                model(x[i:i + batch_size])
    finally:
        handle.remove()
    a = torch.cat(seen).double().numpy()                          # (N, C, H, W)
    a = a[:, units] if units is not None else a
    n, c, h, w = a.shape
    best = a.reshape(n, c, -1).max(2)                             # (N, C)
    values, indices, positions = [], [], []
    for u in range(c):
        order = sorted(range(n), key=lambda i: (-best[i, u], i))[:k]
        values.append(best[order, u])
        indices.append(order)
        positions.append([divmod(int(np.argmax(a[i, u].reshape(-1) == best[i, u])), w) for i in order])
    return np.array(values), np.array(indices), np.array(positions)


def assert_topk_equals_brute(model, x, layers, k, units=None):
    state = model_state(model)
    tp = top_patches(model, x, layers, k=k, units=units, batch_size=4, progress=False)
    assert_as_found(model, state)
    size = tuple(x.shape[1:])
    for layer in layers:
        values, indices, positions = brute_topk(model, x, layer, k, units)
        np.testing.assert_array_equal(tp.indices[layer], indices)
        np.testing.assert_array_equal(tp.positions[layer], positions)
        np.testing.assert_array_equal(tp.values[layer], values.astype(np.float32))
        assert tp.box_method[layer] == "analytic", layer
        boxes = {}
        for pos, box in zip(tp.positions[layer].reshape(-1, 2), tp.boxes[layer].reshape(-1, 4)):
            boxes[tuple(int(v) for v in pos)] = tuple(int(v) for v in box)
        for pos, box in boxes.items():
            probe = receptive_field(model, layer, pos, size, method="probe")
            assert box == (probe.top, probe.left, probe.bottom, probe.right), (layer, pos)


def test_top_patches_equal_brute_force_on_depthwise_grouped_and_same_layers():
    net = mbnet()
    assert_topk_equals_brute(net, images(13, MBNet.input_shape, seed=4),
                             ["stem", "dw1", "dw2", "grouped", "dilated", "head"], k=4)


def test_efficientnet_top_patches_equal_brute_force():
    net = lite((3, 48, 48))
    x = images(6, (3, 48, 48), seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_topk_equals_brute(net, x, ["_blocks.1._depthwise_conv", "_blocks.3", "_conv_head"], k=3,
                                 units=[0, 7, 21])
