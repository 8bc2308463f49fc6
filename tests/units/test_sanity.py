"""Sanity checks (Adebayo et al. 2018): a map that ignores the model (an edge filter of the image) is flagged and
the plain gradient passes; the cascade re-initializes exactly the documented layers, top down, on a copy; every
similarity equals scipy's Spearman / skimage's SSIM recomputed from maps made independently on the cascade's
copies; shuffled-label training; the command and the report section; bad input gets named errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from skimage.metrics import structural_similarity
from torch import nn

from conftest import FIXTURE_MODELS, SMALL_SPEC, assert_as_found, model_state

import convlens
from convlens import InputError, LayerNotFoundError
from convlens.units.backprop import saliency
from convlens.units.cascade import cascade, cascade_layers
from convlens.units.sanity import DEPENDS, INDEPENDENT, SanityResult, sanity_check

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is faster on a busy machine

# the documented rule applied by hand: pure containers opened, layers with parameters in forward order, a
# normalization joined to the layer before it, top first
CASCADE = {
    "tiny_resnet": [("fc",), ("layer3",), ("layer2",), ("layer1",), ("stem",)],
    "bn_net": [("classifier.4",), ("classifier.1", "classifier.2"), ("features.4", "features.5"),
               ("features.0", "features.1")],
    "gray_net": [("fc",), ("conv2",), ("conv1",)],
    "twice_net": [("head",), ("shared",), ("stem",)],
    "inplace_net": [("fc",), ("conv",), ("features.3",), ("features.0",)],
}


def edges(model, x, targets):
    """Sobel gradient magnitude of the image: a "saliency map" that never looks at the model."""
    k = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
    grey = x.mean(1, keepdim=True)
    gx, gy = F.conv2d(grey, k[None, None], padding=1), F.conv2d(grey, k.T[None, None], padding=1)
    return (gx ** 2 + gy ** 2).sqrt()[:, 0]                          # (N, H, W)


@pytest.fixture(scope="module")
def random_labels_run(tmp_path_factory):
    """The small run's network trained on the same digits with shuffled labels (about a second)."""
    from convlens import datasets
    from convlens.training.fit import train

    data = datasets.load("digits", split="train", size=16, n=600)
    test = datasets.load("digits", split="test", size=16, n=200)
    return train(SMALL_SPEC, data, test_data=test, out=tmp_path_factory.mktemp("rl") / "run", epochs=6, batch_size=20,
                 lr=1e-3, augment=False, progress=False, shuffle_labels=True)


def _digits(run, n=6):
    from convlens.training.evaluate import run_test_data

    return run_test_data(run).images[:n]


# ---- the verdicts -----------------------------------------------------------------------------------------------

def test_an_edge_filter_is_flagged_and_the_gradient_passes(small_run, random_labels_run):
    x = _digits(small_run)
    res = sanity_check(small_run, x, methods=["saliency", edges], random_labels_model=random_labels_run)
    v = res.verdicts()
    assert v["edges"]["model"] == INDEPENDENT and not v["edges"]["passes"]
    assert v["edges"]["rank_abs"] == pytest.approx(1.0) and v["edges"]["data_rank_abs"] == pytest.approx(1.0)
    assert v["saliency"]["model"] == DEPENDS and v["saliency"]["passes"]
    assert v["saliency"]["data"].startswith("depends on the labels")
    assert res.steps == ("fc4", "conv3", "conv2+bn2", "conv1+bn1") and res.spearman_abs.shape == (2, 4, 6)
    assert "edges" in repr(res) and "NO" in repr(res)


def test_similarities_equal_scipy_and_skimage_on_independently_made_maps(bn_net):
    """The cascade's copies (public ``cascade``) give the maps; scipy and skimage give the numbers."""
    torch.manual_seed(0)
    x = torch.rand(3, 3, 16, 16)
    state = model_state(bn_net)
    res = sanity_check(bn_net, x, methods=["saliency"], seed=5)
    assert_as_found(bn_net, state)
    with torch.no_grad():
        targets = bn_net(x).argmax(1)
    trained = saliency(bn_net, x, targets).numpy()                  # (N, H, W) >= 0
    scaled = lambda a: np.clip(a / np.percentile(a, 99), 0, 1)     # noqa: E731  the documented SSIM input
    for k, copy in enumerate(cascade(bn_net, cascade_layers(bn_net, x), seed=5)):
        random = saliency(copy, x, targets).numpy()
        for i in range(3):
            assert res.spearman_abs[0, k, i] == pytest.approx(spearmanr(trained[i].ravel(), random[i].ravel())[0],
                                                              abs=1e-9)
            want = structural_similarity(scaled(trained[i]), scaled(random[i]), data_range=1.0, win_size=7)
            assert res.ssim[0, k, i] == pytest.approx(want, abs=1e-6)
    assert np.array_equal(res.targets, targets.numpy())


# ---- the cascade ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_cascade_layers_follow_the_documented_rule(name):
    model = FIXTURE_MODELS[name]().eval()
    x = torch.rand(1, *model.input_shape)
    assert cascade_layers(model, x) == CASCADE[name]


class Backwards(nn.Module):
    """Registered in another order than the forward runs it, with a layer the forward never uses."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.unused = nn.Linear(3, 3)
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_forward_order_unused_layers_merging_and_named_steps(tiny_resnet):
    assert cascade_layers(Backwards(), torch.rand(1, 1, 8, 8)) == [("fc",), ("conv",)]
    x = torch.rand(1, 3, 32, 32)
    assert cascade_layers(tiny_resnet, x, max_steps=3) == [("fc", "layer3"), ("layer2",), ("layer1", "stem")]
    assert cascade_layers(tiny_resnet, x, layers=["fc", ["layer3", "layer2"]]) == [("fc",), ("layer3", "layer2")]
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        cascade_layers(tiny_resnet, x, layers=["fc", "layer9"])
    with pytest.raises(InputError, match="max_steps must be a positive int"):
        cascade_layers(tiny_resnet, x, max_steps=0)


def test_cascade_reinitializes_top_down_one_step_more_each_time_on_a_copy(bn_net):
    torch.manual_seed(1)
    with torch.no_grad():  # trained-looking normalization, so that re-initializing it shows
        for bn in (bn_net.features[1], bn_net.features[5], bn_net.classifier[2]):
            bn.weight.uniform_(0.5, 2), bn.bias.uniform_(-1, 1), bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
    steps = cascade_layers(bn_net, torch.rand(1, 3, 16, 16))
    state, rng = model_state(bn_net), torch.random.get_rng_state()
    original = {k: v.clone() for k, v in bn_net.state_dict().items()}
    for k, copy in enumerate(cascade(bn_net, steps, seed=3)):
        randomized = {p for s in steps[:k + 1] for p in s}
        for key, value in copy.state_dict().items():
            if key.endswith("num_batches_tracked"):
                continue
            module = key.rsplit(".", 1)[0]
            assert torch.equal(value, original[key]) == (module not in randomized), key
        for module in randomized:  # BatchNorm back to PyTorch's initialization
            m = copy.get_submodule(module)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.running_var,
                                                                                   torch.ones_like(m.running_var))
    assert_as_found(bn_net, state)
    assert torch.equal(torch.random.get_rng_state(), rng)
    again = [c.state_dict()["features.0.weight"].clone() for c in cascade(bn_net, steps, seed=3)]
    other = [c.state_dict()["features.0.weight"].clone() for c in cascade(bn_net, steps, seed=4)]
    assert torch.equal(again[-1], copy.state_dict()["features.0.weight"]) and not torch.equal(again[-1], other[-1])


# ---- shuffled labels ------------------------------------------------------------------------------------------

def test_shuffled_label_training_permutes_the_labels_and_learns_nothing(small_run, random_labels_run):
    from convlens import datasets
    from convlens.training.fit import shuffled_labels, train

    data = datasets.load("digits", split="train", size=16, n=600)
    shuffled = shuffled_labels(data, 0)
    assert torch.equal(shuffled.labels.sort().values, data.labels.sort().values)         # a permutation
    assert (shuffled.labels != data.labels).float().mean() > 0.8 and shuffled.images is data.images
    assert random_labels_run.manifest["hyperparameters"]["shuffle_labels"] is True
    assert "shuffle_labels" not in small_run.manifest["hyperparameters"]
    # chance on the test split (10 classes), where the same network trained on the true labels reaches ~89%
    assert random_labels_run.history[-1]["test_acc"] < 0.25 < small_run.history[-1]["test_acc"]
    with pytest.raises(InputError, match="shuffle_labels must be True or False"):
        train(SMALL_SPEC, data, out="unused", shuffle_labels="yes")


# ---- bad input, the result, the command and the report -----------------------------------------------------------

class NoParameters(nn.Module):
    def forward(self, x):                              # (N, C, H, W) -> (N, C) "scores"
        return x.mean((2, 3))


def test_bad_input_gets_named_errors(bn_net):
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(InputError, match="has no layer with parameters .* nothing to randomize"):
        sanity_check(NoParameters(), x, 0, methods=["saliency"])
    with pytest.raises(InputError, match="methods must be names among saliency"):
        sanity_check(bn_net, x, methods=["lrp"])
    with pytest.raises(InputError, match="methods must be a non-empty list"):
        sanity_check(bn_net, x, methods=[])
    with pytest.raises(InputError, match="samples must be a positive int"):
        sanity_check(bn_net, x, methods=["smoothgrad"], samples=0)
    with pytest.raises(InputError, match="must return maps"):
        sanity_check(bn_net, x, methods={"bad": lambda m, x, t: torch.zeros(2, 3)})
    assert convlens.sanity_check is sanity_check


def test_every_method_runs_saves_loads_and_draws(tmp_path, gray_net):
    x = torch.rand(2, 1, 20, 28)
    res = sanity_check(gray_net, x, methods=["saliency", "deconvnet", "guided", "gradcam", "gradcam++",
                                             "guided-gradcam", "smoothgrad", "ig", "occlusion"],
                       random_labels_model=FIXTURE_MODELS["gray_net"]().eval(), samples=3, steps=3)
    assert res.maps["occlusion"].shape == (4, 8, 12) and res.maps["gradcam"].shape == (4, 20, 28)
    # the same network as "random labels": every map the same, every similarity 1
    np.testing.assert_allclose(np.nanmean(res.data_spearman_abs, 1), 1.0, atol=1e-6)
    back = SanityResult.load(res.save(tmp_path / "sanity.json"))
    assert back.verdicts() == res.verdicts() and back.steps == res.steps
    np.testing.assert_array_equal(back.maps["ig"], res.maps["ig"])
    assert back.plot().axes and back.plot_maps().axes


@pytest.mark.slow
def test_commands_save_results_the_report_shows(small_run, random_labels_run, tmp_path, capsys):
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.attribution import attribution as attribution_section
    from convlens.reporting.sections.sanity import sanity as sanity_section
    from convlens.units.attribution_views import AttributionResult

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    shutil.copytree(random_labels_run.dir, run_dir / "random-labels")  # found there by default
    main(["sanity", str(run_dir), "--method", "saliency", "--method", "gradcam", "--n", "2", "--samples", "2"])
    out = capsys.readouterr().out
    assert "random-labels" in out and "saliency" in out
    [saved] = (run_dir / "results").glob("sanity@*.json")
    assert saved.with_name(f"{saved.stem}-maps.png").is_file() and saved.with_suffix(".png").is_file()
    assert SanityResult.load(saved).methods == ("saliency", "gradcam")
    main(["saliency", str(run_dir), "--method", "gradcam", "--index", "0", "--index", "3", "--samples", "2",
          "--steps", "3"])
    [views] = (run_dir / "results").glob("attribution@*.json")
    res = AttributionResult.load(views)
    assert res.indices == (0, 3) and res.gradcam.shape == (2, 16, 16) and res.params["layer"] == "relu3"
    assert views.with_name(f"{views.stem}-gradcam.png").is_file() and "completeness error" in capsys.readouterr().out
    ctx = ReportContext(convlens.load_run(run_dir), tmp_path / "report")
    for build, names in ((sanity_section, ["sanity-curves", "sanity-maps"]), (attribution_section, ["attribution"])):
        sec = build(ctx)
        assert sec is not None and [b.name for b in sec.blocks if b.kind == "figure"] == names
    with pytest.raises(SystemExit) as e:
        main(["sanity", str(run_dir), "--method", "lrp"])
    assert e.value.code == 2


@pytest.mark.slow
def test_the_pretrained_imagenet_model(tmp_path):
    """EfficientNet-Lite0: its 19 layers in forward order, Grad-CAM at the head's ReLU6, a short cascade."""
    import skimage.data

    run = convlens.pretrained()
    x = convlens.photo_batch(skimage.data.coffee())                  # (1, 3, 224, 224)
    steps = cascade_layers(run.pixel_model(), x)
    want = [("net._fc",), ("net._conv_head", "net._bn1"), *[(f"net._blocks.{i}",) for i in range(15, -1, -1)],
            ("net._conv_stem", "net._bn0")]
    assert steps == want
    res = sanity_check(run, x, methods=["saliency", "gradcam"], max_steps=2)
    assert res.options["cam_layer"] == "net._relu1" and len(res.steps) == 2
    assert res.verdicts()["gradcam"]["model"] == DEPENDS
