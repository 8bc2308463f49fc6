"""convlens.summary against oracles: the lecture's VGG-16 table and hand counts (torchinfo on the same model:
test_summary_models.py)."""
from __future__ import annotations

import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens import InputError, ShapeError, SpecError, UnknownModelError
from convlens.arch.summary import Summary, summary

# The lecture's table ("VGG-16 memory/params"), transcribed: layer, [H x W x C], memory as the
# product it prints and its shorthand, params (not counting biases) as the product it prints.
LECTURE_VGG16 = [
    ("INPUT", (224, 224, 3), 224 * 224 * 3, "150K", 0),
    ("CONV3-64", (224, 224, 64), 224 * 224 * 64, "3.2M", (3 * 3 * 3) * 64),
    ("CONV3-64", (224, 224, 64), 224 * 224 * 64, "3.2M", (3 * 3 * 64) * 64),
    ("POOL2", (112, 112, 64), 112 * 112 * 64, "800K", 0),
    ("CONV3-128", (112, 112, 128), 112 * 112 * 128, "1.6M", (3 * 3 * 64) * 128),
    ("CONV3-128", (112, 112, 128), 112 * 112 * 128, "1.6M", (3 * 3 * 128) * 128),
    ("POOL2", (56, 56, 128), 56 * 56 * 128, "400K", 0),
    ("CONV3-256", (56, 56, 256), 56 * 56 * 256, "800K", (3 * 3 * 128) * 256),
    ("CONV3-256", (56, 56, 256), 56 * 56 * 256, "800K", (3 * 3 * 256) * 256),
    ("CONV3-256", (56, 56, 256), 56 * 56 * 256, "800K", (3 * 3 * 256) * 256),
    ("POOL2", (28, 28, 256), 28 * 28 * 256, "200K", 0),
    ("CONV3-512", (28, 28, 512), 28 * 28 * 512, "400K", (3 * 3 * 256) * 512),
    ("CONV3-512", (28, 28, 512), 28 * 28 * 512, "400K", (3 * 3 * 512) * 512),
    ("CONV3-512", (28, 28, 512), 28 * 28 * 512, "400K", (3 * 3 * 512) * 512),
    ("POOL2", (14, 14, 512), 14 * 14 * 512, "100K", 0),
    ("CONV3-512", (14, 14, 512), 14 * 14 * 512, "100K", (3 * 3 * 512) * 512),
    ("CONV3-512", (14, 14, 512), 14 * 14 * 512, "100K", (3 * 3 * 512) * 512),
    ("CONV3-512", (14, 14, 512), 14 * 14 * 512, "100K", (3 * 3 * 512) * 512),
    ("POOL2", (7, 7, 512), 7 * 7 * 512, "25K", 0),
    ("FC", (1, 1, 4096), 4096, "4096", 7 * 7 * 512 * 4096),
    ("FC", (1, 1, 4096), 4096, "4096", 4096 * 4096),
    ("FC", (1, 1, 1000), 1000, "1000", 4096 * 1000),
]
LECTURE_PRINTED_PARAMS = [1_728, 36_864, 73_728, 147_456, 294_912, 589_824, 589_824, 1_179_648, 2_359_296, 2_359_296,
                          2_359_296, 2_359_296, 2_359_296, 102_760_448, 16_777_216, 4_096_000]


def _shorthand(n: int, text: str) -> bool:
    """Is the lecture's '3.2M' / '800K' ``n`` rounded to two significant digits (as it writes them)?"""
    if text[-1] not in "KM":
        return n == int(text)
    return float(f"{n:.2g}") == float(text[:-1]) * {"K": 1e3, "M": 1e6}[text[-1]]


@pytest.fixture(scope="module")
def vgg16_summary():
    return summary("vgg16")


def test_vgg16_every_lecture_row(vgg16_summary):
    rows = [r for r in vgg16_summary if r.type in ("Input", "Conv2d", "MaxPool2d", "Linear")]
    assert len(rows) == len(LECTURE_VGG16)
    for row, (kind, shape, memory, short, params) in zip(rows, LECTURE_VGG16):
        assert row.output_shape == shape, (row.name, kind)
        assert row.activations == memory and row.counted, (row.name, kind)
        assert _shorthand(row.activations, short), (row.name, short)
        assert row.weights == params, (row.name, kind)
        if kind.startswith(("CONV", "FC")):
            assert row.biases == shape[2]
    assert [r.weights for r in rows if r.weights] == LECTURE_PRINTED_PARAMS


def test_vgg16_totals(vgg16_summary):
    s = vgg16_summary
    assert s.total_params == 138_357_544
    assert s.total_weights == 138_344_128 == sum(p for *_, p in LECTURE_VGG16)
    assert s.total_activations == sum(m for _, _, m, _, _ in LECTURE_VGG16) == 15_237_608
    assert s.forward_bytes == 4 * 15_237_608 and s.backward_bytes == s.forward_bytes
    assert s["conv5_3"].rf == 196 and s["conv5_3"].jump == 16
    assert s["pool5"].rf == 212 and s["pool5"].jump == 32
    assert s["fc6"].rf == 224 and s["fc6"].jump == 0


def test_vgg16_not_counted_rows_are_relu_and_dropout(vgg16_summary):
    skipped = {r.type for r in vgg16_summary if not r.counted}
    assert skipped == {"ReLU", "Dropout"}


# -- rows and counting rules -------------------------------------------------------------------------------
def test_module_called_twice_gives_two_rows_and_counts_params_once(twice_net):
    s = summary(twice_net)
    assert [r.name for r in s] == ["input", "stem", "shared", "shared (2)", "head"]
    assert s["shared"].params == 4 * 4 * 9 + 4 and s["shared (2)"].params == 0
    assert s["shared (2)"].macs == s["shared"].macs
    assert s["shared (2)"].rf == 7 and s["shared"].rf == 5


def test_in_place_and_view_outputs_are_not_counted(inplace_net, bn_net):
    s = summary(inplace_net)
    assert [r.name for r in s if not r.counted] == ["features.1", "features.4"]
    assert s.total_activations == 3 * 16 * 16 + 6 * 16 * 16 + 6 * 8 * 8 + 8 * 8 * 8 + 8 * 4 * 4 + 5
    flatten = summary(bn_net)["classifier.0"]
    assert flatten.type == "Flatten" and not flatten.counted and flatten.output_shape == (1, 1, 256)


def test_non_square_one_channel_geometry(gray_net):
    s = summary(gray_net)
    assert s["input"].output_shape == (20, 28, 1)
    assert s["conv2"].output_shape == (4, 6, 8)
    # textbook: conv1 k5 -> rf 5; pool k3 s2 -> 5 + 2 = 7, jump 2; conv2 k(3,5) s2 p(1,2) -> 7 + 2*2, 7 + 4*2
    assert s["conv2"].rf == (11, 15) and s["conv2"].jump == 4 and s["conv2"].start == (-2, -4)
    assert s["fc"].rf == (20, 28)
    d = s.to_dict()["layers"][3]
    assert d["rf"] == [11, 15] and d["jump"] == 4


def test_batch_and_dtype_change_bytes_not_counts():
    one = summary("lenet")
    many = summary("lenet", batch_size=8, dtype=torch.float16)
    assert many.total_activations == one.total_activations
    assert many.bytes_per_value == 2
    assert many.forward_bytes == 8 * 2 * one.total_activations


def test_spec_string_and_zoo_name():
    s = summary("[CONV3-8-RELU]x2,POOL2,FC-10", (1, 8, 8))
    assert [r.name for r in s][:3] == ["input", "conv1", "relu1"]
    assert s["pool2"].output_shape == (4, 4, 8)
    assert summary("VGG16", (3, 32, 32))["pool5"].output_shape == (1, 1, 512)


# -- leaves the model as found; allocates nothing --------------------------------------------------------
def _snapshot(model):
    return ({n: (p, p.detach().clone(), p.requires_grad, p.device) for n, p in model.named_parameters()},
            {m: m.training for m in model.modules()})


def _assert_unchanged(model, snap):
    params, modes = snap
    for n, p in model.named_parameters():
        obj, value, grad, device = params[n]
        assert p is obj and p.requires_grad == grad and p.device == device and torch.equal(p, value)
        assert p.grad is None
    assert {m: m.training for m in model.modules()} == modes
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks


def test_leaves_model_as_found(tiny_resnet):
    tiny_resnet.train()
    tiny_resnet.layer2.eval()
    tiny_resnet.stem.weight.requires_grad_(False)
    snap = _snapshot(tiny_resnet)
    summary(tiny_resnet)
    _assert_unchanged(tiny_resnet, snap)


def test_leaves_model_as_found_when_forward_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(10, 2)).train()
    snap = _snapshot(model)
    with pytest.raises(ShapeError, match=r"layer 3 \(Linear\) failed on input of shape \(1, 64\)"):
        summary(model, (3, 6, 6))
    _assert_unchanged(model, snap)


def test_no_activation_memory_even_at_batch_256():
    model = convlens.create("vgg16")  # real weights, 528 MiB; activations at batch 256 would be 14.5 GiB
    t = time.perf_counter()
    s = summary(model, batch_size=256)
    assert time.perf_counter() - t < 5
    assert s.forward_bytes == 256 * 4 * 15_237_608
    from convlens.arch.tracing import trace

    x, calls, note = trace(model, (3, 224, 224), batch_size=256)
    assert x.is_meta and all(c.output.is_meta for c in calls) and note == ""


# -- bad input -----------------------------------------------------------------------------------------------
def test_unknown_zoo_name_suggests():
    with pytest.raises(UnknownModelError, match="Did you mean 'vgg1"):
        summary("vgg17")


def test_spec_errors_propagate():
    with pytest.raises(SpecError, match="expected a layer"):
        summary("CONV3-8,,FC-10")


def test_input_too_small_names_the_layer():
    with pytest.raises(ShapeError, match="pool5"):
        summary("vgg16", (3, 16, 16))
    with pytest.raises(ShapeError, match=r"expects input of shape \(N, 1, 32, 32\)"):
        summary(convlens.create("lenet", input_shape=(1, 32, 32)), (1, 16, 16))
    with pytest.raises(ShapeError, match=r"layer 0 \(Conv2d\) failed on input of shape \(1, 3, 3, 3\)"):
        summary(nn.Sequential(nn.Conv2d(3, 4, 5)), (3, 3, 3))


def test_failure_outside_modules_names_the_model():
    class Bad(nn.Module):
        def forward(self, x):
            return F.conv2d(x, torch.empty(2, 5, 3, 3, device=x.device))

    with pytest.raises(ShapeError, match=r"the forward of Bad failed on input of shape \(1, 3, 8, 8\)"):
        summary(Bad(), (3, 8, 8))


@pytest.mark.parametrize("bad", [(3, 0, 224), (3, -1, 4), (3, 224), (3, 2.5, 4), "224", (True, 4, 4)])
def test_bad_input_size(bad):
    with pytest.raises(InputError, match="input_size must be"):
        summary("lenet", bad)


def test_other_bad_arguments():
    with pytest.raises(InputError, match="input_size is required"):
        summary(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(InputError, match="batch_size must be a positive int; got 0"):
        summary("lenet", batch_size=0)
    with pytest.raises(InputError, match="dtype must be"):
        summary("lenet", dtype=torch.int64)
    with pytest.raises(InputError, match="model must be"):
        summary(42)


# -- the result object ----------------------------------------------------------------------------------------
def test_repr_is_the_table(vgg16_summary):
    text = repr(vgg16_summary)
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["layer", "type", "output", "memory"]
    assert any(line.startswith("conv5_3 ") and "100,352" in line and "2,359,296" in line for line in lines)
    assert "138,357,544" in text and "15,237,608" in text and "58.1 MiB" in text
    assert vgg16_summary._repr_html_().startswith("<pre>")


def test_json_schema_and_round_trip(tmp_path, vgg16_summary):
    d = json.loads(vgg16_summary.to_json())
    assert d == vgg16_summary.to_dict()
    for key in ("total_params", "total_weights", "total_activations", "forward_bytes"):
        assert isinstance(d[key], int)
    layer = d["layers"][1]
    assert {"name", "type", "output_shape", "activations", "weights", "biases", "params", "macs", "rf",
            "jump"} <= set(layer)
    assert layer["output_shape"] == [224, 224, 64] and layer["rf"] == 3 and layer["jump"] == 1
    path = tmp_path / "vgg16.json"
    vgg16_summary.save(path)
    assert os.listdir(tmp_path) == ["vgg16.json"]  # no temporary file left behind
    loaded = Summary.load(path)
    assert loaded.to_dict() == vgg16_summary.to_dict()
    assert repr(loaded) == repr(vgg16_summary)


def test_unknown_geometry_is_null():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.after = nn.Conv2d(4, 4, 3, padding=1)

        def forward(self, x):
            return self.after(F.interpolate(self.conv(x), scale_factor=2))

    s = summary(Up(), (3, 8, 8))
    assert s["conv"].rf == 3 and s["after"].rf is None
    assert s.to_dict()["layers"][2]["rf"] is None


def test_rows_lookup_errors(vgg16_summary):
    with pytest.raises(convlens.LayerNotFoundError, match="conv5_3"):
        vgg16_summary["conv5_4"]


# -- the command line -------------------------------------------------------------------------------------------
def _cli(argv, capsys):
    from convlens.cli import summary_cmd  # noqa: F401  (registers `summary` even before commands.py lists it)
    from convlens.cli.app import main

    try:
        main(argv)
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_prints_the_table_and_json(capsys):
    code, out, err = _cli(["summary", "vgg16", "--input", "224x224x3"], capsys)
    assert code == 0 and "conv5_3" in out and "138,357,544" in out
    code, out, _ = _cli(["summary", "[CONV3-8-RELU]x2,POOL2,FC-10", "--input", "32x32x1", "--json", "--batch", "4"],
                        capsys)
    d = json.loads(out)
    assert code == 0 and d["batch_size"] == 4 and d["layers"][0]["output_shape"] == [32, 32, 1]


@pytest.mark.parametrize("argv, message", [
    (["summary", "vgg17"], "Did you mean"),
    (["summary", "vgg16", "--input", "16x16x3"], "pool5"),
    (["summary", "vgg16", "--input", "big"], "--input must look like HxWxC"),
    (["summary", "lenet", "--batch", "0"], "batch_size must be a positive int"),
    (["summary", "CONV3-8,POOL2,,FC"], "expected a layer"),
])
def test_cli_errors_are_messages_with_exit_2(argv, message, capsys):
    code, out, err = _cli(argv, capsys)
    assert code == 2 and message in err and "Traceback" not in err + out


def test_flat_api():
    from convlens.arch.receptive import receptive_field

    assert convlens.summary is summary and convlens.Summary is Summary
    assert convlens.receptive_field is receptive_field


def test_a_run_and_its_cli_directory_are_summarized_as_the_net(small_run, capsys):
    own = summary(small_run.model, small_run.input_shape)
    s = summary(small_run)  # the run's input shape, the net's own rows (no normalization row)
    assert s.input_size == small_run.input_shape == (1, 16, 16) and s.model == "GrammarNet"
    assert [r.to_dict() for r in s.rows] == [r.to_dict() for r in own.rows]
    code, out, _ = _cli(["summary", str(small_run.dir), "--json"], capsys)
    d = json.loads(out)
    assert code == 0 and [row["name"] for row in d["layers"]] == [r.name for r in own.rows]
    assert d["total_params"] == sum(p.numel() for p in small_run.model.parameters())


def test_input_size_error_names_the_users_class():
    from convlens.training.runs import PixelModel

    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return self.conv(x)

    with pytest.raises(InputError, match="input_size is required for a Mine") as err:
        summary(PixelModel(Mine(), torch.zeros(3), torch.ones(3)))
    assert "PixelModel" not in str(err.value)
