"""convlens.invariance: distances against manual forwards, the resampling path against torch.roll /
rot90 / interpolate, the shapes re-rendering path, awkward models, and the paper's observation on a
trained model (higher layers more invariant to small translations than conv1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convlens
from convlens import InputError, LayerNotFoundError, datasets, parse
from convlens.insight.invariance import default_amounts, resample


def _shift_down(x: torch.Tensor, dy: int, fill: str) -> torch.Tensor:
    """Oracle: content moved dy rows down (negative: up), uncovered rows filled, by slicing."""
    out = torch.roll(x, dy, dims=2)
    if fill == "zeros":
        edge = torch.zeros_like(x[:, :, :1])
    if dy > 0:
        out[:, :, :dy] = x[:, :, :1] if fill == "border" else edge
    elif dy < 0:
        out[:, :, dy:] = x[:, :, -1:] if fill == "border" else edge
    return out


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


@pytest.fixture
def small_net():
    torch.manual_seed(0)
    return parse("CONV3-8,RELU,POOL2,CONV3-16,RELU,POOL2,FC-5", input_shape=(3, 16, 16)).eval()


# ---- resampling ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fill", ["border", "zeros"])
@pytest.mark.parametrize("dy", [3, -2, 1])
def test_integer_translation_equals_roll_with_fill(dy, fill):
    x = torch.rand(2, 3, 12, 10)
    got = resample(x, "translate", float(dy), fill=fill)
    torch.testing.assert_close(got, _shift_down(x, dy, fill), atol=1e-5, rtol=0)


def test_non_square_translation_and_identity():
    x = torch.rand(1, 1, 20, 28)
    torch.testing.assert_close(resample(x, "translate", 4.0, fill="zeros")[:, :, 4:], x[:, :, :-4], atol=1e-5, rtol=0)
    assert resample(x, "rotate", 360.0) is x and resample(x, "scale", 1.0) is x


def test_rotation_is_counter_clockwise_on_screen():
    x = torch.rand(1, 2, 8, 8)
    torch.testing.assert_close(resample(x, "rotate", 90.0), torch.rot90(x, 1, dims=(2, 3)), atol=1e-5, rtol=0)
    ramp = torch.arange(8.0).repeat(8, 1)[None, None]  # brighter to the right
    top_row = resample(ramp, "rotate", 90.0)[0, 0, 0]
    assert torch.all(top_row == top_row[0])  # the bright right edge is now the top edge: content turned CCW
    assert top_row[0] == 7


def test_scale_two_equals_upsampled_centre_crop():
    x = torch.rand(1, 3, 16, 12)
    up = F.interpolate(x[:, :, 4:12, 3:9], scale_factor=2, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resample(x, "scale", 2.0)[:, :, 1:-1, 1:-1], up[:, :, 1:-1, 1:-1], atol=1e-5, rtol=0)


def test_default_amounts_follow_image_size():
    assert default_amounts("translate", (64, 64)).tolist() == list(range(-16, 17, 2))
    assert default_amounts("translate", (224, 224))[[0, -1]].tolist() == [-56, 56]
    assert default_amounts("scale")[[0, 5, -1]].tolist() == [0.5, 1.0, 1.5]
    assert default_amounts("rotate")[[0, -1]].tolist() == [0, 360]


# ---- distances against manual forwards -------------------------------------------------------------------

def test_distances_equal_manual_forward(small_net):
    torch.manual_seed(1)
    x = torch.rand(3, 3, 16, 16)
    labels = [0, 3, 4]
    res = convlens.invariance(small_net, x, transform="translate", amounts=[-2, 0, 3], layers=["conv1", "conv2", "fc3"],
                              labels=labels, fill="border")
    assert res.tapped == ("relu1", "relu2", "fc3")  # grammar conv names are read after their ReLU
    f = small_net.features
    taps = {"conv1": lambda z: f[:2](z), "conv2": lambda z: f[:5](z), "fc3": lambda z: small_net(z)}
    with torch.no_grad():
        for a, dy in enumerate([-2, 0, 3]):
            xt = _shift_down(x, dy, "border")
            for li, name in enumerate(["conv1", "conv2", "fc3"]):
                f0 = taps[name](x).flatten(1).double().numpy()
                ft = taps[name](xt).flatten(1).double().numpy()
                want = np.linalg.norm(ft - f0, axis=1) / np.linalg.norm(f0, axis=1)
                np.testing.assert_allclose(res.distance[li, a], want, rtol=1e-4, atol=1e-6)
            p = _softmax(small_net(xt).double().numpy())
            np.testing.assert_allclose(res.p_true[a], p[np.arange(3), labels], rtol=1e-5, atol=1e-7)
            np.testing.assert_array_equal(res.predicted[a], p.argmax(1))


def test_zero_transform_gives_zero_distance_and_same_probabilities(small_net):
    x = torch.rand(4, 3, 16, 16)
    with torch.no_grad():
        p = _softmax(small_net(x).double().numpy())
    for transform, identity in (("translate", 0.0), ("scale", 1.0), ("rotate", 0.0), ("rotate", 360.0)):
        res = convlens.invariance(small_net, x, transform=transform, amounts=[identity], n_images=4)
        assert np.all(res.distance == 0)
        np.testing.assert_allclose(res.p_true[0], p[np.arange(4), p.argmax(1)], rtol=1e-6)
        assert res.label_source == "predicted"


def test_residual_model_with_functional_relus(tiny_resnet):
    x = torch.rand(2, 3, 32, 32)
    res = convlens.invariance(tiny_resnet, x, transform="rotate", amounts=[0, 30, 90])
    assert res.layers[0] == "stem" and res.layers[-1] == "fc" and len(res.layers) == 4
    m = tiny_resnet
    with torch.no_grad():  # manual forward to layer2.conv1's output
        def tap(z):
            return m.layer2.conv1(m.layer1(F.relu(m.stem(z))))
        f0 = tap(x).flatten(1).double().numpy()
        ft = tap(resample(x, "rotate", 30.0)).flatten(1).double().numpy()
    res2 = convlens.invariance(tiny_resnet, x, transform="rotate", amounts=[30], layers=["layer2.conv1"])
    want = np.linalg.norm(ft - f0, axis=1) / np.linalg.norm(f0, axis=1)
    np.testing.assert_allclose(res2.distance[0, 0], want, rtol=1e-4)
    assert np.all(res.distance[:, 0] == 0) and np.all(res.distance[:, 1] > 0)


def test_gray_non_square_model(gray_net):
    x = torch.rand(3, 1, 20, 28)
    res = convlens.invariance(gray_net, x, transform="translate", labels=[0, 1, 2], fill="zeros")
    assert res.amounts.tolist() == list(range(-5, 6))
    assert res.distance.shape == (3, 11, 3)  # conv1, conv2 (first/middle/last conv collapse), fc
    assert res.layers == ("conv1", "conv2", "fc")
    assert np.all(res.distance[:, 5] == 0) and np.isfinite(res.distance).all()


def test_model_left_as_found(bn_net):
    bn_net.train()
    before = {k: v.clone() for k, v in bn_net.state_dict().items()}
    convlens.invariance(bn_net, torch.rand(2, 3, 16, 16), transform="scale", amounts=[0.8, 1.2])
    assert bn_net.training and all(m.training for m in bn_net.modules())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in bn_net.modules())
    assert all(torch.equal(before[k], v) for k, v in bn_net.state_dict().items())  # BN statistics untouched


def test_errors(small_net):
    x = torch.rand(1, 3, 16, 16)
    with pytest.raises(InputError, match="transform must be one of"):
        convlens.invariance(small_net, x, transform="shear")
    with pytest.raises(LayerNotFoundError, match="conv1"):
        convlens.invariance(small_net, x, layers=["conv11"])
    with pytest.raises(InputError, match="positive scale"):
        convlens.invariance(small_net, x, transform="scale", amounts=[0, 1])
    with pytest.raises(InputError, match="images_or_data must be given"):
        convlens.invariance(small_net)


# ---- the shapes path: exact re-rendering ------------------------------------------------------------------

def test_shapes_are_re_rendered_exactly():
    ds = datasets.load("shapes", split="test", n=30, size=32)
    torch.manual_seed(0)
    net = parse("CONV3-8,RELU,POOL2,CONV3-8,RELU,GAP,FC-10", input_shape=(3, 32, 32)).eval()
    res = convlens.invariance(net, ds, transform="scale", amounts=[0.75, 1.0, 1.25], n_images=3,
                              layers=["conv1"])
    assert res.method == "render" and len(set(res.labels.tolist())) == 3  # three different classes
    rows = list(res.indices)
    with torch.no_grad():
        f0 = net.features[:2](ds.images[rows]).flatten(1).double().numpy()
        for a, s in enumerate([0.75, 1.0, 1.25]):
            xt = ds.generator.render_batch([ds.params[i] for i in rows], scale=s)[0]
            ft = net.features[:2](xt).flatten(1).double().numpy()
            want = np.linalg.norm(ft - f0, axis=1) / np.linalg.norm(f0, axis=1)
            np.testing.assert_allclose(res.distance[0, a], want, rtol=1e-4, atol=1e-7)
    resampled = convlens.invariance(net, ds.images[rows], transform="scale", amounts=[0.75], layers=["conv1"])
    assert resampled.method == "resample"


# ---- result object, CLI, report ---------------------------------------------------------------------------

def test_result_round_trip_and_plot(small_net):
    res = convlens.invariance(small_net, torch.rand(2, 3, 16, 16), transform="rotate", amounts=[0, 45])
    back = type(res).from_dict(res.to_dict())
    np.testing.assert_array_equal(back.distance, res.distance)
    np.testing.assert_array_equal(back.predicted, res.predicted)
    assert "Invariance to rotate" in repr(res) and "45°" in repr(res)
    fig = res.plot()
    assert len(fig.axes) == 3


@pytest.mark.slow
def test_cli_saves_result_and_report_section_reads_it(demo_run_dir, capsys):
    demo_copy = demo_run_dir
    from convlens.cli import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.invariance import invariance as section

    main(["invariance", str(demo_copy), "--transform", "translate", "--amounts", "-4,0,4", "--n", "2"])
    out = capsys.readouterr().out
    assert "Invariance to translate (re-rendered)" in out and "conv1" in out
    assert list((demo_copy / "results").glob("invariance-translate@*.json"))  # options given: beside the default
    sec = section(ReportContext(convlens.load_run(demo_copy), demo_copy / "report"))
    assert sec is not None and [b.kind for b in sec.blocks][:2] == ["metrics", "figure"]


def _train_digits_net():
    """A small CNN trained here on 16x16 digits by a plain loop (a few seconds on 2 cores)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        data = datasets.load("digits", size=16)
        net = parse("CONV3-16,RELU,POOL2,CONV3-32,RELU,POOL2,CONV3-32,RELU,GAP,FC-10", input_shape=(1, 16, 16))
        opt = torch.optim.Adam(net.parameters(), lr=3e-3)
        for _ in range(4):
            perm = torch.randperm(len(data))
            for i in range(0, len(perm), 64):
                loss = F.cross_entropy(net(data.images[perm[i:i + 64]] - 0.5), data.labels[perm[i:i + 64]])
                opt.zero_grad()
                loss.backward()
                opt.step()
    test = datasets.load("digits", split="test", size=16)
    return net.eval(), (test.images - 0.5, test.labels)


@pytest.mark.slow
def test_trained_model_higher_layers_more_invariant_to_small_translations():
    """Zeiler & Fergus: small translations change layer 1 a lot, the top feature layers much less
    (resampled digits, +-1 and +-2 px)."""
    net, test = _train_digits_net()
    res = convlens.invariance(net, test, transform="translate", amounts=[-2, -1, 1, 2])
    md = res.mean_distance
    assert res.layers[0] == "conv1" and res.tapped[0] == "relu1"
    assert md[-2].mean() < 0.8 * md[0].mean()  # the last conv vs conv1


@pytest.mark.slow
def test_demo_model_higher_layers_more_invariant_to_small_translations(demo_run_dir):
    """The same on the demo shapesnet: re-rendered shapes, +-2 and +-4 px."""
    res = convlens.invariance(convlens.load_run(demo_run_dir), transform="translate", amounts=[-4, -2, 2, 4])
    md = res.mean_distance  # (L, A): conv1, conv3, conv4, fc5
    assert res.layers[0] == "conv1" and res.tapped[0] == "relu1"
    assert md[-1].mean() < 0.5 * md[0].mean()  # the class scores vs conv1
    assert md[-2].mean() < 0.8 * md[0].mean()  # the last conv vs conv1


def test_dtype_follows_the_model_and_labels_are_checked(small_net):
    x = torch.rand(2, 3, 16, 16)
    res = convlens.invariance(small_net.double(), x, transform="translate", amounts=[0, 2], labels=[1, 2])
    assert np.isfinite(res.distance).all() and next(small_net.parameters()).dtype == torch.float64
    with pytest.raises(InputError, match=r"labels must be classes in \[0, 4\]"):
        convlens.invariance(small_net, x, amounts=[0, 2], labels=[1, 7])
