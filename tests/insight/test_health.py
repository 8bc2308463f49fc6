"""health(): statistics equal a brute-force numpy computation; verdicts tell a well-trained net from
badly trained ones (dead units, copied filters, a far too high learning rate); CLI and report."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import HealthReport, health, parse
from convlens.errors import InputError, LayerNotFoundError
from convlens.insight.health import THRESHOLDS, default_layers, layer_stats
from conftest import hooks_left


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: a second thread only adds overhead (a lot of it on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    """sklearn's 8x8 digits, [0, 1] -> roughly zero-mean: (train x, y), (test x, y)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (torch.tensor(d.images, dtype=torch.float32)[:, None] / 16 - 0.5) / 0.5  # (1797, 1, 8, 8)
    y = torch.tensor(d.target)
    return (x[:1400], y[:1400]), (x[1400:], y[1400:])


def digits_net(bn: bool = True):
    """Demo-like (conv-BN-ReLU blocks, global average pooling, one FC); ``bn=False`` is easier to break."""
    spec = "CONV3-16,BN,RELU,CONV3-32,BN,RELU,POOL2,CONV3-32,BN,RELU,GAP,FC-10"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return parse(spec if bn else spec.replace("BN,", ""), input_shape=(1, 8, 8))


def fit(model, data, *, lr, epochs=6, opt=torch.optim.Adam):
    (x, y), _ = data
    optimizer, g = opt(model.parameters(), lr=lr), torch.Generator().manual_seed(0)
    model.train()
    with torch.random.fork_rng(devices=[]):
        for _ in range(epochs):
            perm = torch.randperm(len(x), generator=g)
            for i in range(0, len(x), 32):
                b = perm[i:i + 32]
                loss = F.cross_entropy(model(x[b]), y[b])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    return model.eval()


def accuracy(model, data) -> float:
    _, (x, y) = data
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.fixture(scope="module")
def trained(digits):
    model = fit(digits_net(), digits, lr=3e-3, epochs=5)
    assert accuracy(model, digits) > 0.93
    return model


def test_well_trained_net_is_healthy(trained, digits):
    rep = health(trained, digits[1][0], progress=False)
    assert [h.name for h in rep.layers] == ["relu1", "relu2", "relu3"]
    assert rep.healthy, repr(rep)
    assert all(h.dead_fraction < 0.1 and h.mean_abs_corr < THRESHOLDS["mean_abs_corr"] for h in rep.layers)


def test_large_negative_bias_means_dead_units(trained, digits):
    bad = digits_net()
    bad.load_state_dict(trained.state_dict())
    with torch.no_grad():
        bad.features.bn2.bias[:24] -= 100.0  # 24 of 32 units can never fire
    rep = health(bad, digits[1][0], progress=False)
    assert rep["relu2"].dead_fraction == pytest.approx(24 / 32)
    assert "many dead units" in rep["relu2"].verdict and not rep.healthy
    assert rep["relu1"].verdict == "healthy"  # layers before it are untouched
    assert "relu2" in rep.verdict and "relu2" in repr(rep)


def test_copied_filters_mean_strongly_correlated_units(trained, digits):
    bad = digits_net()
    bad.load_state_dict(trained.state_dict())
    with torch.no_grad():  # every filter (and its BN) a copy of filter 0
        for t in (*bad.features.conv1.parameters(), *bad.features.bn1.parameters(), bad.features.bn1.running_mean,
                  bad.features.bn1.running_var):
            t.copy_(t[:1].expand_as(t))
    rep = health(bad, digits[1][0], progress=False)
    h = rep["relu1"]
    assert h.mean_abs_corr == pytest.approx(1.0, abs=1e-4)
    assert "strongly correlated units" in h.verdict
    assert abs(h.top_pairs[0][2]) == pytest.approx(1.0, abs=1e-4)


def test_far_too_high_learning_rate_is_flagged(digits):
    bad = fit(digits_net(bn=False), digits, lr=0.1, epochs=3)  # Adam at 0.1: 30x its usual rate
    rep = health(bad, digits[1][0], progress=False)
    assert not rep.healthy, repr(rep)
    assert any("dead" in h.verdict or "correlated" in h.verdict or "non-finite" in h.verdict
               for h in rep.layers)


def test_diverged_training_is_non_finite(digits):
    bad = fit(digits_net(bn=False), digits, lr=50.0, epochs=1, opt=torch.optim.SGD)
    rep = health(bad, digits[1][0], progress=False)
    assert not rep.healthy and all("non-finite activations" in h.verdict for h in rep.layers), repr(rep)
    json.dumps(rep.to_dict(), allow_nan=False)  # NaN never reaches the JSON


def brute_force(acts: np.ndarray):
    """acts (n, U, *S), the raw layer output: every statistic by the definitions, in float64 loops."""
    x = np.maximum(acts.astype(np.float64), 0).reshape(acts.shape[0], acts.shape[1], -1)  # (n, U, S)
    n, U, S = x.shape
    active = x > 0
    dead = [not active[:, u].any() for u in range(U)]
    per_unit = [1 - active[:, u].mean() for u in range(U)]
    per_sample = [1 - active[s].mean() for s in range(n)]
    entries = x.transpose(0, 2, 1).reshape(n * S, U)  # every (sample, position) of each unit
    var = entries.var(0)
    rel = np.array([var[u] / (entries[:, u] ** 2).mean() if (entries[:, u] ** 2).mean() > 0 else 0 for u in range(U)])
    live = [u for u in range(U) if var[u] > 1e-12]
    r = np.corrcoef(entries[:, live].T)
    pairs = [(live[i], live[j], r[i, j]) for i in range(len(live)) for j in range(i + 1, len(live))]
    return dict(dead=np.mean(dead), sparsity=np.mean(per_unit), sample=np.mean(per_sample), var=var, rel=rel,
                unit_sparsity=np.array(per_unit), sample_sparsity=np.array(per_sample),
                mean_abs=np.mean([abs(p[2]) for p in pairs]), best=max(pairs, key=lambda p: abs(p[2])),
                constant=np.mean([(not dead[u]) and rel[u] < THRESHOLDS["rel_variance"] for u in range(U)]))


class Probe(nn.Module):
    """conv -> (named) ReLU -> conv (its output measured directly) -> fc; one dead, one constant unit."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv1 = nn.Conv2d(2, 6, 3)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(6, 5, 3, padding=1)
        self.fc = nn.Linear(5 * 4 * 5, 7)
        with torch.no_grad():
            self.conv1.bias[0] = -50.0          # unit 0 dead
            self.conv2.weight[1].zero_()        # unit 1 constant (bias only)
            self.conv2.bias[1] = 0.7

    def forward(self, x):                       # (N, 2, 6, 7)
        h = self.conv2(self.act(self.conv1(x)))  # (N, 5, 4, 5)
        return self.fc(F.relu(h).flatten(1))     # (N, 7)


@pytest.mark.parametrize("layer", ["act", "conv2", "fc"])
def test_statistics_equal_brute_force(layer):
    model, x = Probe().eval(), torch.randn(40, 2, 6, 7)
    with torch.no_grad():
        h1 = model.act(model.conv1(x))
        raw = {"act": h1, "conv2": model.conv2(h1), "fc": model(x)}[layer].numpy()
    ref = brute_force(raw)
    h = health(model, x, layers=[layer], batch_size=7, progress=False, top_pairs=3)[layer]
    assert h.samples == 40 and h.units == raw.shape[1]
    assert h.dead_fraction == pytest.approx(ref["dead"])
    assert h.sparsity_samples == pytest.approx(ref["sparsity"]) and h.sparsity_features == pytest.approx(ref["sample"])
    np.testing.assert_allclose(h.unit_sparsity, ref["unit_sparsity"], atol=1e-6)
    np.testing.assert_allclose(h.sample_sparsity, ref["sample_sparsity"], atol=1e-6)
    np.testing.assert_allclose(h.variance, ref["var"], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(h.rel_variance, ref["rel"], rtol=1e-3, atol=1e-6)
    assert h.constant_fraction == pytest.approx(ref["constant"])
    assert h.mean_abs_corr == pytest.approx(ref["mean_abs"], rel=1e-4)
    a, b, r = h.top_pairs[0]
    assert (a, b) == ref["best"][:2] and r == pytest.approx(ref["best"][2], rel=1e-4)
    if layer == "act":
        assert h.dead_fraction == pytest.approx(1 / 6)
    if layer == "conv2":
        assert h.rel_variance[1] == pytest.approx(0.0, abs=1e-6) and h.constant_fraction == pytest.approx(1 / 5)
        assert np.isnan(h.corr[1]).all()  # a unit that does not vary has no correlation


def test_layer_stats_on_hand_made_matrix():
    active = np.array([[1, 0, 1], [1, 0, 0], [1, 0, 1], [1, 0, 0]], float)  # unit 1 dead, unit 0 always on
    values = active * np.array([[2.0], [3.0], [4.0], [5.0]])
    h = layer_stats(active, values)
    assert h.dead_fraction == pytest.approx(1 / 3) and h.always_active_fraction == pytest.approx(1 / 3)
    assert h.sparsity_samples == pytest.approx(6 / 12)  # 0 + 4 + 2 inactive entries
    assert h.mean_abs_corr == pytest.approx(abs(np.corrcoef(values[:, 0], values[:, 2])[0, 1]))
    assert h.issues == ["many dead units"]


def test_default_layers():
    assert default_layers(digits_net()) == ["relu1", "relu2", "relu3"]
    assert default_layers(Probe()) == ["act"]

    class NoModules(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.hidden = nn.Linear(2, 4)
            self.out = nn.Linear(4, 3)

        def forward(self, x):
            return self.out(F.relu(self.hidden(F.relu(self.conv(x)).amax((2, 3)))))

    assert default_layers(NoModules()) == ["conv", "hidden"]  # the output layer is not measured


def test_shared_relu_counts_once_per_call_and_model_left_as_found(tiny_resnet, twice_net):
    class SharedRelu(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.relu = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 6, 3), nn.ReLU(inplace=True)

        def forward(self, x):
            return self.relu(self.b(self.relu(self.a(x))))

    m = SharedRelu().train()
    rep = health(m, torch.rand(10, 3, 9, 9), progress=False)
    assert [(h.name, h.units) for h in rep.layers] == [("relu#1", 4), ("relu#2", 6)]
    assert m.training and hooks_left(m) == 0
    rep = health(tiny_resnet, torch.rand(6, 3, 32, 32), max_samples=4, progress=False)  # F.relu: conv outputs
    assert rep.samples == 4 and rep.layers[0].name == "stem" and "fc" not in [h.name for h in rep.layers]


def test_save_load_and_dict_roundtrip(trained, digits, tmp_path):
    rep = health(trained, digits[1], max_samples=50, progress=False)
    path = rep.save(tmp_path / "health.json")
    back = HealthReport.load(path)
    assert back.to_dict() == json.loads(path.read_text())
    assert [h.verdict for h in back.layers] == [h.verdict for h in rep.layers]
    assert back.layers[0].dead_fraction == rep.layers[0].dead_fraction
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))


def test_bad_arguments(trained, digits):
    x = digits[1][0]
    with pytest.raises(InputError, match="max_samples must be"):
        health(trained, x, max_samples=1)
    with pytest.raises(InputError, match="thresholds must be"):
        health(trained, x, thresholds={"dead": 0.1})
    with pytest.raises(InputError, match="data must be"):
        health(trained)
    with pytest.raises(LayerNotFoundError, match="relu9"):
        health(trained, x, layers=["relu9"])
    assert hooks_left(trained) == 0


def test_plots(trained, digits):
    from convlens.plots.common import to_png

    rep = health(trained, digits[1][0], max_samples=60, progress=False)
    assert to_png(rep.plot())[:4] == b"\x89PNG"
    assert to_png(rep.plot("relu2"))[:4] == b"\x89PNG"


@pytest.mark.slow
def test_cli_and_report_section(demo_run_dir, tmp_path):
    run = demo_run_dir
    from convlens.cli.app import main
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.health import health as section
    from convlens.training.runs import load_run

    ctx = ReportContext(load_run(run), tmp_path / "report")
    assert section(ctx) is None  # never computed
    main(["health", str(run), "--quiet", "--max-samples", "200", "--layers", "relu1,conv3"])  # returns: exit 0
    [path] = (run / "results").glob("health@*.json")  # options given: kept beside the default result
    saved = json.loads(path.read_text())
    assert [layer["name"] for layer in saved["layers"]] == ["relu1", "conv3"] and saved["samples"] == 200
    sec = section(ctx)
    assert sec.id == "health" and {b.kind for b in sec.blocks} >= {"metrics", "table", "figure"}
