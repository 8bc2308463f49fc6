"""Linear probes against oracles: label one-hot features give 100 %, noise gives chance, one split
recomputed by hand (manual forward + scikit-learn) gives the same accuracy, and a trained network's
higher layers are at least as discriminative as its first."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import datasets
from convlens.arch.grammar import parse
from convlens.errors import InputError, LayerNotFoundError
from convlens.insight.probes import ProbeResult, choose_layers, probe
from convlens.training.fit import train

TINY = "CONV3-8,BN,RELU,POOL2,CONV3-16,BN,RELU,POOL2,CONV3-32,BN,RELU,GAP,FC"


class Oracle(nn.Module):
    """Pixel (0, 0) of channel 0 holds the label: ``onehot`` outputs it one-hot, ``noise`` outputs the
    other channel's pixels, which are random and independent of the label."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.onehot, self.noise = nn.Identity(), nn.Identity()
        self.w = nn.Parameter(torch.zeros(()))

    def forward(self, x):                                     # (N, 2, 4, 4)
        y = x[:, 0, 0, 0].long()
        hot = self.onehot(F.one_hot(y, self.k).float())       # (N, K)
        noise = self.noise(x[:, 1].flatten(1))                # (N, 16)
        return hot + noise.sum(1, keepdim=True) * 0 + self.w


def oracle_data(n: int, k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % k
    x = torch.zeros(n, 2, 4, 4)
    x[:, 0, 0, 0] = labels.float()
    x[:, 1] = torch.rand(n, 4, 4, generator=g)
    return x, labels


def test_one_hot_labels_give_100_percent_and_noise_gives_chance():
    k = 4
    res = probe(Oracle(k), oracle_data(200, k, 0), test_data=oracle_data(400, k, 1), layers=["onehot", "noise"],
                per_class=(5, 20), repeats=5, progress=False)
    assert res.accuracy.shape == (2, 2, 2, 5)
    assert (res.accuracy[0] == 1.0).all()
    assert abs(res.mean[1].mean() - 1 / k) < 0.06 and (res.mean[1] < 0.4).all()
    assert res.chance == 0.25 and res.dims == (4, 16)


def _splits_by_hand(labels: np.ndarray, n: int, r: int, seed: int) -> np.ndarray:
    """The documented rule, written out: shuffle each class with default_rng((seed, r)), take the first n."""
    rng = np.random.default_rng((seed, r))
    picked = []
    for c in sorted(set(labels.tolist())):
        picked += list(rng.permutation(np.flatnonzero(labels == c))[:n])
    return np.sort(np.array(picked))


def test_accuracy_equals_a_split_recomputed_by_hand():
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    torch.manual_seed(0)
    net = parse(TINY, input_shape=(3, 16, 16)).eval()
    data = datasets.load("shapes", split="train", size=16, n=200)
    test = datasets.load("shapes", split="test", size=16, n=100)
    res = probe(net, data, test_data=test, layers=["conv2"], per_class=(5, 12), repeats=2, seed=3, progress=False)
    assert res.tapped == ("relu2",)

    with torch.no_grad():  # manual forward: conv1 ... relu2, then the global max over space
        feats = lambda x: net.features[:7](x).amax(dim=(2, 3)).numpy()  # noqa: E731  (N, 16)
        x_all, x_test = feats(data.images), feats(test.images)
    y_all, y_test = data.labels.numpy(), test.labels.numpy()
    for r in range(2):
        for p, n in enumerate((5, 12)):
            rows = _splits_by_hand(y_all, n, r, seed=3)
            scaler = StandardScaler().fit(x_all[rows])
            for k, clf in enumerate((LinearSVC(C=1.0, max_iter=5000, random_state=3),
                                     LogisticRegression(C=1.0, max_iter=2000))):
                clf.fit(scaler.transform(x_all[rows]), y_all[rows])
                expected = (clf.predict(scaler.transform(x_test)) == y_test).mean()
                assert res.accuracy[0, k, p, r] == pytest.approx(expected, abs=1.01 / len(y_test))


def test_any_model_default_layers_and_functional_relu(tiny_resnet):
    shown, tapped = choose_layers(tiny_resnet, None)
    assert shown == tapped and shown[0] == "stem" and shown[-1] == "fc" and "layer2.shortcut.0" in shown
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(60, 3, 32, 32, generator=g), torch.arange(60) % 3
    res = probe(tiny_resnet, (x, y), test_data=(x[:30], y[:30]), layers=["layer3.conv2", "fc"], per_class=4,
                repeats=2, classifiers=["softmax"], progress=False)
    assert res.layers == ("layer3.conv2", "fc") and res.dims == (16, 10)
    assert res.accuracy.shape == (2, 1, 1, 2)


def test_errors_are_clear(bn_net):
    x, y = torch.rand(40, 3, 16, 16), torch.arange(40) % 4
    with pytest.raises(InputError, match="per_class must be at most the images of every class"):
        probe(bn_net, (x, y), test_data=(x, y), per_class=(5, 30), progress=False)
    with pytest.raises(InputError, match="classifiers must be"):
        probe(bn_net, (x, y), test_data=(x, y), classifiers=["knn"], progress=False)
    with pytest.raises(InputError, match="test_data must be given"):
        probe(bn_net, (x, y), progress=False)
    with pytest.raises(LayerNotFoundError, match="Did you mean"):
        probe(bn_net, (x, y), test_data=(x, y), layers=["features.O"], per_class=2, progress=False)
    with pytest.raises(InputError, match="pool must be"):
        probe(bn_net, (x, y), test_data=(x, y), pool="mean", progress=False)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small net trained for a few seconds on digits (shapes needs minutes to be learned)."""
    data = datasets.load("digits", split="train", size=16, n=600)
    test = datasets.load("digits", split="test", size=16, n=200)
    out = tmp_path_factory.mktemp("probe") / "run"
    return train(TINY, data, test_data=test, out=out, epochs=3, batch_size=20, progress=False)


def test_higher_layers_are_at_least_as_discriminative_on_a_trained_net(trained):
    res = probe(trained, per_class=(5, 30), repeats=3, progress=False)  # the run's own data and test split
    assert res.layers == ("conv1", "conv2", "conv3", "fc4")
    assert res.tapped == ("relu1", "relu2", "relu3", "fc4")
    mean = res.mean  # (L, K, P)
    assert (mean[2] >= mean[0]).all() and (mean[3] >= mean[0]).all()
    assert mean[2].min() > res.chance + 0.2
    # the table is the lecture's: classifier (layer) rows, "n/class" columns, mean ± std cells
    text = repr(res)
    assert "SVM (conv1)" in text and "Softmax (fc4)" in text and "digits (30/class)" in text
    m, s = res.cell("conv3", "svm", 30)
    assert f"{100 * m:.1f} ± {100 * s:.1f}" in text
    again = ProbeResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert np.array_equal(again.accuracy, res.accuracy) and repr(again) == text
    assert set(res.timing["fit_s"]) == set(res.layers) and res.timing["extract_s"] > 0
    assert len(res.plot().axes[0].lines) >= 4


@pytest.mark.slow
def test_depth_trend_of_the_demo_model_on_shapes(demo_run_dir):
    demo = demo_run_dir
    test = datasets.load("shapes", split="test", n=300)
    res = probe(demo, per_class=(10,), repeats=2, test_data=test, progress=False)
    conv = [res.layers.index(n) for n in res.layers if n.startswith("conv")]
    mean = res.mean[:, :, 0]  # (L, K)
    assert all((mean[b] >= mean[a] - 0.02).all() for a, b in zip(conv, conv[1:]))  # deeper: not worse
    assert (mean[conv[-1]] > mean[conv[0]] + 0.3).all()


def test_cli_saves_results_and_the_report_shows_them(trained, tmp_path):
    from convlens.cli.app import main
    from convlens.reporting import report as build_report

    with pytest.raises(SystemExit) as info:
        main(["probe", str(trained.dir), "--per-class", "3,6", "--repeats", "2", "--layers", "conv1,conv3",
              "--quiet"])
        raise SystemExit(0)
    assert info.value.code == 0
    [path] = (trained.dir / "results").glob("probe@*.json")  # options given: kept beside the default result
    saved = json.loads(path.read_text())
    assert saved["layers"] == ["conv1", "conv3"] and saved["per_class"] == [3, 6]
    html = build_report(trained, tmp_path / "report").read_text()
    assert '<section id="probes"' in html and saved["table"][0][1] in html
    with pytest.raises(SystemExit) as info:
        main(["probe", str(trained.dir), "--per-class", "five"])
    assert info.value.code == 2
