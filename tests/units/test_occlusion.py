"""convlens.occlusion: every path equals a naive loop (one forward per position, written here), on the
awkward fixture models, grammar nets and a kitchen-sink model; the fallback for untraceable forwards;
approximate mode within the error it reports; results, plots, CLI and report section; the model left
as found; clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import convlens
from convlens import InputError, LayerNotFoundError
from convlens.units.occlusion import OcclusionMap, OcclusionMaps, load_maps, occlusion

from conftest import FIXTURE_MODELS


def naive(model, x, window, stride, baseline=0.0, layer=None, unit=None):
    """Oracle: one plain forward per position; P = softmax(output); the layer read by a forward hook."""
    c, h, w = x.shape
    fill = torch.as_tensor(baseline, dtype=x.dtype).reshape(-1, 1, 1).expand(c, 1, 1)
    module = dict(model.named_modules())[layer] if layer is not None else None
    seen = {}
    handle = module.register_forward_hook(lambda m, a, o: seen.update(out=o.detach().clone())) if module else None
    probs, acts = [], []
    try:
        with torch.no_grad():
            for r in range(0, h - window + 1, stride):
                for q in range(0, w - window + 1, stride):
                    y = x.clone()
                    y[:, r:r + window, q:q + window] = fill
                    probs.append(torch.softmax(model(y[None]).double(), 1)[0])
                    if module is not None:
                        acts.append(seen["out"][0, unit].double().sum())
    finally:
        if handle is not None:
            handle.remove()
    rows, cols = len(range(0, h - window + 1, stride)), len(range(0, w - window + 1, stride))
    p = torch.stack(probs).reshape(rows, cols, -1).numpy()
    return p, (torch.stack(acts).reshape(rows, cols).numpy() if acts else None)


def assert_matches(result, model, x, window, stride, baseline=0.0, layer_path=None, atol=1e-5):
    p, act = naive(model, x, window, stride, baseline, layer_path, result.unit)
    np.testing.assert_allclose(result.p_target, p[..., result.target], atol=atol, rtol=0)
    np.testing.assert_allclose(result.top_prob, p.max(-1), atol=atol, rtol=0)
    assert (result.top_class == p.argmax(-1)).mean() > 0.99  # ties aside, the same class
    if act is not None:
        np.testing.assert_allclose(result.activation, act, atol=atol, rtol=1e-5)


class KitchenSink(nn.Module):
    """Every kind of op the incremental engine re-runs on patches, plus ones it must hand to the full path."""

    input_shape = (2, 19, 23)

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(2, 6, 4, padding="same", dilation=2)            # asymmetric 'same' padding
        self.b = nn.Conv2d(2, 4, 3, stride=2, padding=2)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 1, 1)                                      # count_include_pad
        self.avg_excl = nn.AvgPool2d(3, 2, 1, count_include_pad=False)        # not local: full path
        self.c = nn.Conv2d(10, 8, 1)
        self.register_buffer("mask", torch.linspace(0.5, 1.5, 19 * 23).reshape(1, 1, 19, 23))
        self.fc = nn.Linear(8 * 5 * 6, 4)

    def forward(self, x):                                                    # (N, 2, 19, 23)
        x = x * self.mask - torch.tensor(0.1)                                 # a constant map: cropped per patch
        a = F.leaky_relu(self.a(x), 0.1)                                      # (N, 6, 19, 23)
        a = self.pool(self.avg(a))                                            # (N, 6, 10, 12)
        b = torch.sigmoid(self.b(x))                                          # (N, 4, 11, 13)
        b = F.interpolate(b, size=(10, 12))                                   # unknown to the engine
        y = torch.cat([a, b], dim=1).relu_()                                  # (N, 10, 10, 12)
        y = self.avg_excl(self.c(y))                                          # (N, 8, 5, 6)
        return self.fc(y.reshape(y.size(0), -1))


class FoldNet(nn.Module):
    """Batch norms with drawn running statistics that the replay folds into their convolutions (with and
    without affine, after a depthwise convolution) and one it must not fold (its input is read again);
    activations whose input dies (run in place) and one whose input lives on under another name."""

    input_shape = (3, 18, 14)

    def __init__(self):
        super().__init__()
        self.a, self.bn_a = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn_dw = nn.Conv2d(8, 8, 3, 2, 1, groups=8, bias=False), nn.BatchNorm2d(8, affine=False)
        self.b, self.bn_b = nn.Conv2d(8, 8, 1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)
        for bn in (self.bn_a, self.bn_dw, self.bn_b):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            if bn.affine:
                nn.init.uniform_(bn.weight, 0.5, 2)
                nn.init.uniform_(bn.bias, -1, 1)

    def forward(self, x):                                                    # (N, 3, 18, 14)
        a = F.relu6(self.bn_a(self.a(x)))                                     # folded; ReLU6 in place
        d = self.bn_dw(self.dw(a))                                            # folded: (N, 8, 9, 7)
        e = F.relu(d.float())                                                 # d.float() is d, read again below
        y = self.b(e)
        z = self.bn_b(y) + y                                                  # y read twice: not folded
        return self.fc((z + d).mean((2, 3)))


class ValueBranch(nn.Module):
    """Control flow on tensor values: a recording of one image cannot stand for the others."""

    input_shape = (3, 12, 12)

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if y.mean() > 0.2:                                                    # depends on the occluder
            y = y * 2
        return self.fc(y.mean((2, 3)))


class _Unused(nn.Module):
    """A model with a layer its forward never calls."""

    def __init__(self, net):
        super().__init__()
        self.net, self.unused = net, nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.net(x)


def _seeded(cls):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return cls().eval()


def _image(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g)


CASES = [  # model, window, stride, layer (a module path)
    ("tiny_resnet", 8, 3, "layer2.conv2"), ("tiny_resnet", 5, 5, None), ("bn_net", 4, 4, "features.5"),
    ("bn_net", 6, 3, None), ("inplace_net", 5, 2, "features.1"), ("gray_net", 6, 4, "conv2"),
    ("gray_net", 7, 5, None), ("twice_net", 3, 2, "stem"),
]


@pytest.mark.parametrize("name,window,stride,layer", CASES)
def test_incremental_equals_naive_loop(name, window, stride, layer):
    model = FIXTURE_MODELS[name]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=window, stride=stride, baseline=0.3, layer=layer, batch_size=7)
    assert result.method == "incremental", result.note
    assert_matches(result, model, x, window, stride, 0.3, layer)


@pytest.mark.parametrize("rho", [0.05, 1.0])
def test_threshold_to_full_maps_changes_nothing(rho):
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image((3, 20, 16))  # non-square: the resnet pools globally
    result = occlusion(model, x, window=6, stride=5, layer="layer1.conv2", unit=3, rho=rho)
    assert result.method == "incremental"
    assert_matches(result, model, x, 6, 5, 0.0, "layer1.conv2")


@pytest.mark.parametrize("batch_size", [1, 3])
def test_whole_maps_of_one_channel_one_position_at_a_time(batch_size):
    """A (1, 1, H, W) map is channels-last already: the replay must copy it, not paste into the recording."""
    model = FIXTURE_MODELS["gray_net"]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=6, stride=4, rho=0.01, batch_size=batch_size)
    assert result.method == "incremental"
    assert_matches(result, model, x, 6, 4)


def test_incremental_recomputes_patches_not_whole_maps():
    from convlens.units.incremental import Incremental
    from convlens.units.opgraph import record

    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    graph = record(model, _image((3, 32, 32))[None])
    engine = Incremental(graph, np.array([[0, 0], [12, 20]]), 4)
    assert graph.problem is None and engine.local_ops >= 8  # stem ... layer2 on patches


def test_grammar_net_with_lecture_layer_and_strongest_unit():
    net = _seeded(lambda: convlens.parse("CONV5-8/2,BN,RELU,POOL3/2c,CONV3-16,LRN,RELU,AVGPOOL2,CONV3-16,TANH,"
                                         "DROPOUT,GAP,FC-6,SOFTMAX", input_shape=(3, 30, 26)))
    x = _image((3, 30, 26), seed=1)
    result = occlusion(net, x, window=9, stride=4, layer="conv3")
    totals = convlens.capture  # the strongest unit is the largest total activation on the clean image
    with torch.no_grad(), totals(net, ["conv3"]) as acts:
        net(x[None])
    assert result.unit == int(acts["conv3"][0].sum((1, 2)).argmax())
    assert result.method == "incremental"
    assert_matches(result, net, x, 9, 4, 0.0, "features.conv3")


@pytest.mark.parametrize("layer", [None, "a", "bn_a", "b"])
def test_batch_norms_folded_into_convolutions_and_activations_in_place(layer):
    from convlens.units.incremental import Incremental
    from convlens.units.opgraph import record

    model = _seeded(FoldNet)
    x = _image(model.input_shape, seed=3)
    result = occlusion(model, x, window=5, stride=2, baseline=0.5, layer=layer, batch_size=6)
    assert result.method == "incremental", result.note
    assert_matches(result, model, x, 5, 2, 0.5, layer)
    module = dict(model.named_modules())[layer] if layer else None
    steps = Incremental(record(model, x[None], module), np.array([[0, 0], [9, 6]]), 5).plan.steps
    assert sum(step.kind == "alias" for step in steps) == (1 if layer == "a" else 2)  # never bn_b; not a layer


def test_kitchen_sink_model_and_per_channel_baseline():
    model = _seeded(KitchenSink)
    x = _image(model.input_shape, seed=2)
    result = occlusion(model, x, window=5, stride=3, baseline=[0.2, 0.8], layer="c", unit=5, batch_size=16)
    assert result.method == "incremental" and result.baseline == (0.2, 0.8)
    assert_matches(result, model, x, 5, 3, [0.2, 0.8], "c")


def test_untraceable_forward_falls_back_exactly():
    model = _seeded(ValueBranch)
    x = _image((3, 12, 12), seed=3)
    result = occlusion(model, x, window=4, stride=2, layer="conv", unit=1)
    assert result.method == "full" and "control flow" in result.note
    assert_matches(result, model, x, 4, 2, 0.0, "conv")
    forced = occlusion(FIXTURE_MODELS["bn_net"]().eval(), _image((3, 16, 16)), window=4, stride=4, method="full")
    assert forced.method == "full" and forced.note == ""


def test_approximate_mode_reports_its_error():
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image((3, 32, 32), seed=4)
    p, _ = naive(model, x, 8, 4)
    n = p.shape[0] * p.shape[1]
    everywhere = occlusion(model, x, window=8, stride=4, method="approximate", tau=0.3, check=n)  # every block
    true_error = np.abs(everywhere.p_target - p[..., everywhere.target]).max()
    assert everywhere.method == "approximate" and everywhere.tau == 0.3 and everywhere.bound == "guaranteed"
    assert everywhere.approx_error == pytest.approx(true_error, abs=1e-9)  # measured at every truncated position
    sampled = occlusion(model, x, window=8, stride=4, method="approximate", tau=0.3)
    assert sampled.bound == "sampled" and sampled.verified.sum() < n
    assert sampled.verified_error <= true_error + 1e-9 <= sampled.approx_error
    exact = occlusion(model, x, window=8, stride=4, method="approximate", tau=1.0, check=0)
    np.testing.assert_allclose(exact.p_target, p[..., exact.target], atol=1e-5)  # tau=1 caps nothing
    assert exact.approx_error is None and "not verified" in exact.note
    strict = occlusion(model, x, window=8, stride=4, method="approximate", tau=0.2, max_error=1e-9)
    assert strict.method == "incremental" and "recomputed exactly" in strict.note and strict.approx_error is None
    np.testing.assert_allclose(strict.p_target, p[..., strict.target], atol=1e-5)


def test_run_targets_by_name_batches_and_model_left_as_found(small_run):
    model = small_run.pixel_model()  # the session's run: put back as found whatever happens below
    flags = [p.requires_grad for p in model.parameters()]
    try:
        model.train()
        for prm in list(model.parameters())[:2]:
            prm.requires_grad_(False)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        grads = [p.requires_grad for p in model.parameters()]
        x = _image((2, 1, 16, 16), seed=5)
        maps = occlusion(small_run, x, target="7", window=6, stride=5, layer="conv2")
        assert isinstance(maps, OcclusionMaps) and len(maps) == 2
        assert all(m.target == 7 and m.name(7) == "7" for m in maps)
        model.eval()
        assert_matches(maps[1], model, x[1], 6, 5, 0.5, "net.features.conv2")  # a Run's default: the grey square
        model.train()
        with pytest.raises(InputError, match="unit"):
            occlusion(small_run, x[0], window=6, stride=5, layer="conv2", unit=99)
        assert all(m.training for m in model.modules())
        assert [p.requires_grad for p in model.parameters()] == grads
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    finally:
        model.eval()
        for prm, flag in zip(model.parameters(), flags):
            prm.requires_grad_(flag)


def test_result_save_load_repr_and_plot(tmp_path, gray_net):
    result = occlusion(gray_net, _image((1, 20, 28)), window=6, stride=4, layer="conv1")
    result.save(tmp_path / "occ.json")
    back = OcclusionMap.load(tmp_path / "occ.json")
    np.testing.assert_array_equal(back.p_target, result.p_target)
    np.testing.assert_array_equal(back.image, result.image)
    assert back.to_dict() == result.to_dict()
    assert "4x6 positions" in repr(result) and "conv1 unit" in repr(result)
    assert result.positions.shape == (24, 2) and tuple(result.positions[-1]) == (12, 20)
    assert result._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("kwargs,match", [
    (dict(window=21), "window"), (dict(window=0), "window"), (dict(window=2.5), "window"),
    (dict(stride=0), "stride"), (dict(stride=True), "stride"), (dict(method="fast"), "method"),
    (dict(tau=0.0), "tau"), (dict(baseline=[0.1, 0.2]), "baseline"), (dict(unit=2), "layer"),
    (dict(target=7), "target"), (dict(target="cat"), "class name"), (dict(batch_size=0), "batch_size"),
])
def test_clear_errors(gray_net, kwargs, match):
    with pytest.raises(InputError, match=match):
        occlusion(gray_net, _image((1, 20, 28)), **{"window": 4, **kwargs})


def test_clear_errors_for_inputs_and_layers(gray_net):
    with pytest.raises(InputError, match="x must be a float image"):
        occlusion(gray_net, torch.zeros(20, 28, dtype=torch.uint8))
    with pytest.raises(LayerNotFoundError, match="conv1"):
        occlusion(gray_net, _image((1, 20, 28)), layer="conv9")
    with pytest.raises(InputError, match="did not run"):
        occlusion(_Unused(gray_net), _image((1, 20, 28)), layer="unused", window=4)
    with pytest.raises(InputError, match="class scores"):
        occlusion(nn.Sequential(gray_net, nn.Unflatten(1, (1, 3))), _image((1, 20, 28)))
    assert not any(m._forward_hooks for m in gray_net.modules())


def test_cli_saves_maps_and_report_section_reads_them(small_run, tmp_path, capsys):
    import shutil

    from convlens.cli import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.occlusion import occlusion as section

    run = tmp_path / "run"
    shutil.copytree(small_run.dir, run, ignore=shutil.ignore_patterns("results", "report"))
    main(["occlusion", str(run), "--index", "0", "--index", "3", "--window", "6", "--stride", "2"])
    out = capsys.readouterr().out
    assert "OcclusionMap" in out and "saved:" in out
    [saved] = (run / "results").glob("occlusion@*.json")  # options given: kept beside the default result
    maps = load_maps(saved)
    assert [m.index for m in maps] == [0, 3] and maps[0].layer == "relu3" and maps[0].image.shape == (1, 16, 16)
    assert saved.with_suffix(".png").is_file()
    sec = section(ReportContext(convlens.load_run(run), run / "report"))
    assert [b.kind for b in sec.blocks][:3] == ["metrics", "figure", "table"]
    with pytest.raises(SystemExit) as err:
        main(["occlusion", str(run), "--window", "40"])
    assert err.value.code == 2


def test_report_states_the_approximate_bound(small_run, tmp_path):
    import shutil

    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.occlusion import occlusion as section
    from convlens.units.occlusion import save_maps

    run = tmp_path / "run"
    shutil.copytree(small_run.dir, run, ignore=shutil.ignore_patterns("results", "report"))
    x = _image((1, 16, 16), seed=3)
    kept = occlusion(small_run, x, window=4, stride=2, method="approximate", tau=0.2, max_error=1.0)
    assert kept.method == "approximate" and kept.bound in ("guaranteed", "sampled")
    save_maps([kept], run / "results" / "occlusion.json")
    text = " ".join(getattr(b, "text", "") for b in section(ReportContext(convlens.load_run(run), run / "r")).blocks)
    assert f"|ΔP(target)| ≤ {kept.approx_error:.3g} against the exact map, {kept.bound}" in text
    exact = occlusion(small_run, x, window=4, stride=2, method="approximate", tau=0.2)  # off: recomputed exactly
    save_maps([exact], run / "results" / "occlusion.json")
    text = " ".join(getattr(b, "text", "") for b in section(ReportContext(convlens.load_run(run), run / "r")).blocks)
    assert exact.method == "incremental" and "Approximate mode" not in text and "recomputed exactly" in text


def test_cli_on_an_image_file(small_run, tmp_path, capsys):
    import json

    from PIL import Image

    from convlens.cli import main

    Image.fromarray((np.random.default_rng(0).random((20, 24)) * 255).astype(np.uint8)).save(tmp_path / "d.png")
    out = tmp_path / "o.json"
    main(["occlusion", str(small_run.dir), str(tmp_path / "d.png"), "--window", "5", "--stride", "3", "--target", "3",
          "--out", str(out), "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert shown["target_name"] == "3" and shown["image_shape"] == [1, 16, 16] and len(shown["rows"]) == 4
    assert load_maps(out)[0].to_dict() == shown


def test_demo_model_exact_and_approximate_within_its_bound(demo_run_dir):
    run = convlens.load_run(demo_run_dir)
    x = convlens.datasets.load("shapes", split="test", size=64, n=4).images[3]
    model = run.pixel_model()
    exact = occlusion(run, x, window=16, stride=8, baseline=0.5, layer="relu4")
    assert exact.method == "incremental"
    assert_matches(exact, model, x, 16, 8, 0.5, "net.features.relu4")
    approx = occlusion(run, x, window=16, stride=8, baseline=0.5, method="approximate", check=49)
    p, _ = naive(model, x, 16, 8, 0.5)
    error = np.abs(approx.p_target - p[..., approx.target]).max()
    assert error <= 0.02 + 1e-6  # every position checked: within max_error, or recomputed exactly
    assert approx.method == "incremental" or approx.approx_error == pytest.approx(error, abs=1e-6)


def test_the_default_baseline_is_grey_for_a_run_as_in_the_cli(small_run, gray_net):
    """Python and CLI agree on a Run (0.5: grey in its [0, 1] pixels); a bare module gets 0, the mean of
    normalized input."""
    import inspect

    from convlens.cli.occlusion_cmds import occlusion_cmd

    cli_default = inspect.signature(occlusion_cmd).parameters["baseline"].default.default
    x = _image((1, 16, 16), seed=2)
    assert occlusion(small_run, x, window=6, stride=5).baseline == (cli_default,) == (0.5,)
    assert occlusion(gray_net, _image((1, 20, 28)), window=6, stride=4).baseline == (0.0,)
