"""convlens.summary against torchinfo on the same model: the zoo, the fixtures and random small CNNs (a
property), and the models that used to break it: shared and tied weights, a bare layer, recurrent heads
(CRNN), TorchScript children, forwards that run only on real tensors."""
from __future__ import annotations

from math import prod

import pytest
import torch
import torch.nn.functional as F
import torchinfo
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

import convlens
from convlens import InputError, ShapeError
from convlens.arch.geometry import Box
from convlens.arch.receptive import receptive_field
from convlens.arch.summary import Summary, summary

from conftest import FIXTURE_MODELS, assert_as_found, model_state


def _tied_across_modules(model: nn.Module) -> bool:
    owners: dict[int, set[int]] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners.setdefault(id(p), set()).add(id(m))
    return any(len(o) > 1 for o in owners.values())


def check_against_torchinfo(model: nn.Module, input_size) -> Summary:
    """Totals and every leaf row (type, mult-adds, output size, parameters) equal torchinfo's on the same
    model. The parameter total is also PyTorch's own count of distinct parameters: torchinfo counts a
    weight tied across two modules twice, so there its totals and per-row counts are not the oracle."""
    ours = summary(model, input_size)
    stats = torchinfo.summary(model, input_size=(1, *input_size), verbose=0)
    leaves = [layer for layer in stats.summary_list if layer.is_leaf_layer]
    tied = _tied_across_modules(model)
    assert ours.total_macs == stats.total_mult_adds
    assert ours.total_params == sum(p.numel() for p in model.parameters())
    assert tied or ours.total_params == stats.total_params
    rows = ours.rows[1:]
    assert [r.type for r in rows] == [layer.class_name for layer in leaves]
    for row, layer in zip(rows, leaves):
        assert row.macs == layer.macs, row.name
        assert row.activations == prod(layer.output_size), row.name  # batch 1
        if not (layer.is_recursive or tied):
            assert row.params == layer.num_params, row.name
        if len(layer.output_size) in (2, 4):
            n, c, *hw = layer.output_size
            assert row.output_shape == ((hw[0], hw[1], c) if hw else (1, 1, c)), row.name
    return ours


@pytest.mark.parametrize("name", ["vgg16", "alexnet", "zfnet", "lenet"])
def test_zoo_params_and_macs_match_torchinfo(name):
    torch.manual_seed(0)
    model = convlens.create(name)
    check_against_torchinfo(model, model.input_shape)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_fixture_params_and_macs_match_torchinfo(name):
    model = FIXTURE_MODELS[name]().eval()
    check_against_torchinfo(model, model.input_shape)


# -- property: any small CNN ---------------------------------------------------------------------------------
class Drawn(nn.Module):
    """A small CNN: ``blocks`` of (kind, kernel, stride), then a conv called twice (``share="reuse"``) or two
    convs sharing one weight (``"tie"``), then a head: flatten + FC, global mean + FC, or a recurrent layer
    over the columns (a CRNN: time-major, or batch-first) whose last step feeds an FC."""

    def __init__(self, c_in: int, hw, blocks, share: str, head: str, batch_first: bool, bidirectional: bool):
        super().__init__()
        layers, c = [], c_in
        for kind, k, s in blocks:
            if kind in ("conv", "depthwise"):
                c_out = 4 if kind == "conv" else c
                layers.append(nn.Conv2d(c, c_out, k, s, k // 2, groups=1 if kind == "conv" else c))
                c = c_out
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(c))
            else:
                layers.append(nn.ReLU() if kind == "relu" else nn.MaxPool2d(2, ceil_mode=True))
        self.features = nn.Sequential(*layers)
        self.share, self.head_kind = share, head
        self.a, self.b = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)
        if share == "tie":
            self.b.weight = self.a.weight
        with torch.no_grad():
            _, c, h, w = self.body(torch.zeros(1, c_in, *hw)).shape
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}.get(head)
        self.rnn = rnn(c * h, 6, batch_first=batch_first, bidirectional=bidirectional) if rnn else None
        width = {"fc": c * h * w, "gap": c}.get(head, 6 * (1 + bidirectional))
        self.fc = nn.Linear(width, 5)

    def body(self, x):                                   # (N, C, H, W)
        x = self.features(x)
        if self.share == "reuse":
            return self.a(F.relu(self.a(x)))
        return self.b(F.relu(self.a(x))) if self.share == "tie" else x

    def forward(self, x):                                # (N, C, H, W)
        x = self.body(x)                                 # (N, c, h, w)
        if self.rnn is None:
            return self.fc(x.flatten(1) if self.head_kind == "fc" else x.mean((2, 3)))
        seq = x.permute(3, 0, 1, 2).flatten(2)           # (w, N, c*h): one time step per column
        if self.rnn.batch_first:
            seq = seq.transpose(0, 1)                    # (N, w, c*h)
        out, _ = self.rnn(seq)
        return self.fc(out[:, -1] if self.rnn.batch_first else out[-1])   # (N, 5)


@st.composite
def drawn_models(draw):
    size = (draw(st.integers(1, 3)), draw(st.integers(4, 12)), draw(st.integers(4, 12)))
    block = st.tuples(st.sampled_from(["conv", "depthwise", "bn", "relu", "pool"]), st.sampled_from([1, 3]),
                      st.integers(1, 2))
    blocks = draw(st.lists(block, max_size=4))
    share = draw(st.sampled_from(["none", "reuse", "tie"]))
    head = draw(st.sampled_from(["fc", "gap", "lstm", "gru", "rnn"]))
    try:
        model = Drawn(size[0], size[1:], blocks, share, head, draw(st.booleans()), draw(st.booleans()))
    except RuntimeError:  # a pooling that does not fit the map
        assume(False)
    return model.eval(), size


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=drawn_models())
def test_property_totals_and_rows_equal_torchinfo(drawn, one_thread):
    check_against_torchinfo(*drawn)


# -- shared and tied weights ------------------------------------------------------------------------------------
def test_a_module_called_twice_and_a_weight_tied_across_modules():
    c = nn.Conv2d(3, 3, 3, padding=1)
    shared = nn.Sequential(c, nn.ReLU(), c)
    s = check_against_torchinfo(shared, (3, 8, 8))
    assert [r.name for r in s] == ["input", "0", "1", "0 (2)"] and s["0 (2)"].params == 0
    m1, m2 = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
    m2.weight = m1.weight
    tied = nn.Sequential(m1, nn.ReLU(), m2)
    s = check_against_torchinfo(tied, (3, 8, 8))
    assert s.total_params == 81 + 3 + 3 and s["2"].params == 3  # the tied weight counts on its first row


@pytest.mark.parametrize("tie", [False, True])
def test_shared_weights_leave_the_model_as_found_in_summary_and_both_receptive_field_methods(tie):
    """functional_call once swapped a module reached by two paths twice and left it holding the stand-in:
    the same Parameter objects must come back."""
    a, b = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 3, 3, padding=1)
    if tie:
        b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b if tie else a).train()
    params, state = list(model.parameters()), model_state(model)
    second = "2" if tie else "0 (2)"
    summary(model, (3, 8, 8))
    boxes = [receptive_field(model, second, (0, 0), (3, 8, 8), method=m) for m in ("analytic", "probe")]
    assert boxes[0] == boxes[1] == Box(0, 0, 3, 3)
    assert all(p is q for p, q in zip(model.parameters(), params))
    assert_as_found(model, state)


# -- a bare layer ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer, size", [(nn.Conv2d(16, 32, 3, groups=4), (16, 28, 28)),
                                         (nn.BatchNorm2d(3), (3, 5, 7)), (nn.MaxPool2d(2), (3, 8, 8))])
def test_a_bare_layer_is_its_own_row(layer, size):
    s = check_against_torchinfo(layer.eval(), size)
    assert [r.name for r in s] == ["input", type(layer).__name__]
    assert s.total_macs == summary(nn.Sequential(layer), size).total_macs


def test_the_issue_bare_conv_and_its_receptive_field():
    conv = nn.Conv2d(16, 32, 3, groups=4)
    assert summary(conv, (16, 28, 28)).total_macs == 800_384
    for method in ("analytic", "probe"):
        assert receptive_field(conv, "Conv2d", (25, 0), (16, 28, 28), method=method) == Box(25, 0, 28, 3)


# -- recurrent layers: mult-adds per time step -------------------------------------------------------------------
class CRNN(nn.Module):
    """Conv features read column by column as a sequence, a recurrent layer, a score per step."""

    def __init__(self, rnn=nn.LSTM, batch_first: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = rnn(16, 32, batch_first=batch_first)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):                                # (N, 1, 4, 8)
        seq = self.conv(x).permute(3, 0, 1, 2).flatten(2)  # (8, N, 16): one step per column
        if self.rnn.batch_first:
            seq = seq.transpose(0, 1)                    # (N, 8, 16)
        out, _ = self.rnn(seq)                           # (8, N, 32) or (N, 8, 32)
        return self.fc(out)                              # a score per step


@pytest.mark.parametrize("rnn, gates", [(nn.LSTM, 4), (nn.GRU, 3), (nn.RNN, 1)])
@pytest.mark.parametrize("batch_first", [False, True])
def test_recurrent_layers_count_every_time_step(rnn, gates, batch_first):
    """LSTM(16, 32) over 8 steps: 4 gates x 32 x (16 + 32 + 2 biases) x 8 = 51,200, as torchinfo counts."""
    model = CRNN(rnn, batch_first)
    s = summary(model, (1, 4, 8))
    assert s["rnn"].macs == gates * 32 * (16 + 32 + 2) * 8
    assert s["fc"].macs == 330 * 8  # one application per step
    if batch_first:  # torchinfo multiplies a Linear by the output's first dimension: one step of a batch-first sequence
        stats = torchinfo.summary(model, input_size=(1, 1, 4, 8), verbose=0)
        assert s["rnn"].macs == next(layer.macs for layer in stats.summary_list if layer.class_name == rnn.__name__)
    else:
        check_against_torchinfo(model, (1, 4, 8))


def test_a_cell_counts_one_step_per_call():
    """An LSTMCell applied per step: 4 x 6 x (8 + 6 + 2) = 384 per call, by hand (torchinfo multiplies a cell
    by its output's batch x hidden size)."""
    class Steps(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = nn.LSTMCell(8, 6)

        def forward(self, x):                            # (N, 1, 3, 8): three steps of 8 features
            h = c = x.new_zeros(x.shape[0], 6)
            for t in range(x.shape[2]):
                h, c = self.cell(x[:, 0, t], (h, c))
            return h                                     # (N, 6)

    s = summary(Steps(), (1, 3, 8))
    assert [(r.name, r.macs) for r in s.rows[1:]] == [("cell", 384), ("cell (2)", 384), ("cell (3)", 384)]


# -- TorchScript ---------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_is_refused_with_what_to_do():
    """No hook and no TorchFunctionMode sees into compiled code: no rows, and the probe's linearization
    would not reach a max-pool there (its box would miss pixels)."""
    model = nn.Sequential(nn.Conv2d(3, 4, 3), torch.jit.script(nn.Sequential(nn.MaxPool2d(2), nn.ReLU())),
                          nn.Conv2d(4, 4, 3))
    state = model_state(model)
    with pytest.raises(InputError, match=r"module '1' is TorchScript, .*pass the model's eager nn.Module instead"):
        summary(model, (3, 12, 12))
    for method in ("analytic", "probe"):
        with pytest.raises(InputError, match="module '1' is TorchScript"):
            receptive_field(model, "2", (0, 0), (3, 12, 12), method=method)
    assert_as_found(model, state)
    with pytest.raises(InputError, match="the model is TorchScript"):
        summary(torch.jit.script(nn.Conv2d(3, 4, 3)), (3, 8, 8))


# -- forwards that run only on real tensors ---------------------------------------------------------------------
class ToCpu(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):                                # (N, 3, H, W)
        return self.bn(self.conv(x.to("cpu")))


class CoordConv(nn.Module):
    """Liu et al. 2018: two coordinate channels made on the CPU inside forward."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(5, 4, 3)

    def forward(self, x):                                # (N, 3, H, W)
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(n, 1, h, w)   # (N, 1, H, W)
        xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.conv(torch.cat([x, ys, xs], 1))      # (N, 4, H-2, W-2)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.small, self.large = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 5)

    def forward(self, x):
        if x.mean() > 0:                                 # a value decides: torch.rand takes this branch
            return self.small(x)
        return self.large(x)


class ItemPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        k = 1 + int(x.amax().item() > 0.5)               # 2 for torch.rand's inputs
        return F.max_pool2d(self.conv(x), k)


class MaskedMean(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x) * x[x > 0.5].mean()          # a shape that depends on values


@pytest.mark.parametrize("make", [ToCpu, CoordConv, Branchy, ItemPool, MaskedMean])
def test_forwards_that_need_real_tensors_are_traced_by_one_real_forward(make):
    """torchinfo runs a real forward of torch.rand, as the fallback does: its rows are the oracle."""
    model = make().train()
    next(model.parameters()).requires_grad_(False)
    state = model_state(model)
    s = summary(model, (3, 9, 11), batch_size=4, dtype=torch.float16)
    assert_as_found(model, state)  # modes, hooks, requires_grad, weights and BN statistics
    assert "cannot run on the meta device" in s.note and "real forward of a random 1x3x9x11 input on cpu" in s.note
    assert f"note: {s.note}" in repr(s) and s.to_dict()["note"] == s.note == Summary.from_dict(s.to_dict()).note
    assert s.bytes_per_value == 2 and s.forward_bytes == 4 * 2 * s.total_activations
    ours = check_against_torchinfo(model.eval(), (3, 9, 11))
    assert [r.to_dict() for r in ours.rows] == [r.to_dict() | {"bytes": r.bytes * 2} for r in s.rows]


def test_receptive_fields_through_a_real_forward():
    model = CoordConv()
    for pos in [(0, 0), (6, 8), (3, 2)]:
        analytic = receptive_field(model, "conv", pos, (3, 9, 11), method="analytic")
        assert analytic == receptive_field(model, "conv", pos, (3, 9, 11), method="probe")
        assert (analytic.height, analytic.width) == (3, 3)


def test_real_tensor_forwards_on_meta_weights_or_failing_for_real_say_why():
    with torch.device("meta"):
        model = ToCpu()
    with pytest.raises(ShapeError, match="Cannot copy out of meta tensor.*weights are on the meta device"):
        summary(model, (3, 9, 11))

    class ItemThenWrong(ItemPool):
        def forward(self, x):
            return F.linear(super().forward(x).flatten(1), torch.ones(2, 10))

    with pytest.raises(ShapeError, match=r"the forward of ItemThenWrong failed on input of shape \(1, 3, 9, 11\): "
                                         r"mat1 and mat2 shapes cannot be multiplied"):
        summary(ItemThenWrong(), (3, 9, 11))
