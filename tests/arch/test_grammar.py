"""The architecture grammar: parsing, shapes, names, errors, and describe() round trips."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import convlens
from convlens import ConvLensError, ShapeError, SpecError
from convlens.arch.grammar import describe, parse


def test_lecture_tokens_build_the_expected_modules():
    m = parse("CONV3-64,CONV7-96/2,CONV11-96/4p0,CONV5-256/1p2g2,POOL2,POOL3/2,AVGPOOL2,LRN,NORM3,BN,RELU,TANH,"
              "SIGMOID,DROPOUT,DROPOUT-0.3,GAP,FC-4096,FC-10,SOFTMAX", input_shape=(3, 227, 227))
    convs = [l for l in m.features if isinstance(l, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels, c.stride, c.padding, c.groups) for c in convs] == [
        ((3, 3), 64, (1, 1), (1, 1), 1), ((7, 7), 96, (2, 2), (3, 3), 1),
        ((11, 11), 96, (4, 4), (0, 0), 1), ((5, 5), 256, (1, 1), (2, 2), 2)]
    pools = [l for l in m.features if isinstance(l, (nn.MaxPool2d, nn.AvgPool2d))]
    assert [(type(p).__name__, p.kernel_size, p.stride) for p in pools] == [
        ("MaxPool2d", 2, 2), ("MaxPool2d", 3, 2), ("AvgPool2d", 2, 2)]
    lrns = [l for l in m.features if isinstance(l, nn.LocalResponseNorm)]
    assert [l.size for l in lrns] == [5, 3]
    drops = [l.p for l in m.modules() if isinstance(l, nn.Dropout)]
    assert drops == [0.5, 0.3]
    assert m.softmax and m.num_classes == 10
    assert m(torch.zeros(2, 3, 227, 227)).shape == (2, 10)


def test_conv3_keeps_the_size_and_pool2_halves_it():
    m = parse("CONV3-8,POOL2,CONV5-4", input_shape=(1, 20, 30))  # non-square, 1 channel
    assert m(torch.zeros(1, 1, 20, 30)).shape == (1, 4, 10, 15)


def test_lecture_line_with_defaults_for_omitted_sizes():
    m = parse("[CONV-RELU-POOL]xN,[FC-RELU]xM,FC,SOFTMAX", input_shape=(3, 32, 32), repeats={"N": 3, "M": 2},
              num_classes=7)
    assert sum(isinstance(l, nn.Conv2d) for l in m.features) == 3
    assert sum(isinstance(l, nn.Linear) for l in m.classifier) == 3
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 7)
    assert not any(isinstance(l, nn.ReLU) for l in list(m.classifier)[-1:])  # class scores have no RELU
    assert list(m.lecture_names)[:3] == ["conv1", "relu1", "pool1"]


def test_case_insensitive_and_whitespace():
    a = parse("conv3-16 , relu , pool2 , fc-10", input_shape=(3, 8, 8))
    b = parse("CONV3-16,RELU,POOL2,FC-10", input_shape=(3, 8, 8))
    assert describe(a) == describe(b) == "CONV3-16,RELU,POOL2,FC-10"


def test_repetition_group_and_vgg_names():
    m = parse("[CONV3-64-RELU]x2,POOL2,[CONV3-128-RELU]x3,POOL2,FC-10", input_shape=(3, 16, 16), naming="vgg")
    assert list(m.lecture_names) == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1",
                                     "conv2_2", "relu2_2", "conv2_3", "relu2_3", "pool2", "fc3"]


def test_alexnet_style_names_and_dropout_before_fc_joins_classifier():
    m = convlens.create("alexnet_tv")
    assert isinstance(m.classifier[0], nn.Dropout) and isinstance(m.classifier[1], nn.Linear)
    assert m.lecture_names["fc6"] == "classifier.1" and m.lecture_names["conv5"] == "features.10"


def test_forward_returns_scores_before_softmax():
    m = parse("FC-3,SOFTMAX", input_shape=(1, 2, 2))
    x = torch.randn(4, 1, 2, 2)
    s = m(x)
    assert not torch.allclose(s.sum(1), torch.ones(4))
    assert torch.allclose(m.predict_proba(x), torch.softmax(s, 1))


def test_fc_only_and_fully_convolutional_nets():
    assert parse("FC-5", input_shape=(2, 3, 4))(torch.zeros(1, 2, 3, 4)).shape == (1, 5)
    fcn = parse("CONV3-6,RELU,CONV1-10,GAP", input_shape=(3, 9, 9))
    assert fcn(torch.zeros(2, 3, 9, 9)).shape == (2, 10)


@pytest.mark.parametrize("spec, fragment, column", [
    ("CONV3-64,PAOL2", "expected a layer", 10),
    ("CONV3-64,,RELU", "expected a layer", 10),
    ("CONV3-64,", "expected a layer", 10),
    ("[CONV3-64-RELU]x", "repetition count", 16),
    ("[CONV3-64-RELU", "expected ']'", 15),
    ("CONV3-64]", "unexpected ']'", 9),
    ("[CONV3-64]xK", "no value for the repetition", 12),
    ("FC-10,CONV3", "after the first FC", 7),
    ("CONV3-64,SOFTMAX,FC-10", "SOFTMAX must be the last", 10),
    ("CONV0-8", "kernel must be at least 1", 1),
    ("CONV3-6g4", "groups=4 must divide", 1),
    ("RELUX", "expected a layer", 1),
    ("", "empty", 1),
])
def test_malformed_specs_quote_the_spec_with_a_caret(spec, fragment, column):
    with pytest.raises(SpecError) as info:
        parse(spec, input_shape=(3, 32, 32))
    msg = str(info.value)
    assert fragment in msg
    assert f"column {column}" in msg or spec == ""
    spec_line, caret_line = msg.splitlines()[-2:]
    assert spec_line.strip() == spec.strip() or spec == ""
    assert caret_line.index("^") == column - 1 + 2  # two-space indent


def test_impossible_shapes_name_the_layer_and_shapes():
    with pytest.raises(ShapeError, match=r"pool1b \(POOL2\) cannot apply to a 1x1x8 input"):
        parse("CONV3-8,POOL2,POOL2", input_shape=(3, 2, 2))
    with pytest.raises(ShapeError, match=r"conv1 \(CONV7-8p0\).*3x3x3"):
        parse("CONV7-8p0", input_shape=(3, 3, 3))


def test_input_shape_mismatch_at_forward_is_clear():
    m = convlens.create("lenet")
    with pytest.raises(ShapeError, match=r"expects input of shape \(N, 1, 32, 32\)"):
        m(torch.zeros(1, 1, 28, 28))


def test_bad_arguments():
    with pytest.raises(convlens.InputError, match="input_shape"):
        parse("FC-2", input_shape=(3, 0, 4))
    with pytest.raises(convlens.InputError, match="naming"):
        parse("FC-2", input_shape=(3, 4, 4), naming="x")


def test_zoo_param_counts_and_unknown_names():
    counts = {"alexnet": 60_965_224, "alexnet_tv": 61_100_840, "vgg16": 138_357_544, "lenet": 61_706}
    for name, n in counts.items():
        assert sum(p.numel() for p in convlens.create(name).parameters()) == n, name
    with pytest.raises(convlens.UnknownModelError, match="Did you mean .*'vgg16'"):
        convlens.create("vgg61")
    assert convlens.list_models("vgg*") == ["vgg11", "vgg16", "vgg19"]


def test_zfnet_follows_the_paper_figure_3():
    m = convlens.create("zfnet")  # 224 -> 110 -> 55 -> 26 -> 13 -> 13 -> 13 -> 6; 6*6*256 = 9216
    sizes, x = [], torch.zeros(1, 3, 224, 224)
    for layer in m.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            sizes.append(x.shape[-1])
    assert sizes == [110, 55, 26, 13, 13, 13, 13, 6]
    assert m.classifier[0].in_features == 9216


def _torchvision_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """VGG-16's state_dict as torchvision lays it out, built by hand from its published config."""
    cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
    sd, idx, cin = {}, 0, 3
    for v in cfg:
        if v == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(v, cin, 3, 3)
        sd[f"features.{idx}.bias"] = torch.randn(v)
        idx, cin = idx + 2, v  # conv, relu
    for i, (fin, fout) in zip((0, 3, 6), ((25088, 4096), (4096, 4096), (4096, 1000))):
        sd[f"classifier.{i}.weight"] = torch.randn(fout, fin)
        sd[f"classifier.{i}.bias"] = torch.randn(fout)
    return sd


def test_torchvision_vgg16_state_dict_loads_strictly():
    sd = _torchvision_vgg16_state_dict()
    m = convlens.create("vgg16")
    m.load_state_dict(sd, strict=True)
    assert torch.equal(m.classifier[6].bias, sd["classifier.6.bias"])


def test_torchvision_alexnet_state_dict_loads_strictly():
    shapes = {"features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
              "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3),
              "classifier.1": (4096, 9216), "classifier.4": (4096, 4096), "classifier.6": (1000, 4096)}
    sd = {}
    for k, s in shapes.items():
        sd[f"{k}.weight"], sd[f"{k}.bias"] = torch.randn(s), torch.randn(s[0])
    convlens.create("alexnet_tv").load_state_dict(sd, strict=True)


# ---- property-based: random valid specs round-trip; garbage raises only SpecError/ShapeError ----------
_conv = st.builds(lambda k, n, s, g: f"CONV{k}-{n * g}" + (f"/{s}" if s > 1 else "") + (f"g{g}" if g > 1 else ""),
                  st.sampled_from([1, 3, 5]), st.integers(1, 4), st.sampled_from([1, 2]), st.sampled_from([1, 2]))
_elementwise = st.sampled_from(["RELU", "TANH", "SIGMOID", "BN", "LRN", "LRN3", "DROPOUT", "DROPOUT0.25"])
_pool = st.sampled_from(["POOL2", "POOL3/2", "AVGPOOL2", "POOL3/2c", "POOL2/1"])
_fc_tail = st.sampled_from(["RELU", "TANH", "DROPOUT", "BN"])


@st.composite
def valid_specs(draw):
    """Specs whose conv part fits a 3x24x24 input (at most three poolings/strides)."""
    words, downs = [], 0
    for _ in range(draw(st.integers(0, 6))):
        word = draw(st.one_of(_conv, _elementwise, _pool))
        if word.startswith(("POOL", "AVGPOOL")) or "/2" in word:
            if downs == 3:
                continue
            downs += 1
        if word.startswith("CONV") and "g2" in word and not words:
            word = word.replace("g2", "")  # the 3-channel input does not split into 2 groups
        words.append(word)
    if any(w.startswith("CONV") and "g2" in w for w in words):
        words = ["CONV1-4"] + words  # make every grouped conv see an even channel count
    for _ in range(draw(st.integers(0, 2))):
        words.append(f"FC-{draw(st.integers(1, 9))}")
        words.extend(draw(st.lists(_fc_tail, max_size=2)))
    if not words:
        words = ["FC-3"]
    if draw(st.booleans()):
        words.append("SOFTMAX")
    return ",".join(words)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(valid_specs(), st.sampled_from(["caffe", "vgg"]), st.sampled_from(["named", "torchvision"]))
def test_random_valid_specs_round_trip(spec, naming, layout):
    try:
        m = parse(spec, input_shape=(3, 24, 24), naming=naming, layout=layout)
    except SpecError as err:  # grouped convs whose input channels are odd are legitimately rejected
        assert "groups" in str(err)
        return
    again = parse(describe(m), input_shape=(3, 24, 24), naming=naming, layout=layout)
    assert describe(again) == describe(m)
    assert repr(again) == repr(m)
    assert again.lecture_names == m.lecture_names
    assert list(again.state_dict()) == list(m.state_dict())


_alphabet = st.sampled_from(list("CONVPLFRUGXSMAYTDBHIE0123456789-,/[]xNpgc. ") +
                            ["CONV", "POOL", "FC", "RELU", "[", "]x2", "-64", "/2", "SOFTMAX", "BN", "LRN", "GAP"])


@settings(max_examples=300, deadline=None)
@given(st.lists(_alphabet, max_size=14).map("".join))
def test_garbage_raises_only_the_documented_errors(text):
    try:
        m = parse(text, input_shape=(3, 16, 16))
    except (SpecError, ShapeError):
        return
    assert isinstance(m, nn.Module)


def test_errors_are_convlens_errors():
    assert issubclass(SpecError, ConvLensError) and issubclass(ShapeError, ConvLensError)
