"""Filter visualization and diagnosis: the measures against brute-force oracles, and the diagnosis
separating trained (and Gabor/DoG) filters from random, noise-added and near-duplicate ones."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from torch import nn

from convlens.errors import InputError, LayerNotFoundError
from convlens.units.filter_diagnosis import (diagnose_weights, high_frequency_share, max_similarity, redundancy,
                                             similarities, smoothness)
from convlens.units.filters import FilterResult, diagnose_filters, filters

PNG = b"\x89PNG\r\n\x1a\n"


def gabor_bank(n: int = 16, k: int = 7, channels: int = 3, seed: int = 0) -> np.ndarray:
    """(n, channels, k, k): Gabor filters (orientations, phases, 0.08-0.18 cycles/pixel) and
    difference-of-Gaussians blobs, each with its own colour: the structured stand-in for trained conv1."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:k, :k] - (k - 1) / 2
    out = []
    for i in range(n):
        if i % 4 == 3:  # centre-surround blob
            r2 = x ** 2 + y ** 2
            pattern = np.exp(-r2 / (2 * (k / 8) ** 2)) - 0.5 * np.exp(-r2 / (2 * (k / 4) ** 2))
        else:
            theta, freq, phase = np.pi * i / n, 0.08 + 0.1 * rng.random(), rng.uniform(0, 2 * np.pi)
            u = x * np.cos(theta) + y * np.sin(theta)
            pattern = np.exp(-(x ** 2 + y ** 2) / (2 * (k / 4) ** 2)) * np.cos(2 * np.pi * freq * u + phase)
        colour = rng.uniform(-1, 1, channels)
        out.append(colour[:, None, None] * pattern[None] + 0.1 * rng.standard_normal((channels, 1, 1)))
    return np.stack(out)


# ---- the measures, against direct computations ------------------------------------------------------

def test_high_frequency_share_matches_a_brute_force_dft():
    w = np.random.default_rng(1).standard_normal((3, 2, 6, 5))
    z = w - w.mean((1, 2, 3), keepdims=True)
    for f in range(3):
        high = total = 0.0
        for u in range(6):
            for v in range(5):
                fu, fv = (u if u <= 3 else u - 6) / 6, (v if v <= 2 else v - 5) / 5
                basis = np.exp(-2j * np.pi * (u * np.arange(6)[:, None] / 6 + v * np.arange(5)[None, :] / 5))
                p = sum(abs((z[f, c] * basis).sum()) ** 2 for c in range(2))
                total += p
                high += p if np.hypot(fu, fv) > 0.25 else 0.0
        assert high_frequency_share(w)[f] == pytest.approx(high / total, rel=1e-10)


def test_gratings_are_low_or_high_frequency_exactly():
    x = np.arange(9)
    slow = np.cos(2 * np.pi * x / 9)[None, None, None, :].repeat(9, 2)  # 1/9 cycle per pixel
    fast = np.cos(2 * np.pi * 4 * x / 9)[None, None, None, :].repeat(9, 2)  # 4/9
    assert high_frequency_share(slow)[0] == pytest.approx(0.0, abs=1e-12)
    assert high_frequency_share(fast)[0] == pytest.approx(1.0)
    assert np.isnan(high_frequency_share(np.ones((1, 3, 5, 5)))[0])  # flat: no energy left


def test_smoothness_matches_a_loop_over_neighbour_pairs():
    w = np.random.default_rng(2).standard_normal((4, 3, 4, 6))
    for f in range(4):
        z = w[f] - w[f].mean()
        num, pairs = 0.0, 0
        for c in range(3):
            for i in range(4):
                for j in range(6):
                    for di, dj in ((0, 1), (1, 0)):
                        if i + di < 4 and j + dj < 6:
                            num += z[c, i, j] * z[c, i + di, j + dj]
                            pairs += 1
        expected = (num / pairs) / (z ** 2).mean()  # mean over neighbour pairs / mean over taps
        assert smoothness(w)[f] == pytest.approx(expected, rel=1e-10)
    ramp = np.arange(25.0).reshape(1, 1, 5, 5)
    assert smoothness(ramp)[0] > 0.7


def test_similarity_matches_scikit_learn_and_negatives_are_not_copies():
    from sklearn.metrics.pairwise import cosine_similarity

    w = np.random.default_rng(3).standard_normal((6, 3, 3, 3))
    flat = w.reshape(6, -1) - w.reshape(6, -1).mean(1, keepdims=True)
    np.testing.assert_allclose(similarities(w), cosine_similarity(flat), atol=1e-12)
    mx, nearest = max_similarity(w)
    ref = np.abs(cosine_similarity(flat))
    np.fill_diagonal(ref, -1)
    np.testing.assert_allclose(mx, ref.max(1), atol=1e-12)
    np.testing.assert_array_equal(nearest, ref.argmax(1))
    bank = gabor_bank(8)
    copies = np.concatenate([bank, bank[:1] * 1.01, bank[:1] * 2])  # two copies of filter 0: 2 of 10 redundant
    assert redundancy(copies) == pytest.approx(2 / 10)
    negated = np.concatenate([bank, -bank[:3]])  # opposite-sign partners: the same |cos|, not copies
    assert redundancy(negated) == redundancy(bank) == 0.0
    assert max_similarity(negated)[0][:3] == pytest.approx(1.0)
    assert (diagnose_weights(negated).copy_of == -1).all()  # nothing framed in the figure


# ---- the diagnosis separates good from bad filters --------------------------------------------------

@pytest.fixture(scope="module")
def trained_conv1(tmp_path_factory):
    """conv1 (16x3x7x7) of a small net trained ~2 s on real photo patches (initialized N(0, 0.02),
    close to AlexNet's N(0, 0.01), so what training writes dominates the random start)."""
    from convlens import datasets
    from convlens.arch.grammar import parse
    from convlens.training.fit import train

    data = datasets.load("photos", split="train", size=32, n=1200)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        net = parse("CONV7-16/2,RELU,POOL2,CONV3-32,RELU,GAP,FC", input_shape=(3, 32, 32),
                    num_classes=len(data.class_names))
        with torch.no_grad():
            net.features.conv1.weight.normal_(0, 0.02)
    run = train(net, data, test_data=False, out=tmp_path_factory.mktemp("filters") / "run", epochs=3, batch_size=32,
                optimizer="sgd", lr=0.05, weight_decay=5e-3, augment=False, progress=False, device="cpu", seed=1)
    assert run.history[-1]["train_acc"] > 0.4  # it learned something (13 classes: chance 0.08)
    return run.model.features.conv1.weight.detach().numpy().copy()


def _noisy(w: np.ndarray, times: float = 1.5, seed: int = 0) -> np.ndarray:
    return w + times * w.std() * np.random.default_rng(seed).standard_normal(w.shape)


def test_trained_filters_are_good_and_their_noisy_version_too_noisy(trained_conv1):
    good = diagnose_weights(trained_conv1)
    assert good.verdict == "good", good.reasons
    assert good.high_frequency < 0.4 and good.structure_z > 10
    noisy = diagnose_weights(_noisy(trained_conv1))
    assert noisy.issues == ["too noisy"], noisy.reasons
    assert noisy.high_frequency > good.high_frequency + 0.2


@pytest.mark.parametrize("k", [5, 7, 9])
def test_gabor_bank_is_good_noise_added_is_too_noisy_copies_too_correlated(k):
    bank = gabor_bank(16, k)
    assert diagnose_weights(bank).verdict == "good"
    noisy = diagnose_weights(_noisy(bank))
    assert noisy.issues == ["too noisy"] and "too noisy" in noisy.reasons[0]
    rng = np.random.default_rng(5)
    copies = bank[:1] * (1 + 0.01 * rng.standard_normal((16, 3, k, k)))  # one filter, 1% perturbations
    dup = diagnose_weights(copies)
    assert dup.issues == ["too correlated"] and dup.redundancy == pytest.approx(15 / 16)
    half = bank.copy()
    half[8:] = bank[0] + 0.01 * bank[0].std() * rng.standard_normal((8, 3, k, k))
    d = diagnose_weights(half)
    assert d.issues == ["too correlated"]  # 8 of 16 are copies of filter 0
    assert (d.copy_of[8:] >= 0).all() and d.copy_of[0] >= 8 and (d.copy_of[1:8] == -1).all()


@pytest.mark.parametrize("shape", [(32, 3, 5, 5), (16, 3, 7, 7), (96, 3, 11, 11), (64, 32, 3, 3), (8, 1, 5, 5)])
def test_kaiming_initialized_filters_lack_structure(shape):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        w = nn.init.kaiming_normal_(torch.empty(shape))
    d = diagnose_weights(w)
    assert d.issues == ["lacks structure"], d.reasons
    assert abs(d.structure_z) < 3 and abs(d.structure_gain) < 0.1


def test_small_kernels_say_which_measures_apply():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 8, 1, 1, generator=g)
    d = diagnose_weights(w)
    assert d.high_frequency is None and d.smoothness is None and d.structure_z is None
    assert d.verdict == "good" and "1x1" in d.notes[0]
    dup = diagnose_weights(w[:1].repeat(16, 1, 1, 1) + 1e-3 * torch.randn(16, 8, 1, 1, generator=g))
    assert dup.verdict == "too correlated"
    d3 = diagnose_weights(torch.randn(16, 4, 3, 3, generator=g))
    assert d3.high_frequency is None and d3.smoothness is not None and "frequency" in d3.notes[0]


def test_tiny_fans_are_judged_against_random_redundancy():
    w = torch.randn(64, 2, 1, 1, generator=torch.Generator().manual_seed(0))  # 2-D: many near-parallel by chance
    d = diagnose_weights(w)
    assert d.redundancy_random > 0.5 and d.redundancy > 0.5 and d.verdict == "good"


# ---- on models and runs ------------------------------------------------------------------------------

def test_tiny_resnet_every_conv_and_the_model_left_as_found(tiny_resnet):
    tiny_resnet.train()
    tiny_resnet.layer1.conv1.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in tiny_resnet.state_dict().items()}
    result = filters(tiny_resnet)
    png = result._repr_png_()
    assert png[:8] == PNG
    assert result.layer == "stem" and result.sees_image and result.weights.shape == (8, 3, 3, 3)
    paths = [d.path for d in result.layers]
    assert paths == [p for p, m in tiny_resnet.named_modules() if isinstance(m, nn.Conv2d)]
    assert result["layer2.shortcut.0"].smoothness is None  # 1x1 projection: correlation only
    result.weights[:] = 0  # a copy: the model's weights do not change
    for k, v in tiny_resnet.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert tiny_resnet.training and not tiny_resnet.layer1.conv1.weight.requires_grad
    assert tiny_resnet.stem.weight.requires_grad
    higher = filters(tiny_resnet, "layer2.conv2")
    assert not higher.sees_image and higher.plot(max_filters=4, max_channels=3) is not None
    assert higher.diagnosis.path == "layer2.conv2" and "layer2.conv2" in repr(higher)


def test_gray_net_one_channel_and_a_non_square_kernel(gray_net):
    first = filters(gray_net)
    assert first.layer == "conv1" and first.sees_image and first.weights.shape == (4, 1, 5, 5)
    assert first.diagnosis.high_frequency is not None
    second = filters(gray_net.double(), "conv2")  # float64 weights, (3, 5) kernels
    assert second.weights.shape == (8, 4, 3, 5) and second.diagnosis.high_frequency is None
    assert second.diagnosis.smoothness is not None
    assert second._repr_png_()[:8] == PNG and first._repr_png_()[:8] == PNG


def test_errors_are_clear(tiny_resnet):
    with pytest.raises(InputError, match=r"'fc' is a Linear.*Conv layers: stem, layer1.conv1"):
        filters(tiny_resnet, "fc")
    with pytest.raises(LayerNotFoundError, match="Did you mean 'stem'"):
        filters(tiny_resnet, "stemm")
    with pytest.raises(InputError, match="layer must be"):
        filters(tiny_resnet, 3)
    with pytest.raises(InputError, match="has none"):
        filters(nn.Sequential(nn.Linear(4, 2)))
    with pytest.raises(InputError, match="model_or_run must be"):
        filters(42)
    with pytest.raises(InputError, match=r"weights must be a non-empty \(out, in, kh, kw\)"):
        diagnose_weights(np.zeros((3, 3)))
    with pytest.raises(InputError, match="thresholds must be"):
        diagnose_weights(gabor_bank(4), thresholds={"noise": 1})


def test_thresholds_change_the_verdict():
    bank = _noisy(gabor_bank(16), 0.5)
    assert diagnose_weights(bank).verdict == "good"
    assert diagnose_weights(bank, thresholds={"high_frequency": 0.05}).verdict == "too noisy"


def test_run_save_load_and_report_section(small_run, tmp_path):
    from convlens.reporting.context import ReportContext
    from convlens.reporting.sections.filters import filters_section

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    result = filters(run_dir, "conv2")  # a lecture name on a run directory
    assert result.layer == "conv2" and result.weights.shape == (16, 8, 3, 3) and result.model
    assert [d.name for d in diagnose_filters(run_dir)] == ["conv1", "conv2", "conv3"]
    path = result.save(tmp_path / "f.json")
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))
    back = FilterResult.load(path)
    assert back.to_dict() == result.to_dict() and np.array_equal(back.weights, result.weights)
    assert back.layers[0].filter_smoothness == pytest.approx(result.layers[0].filter_smoothness, abs=1e-5)

    from convlens.training.runs import load_run

    sec = filters_section(ReportContext(load_run(run_dir), tmp_path / "report"))
    figure, table = sec.blocks[0], sec.blocks[1]
    assert figure.png[:8] == PNG and [r[0] for r in table.rows] == ["conv1", "conv2", "conv3"]
    assert all(r[-1] in {"good"} or r[-1].split(", ")[0] in {"too noisy", "too correlated", "lacks structure"}
               for r in table.rows)


def test_cli_prints_the_table_and_saves_figure_and_json(small_run, tmp_path, capsys):
    from convlens.cli.app import main

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results", "report"))
    main(["filters", str(run_dir)])
    out = capsys.readouterr().out
    assert "conv3" in out and "verdict" in out and "saved:" in out
    assert (run_dir / "results" / "filters-conv1.png").read_bytes()[:8] == PNG
    assert FilterResult.load(run_dir / "results" / "filters.json").layer == "conv1"
    main(["filters", str(run_dir), "--layer", "conv2", "--out", str(tmp_path / "c2.png"), "--json"])
    assert json.loads(capsys.readouterr().out)["layer"] == "conv2" and (tmp_path / "c2.png").is_file()
    with pytest.raises(SystemExit) as info:
        main(["filters", str(run_dir), "--layer", "fc4"])
    assert info.value.code == 2 and "Conv layers: conv1, conv2, conv3" in capsys.readouterr().err


def test_demo_run(demo_run_dir):
    from convlens.cli.filters_cmds import demo_filters
    from convlens.training.runs import load_run

    run = load_run(demo_run_dir)
    demo_filters(run)
    result = FilterResult.load(demo_run_dir / "results" / "filters.json")
    assert result.layer == "conv1" and result.weights.shape == (32, 3, 5, 5)
    assert (demo_run_dir / "results" / "filters-conv1.png").is_file()
    # the demo's conv1 is measurably smoother than random (structure), yet noisier than photo-trained filters
    assert result.diagnosis.structure_z > 3 and result.diagnosis.high_frequency > 0.4
