"""Approximate occlusion with adaptive drill-down (issue 20): its SSIM against skimage's (the oracle), the SSIM it
reports against skimage's SSIM of the whole exact map (the naive loop of ``test_occlusion``), what ``interpolated``
means (bilinear between the coarse positions, computed by the naive loop here), the fallback to exact, files
without the new fields, and clear errors."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy.interpolate import LinearNDInterpolator
from skimage.metrics import structural_similarity

from convlens import InputError
from convlens.units.occlusion import EXACT_TOL, OcclusionMap, occlusion
from convlens.units.occlusion_drill import SSIM_TOL
from convlens.units.occlusion_ssim import ssim

from conftest import FIXTURE_MODELS, assert_as_found, model_state
from test_occlusion import _image, naive


def sk_ssim(a, b, data_range=1.0):
    """skimage's SSIM with Wang et al.'s choices (occlusion_ssim's docstring); window fitted to small maps."""
    side = min(a.shape)
    win = min(11, side if side % 2 else side - 1)
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=data_range, win_size=win)


@pytest.mark.parametrize("shape", [(25, 25), (7, 9), (3, 5), (13, 31), (4, 6)])
def test_ssim_equals_skimage(shape):
    rng = np.random.default_rng(sum(shape))
    a = rng.random(shape)
    b = np.clip(a + 0.2 * rng.standard_normal(shape), 0, 1)
    assert ssim(a, b) == pytest.approx(sk_ssim(a, b), abs=1e-9)
    assert ssim(a, b, data_range=0.3) == pytest.approx(sk_ssim(a, b, 0.3), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0)


DRILL_CASES = [  # model, window, stride, coarse stride
    ("tiny_resnet", 8, 1, 4), ("inplace_net", 5, 1, None), ("bn_net", 6, 1, 3), ("gray_net", 6, 1, None),
    ("twice_net", 3, 1, 2),
]


@pytest.mark.parametrize("name,window,stride,coarse", DRILL_CASES)
def test_reported_ssim_matches_the_ssim_of_the_whole_exact_map(name, window, stride, coarse):
    model = FIXTURE_MODELS[name]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=window, stride=stride, method="approximate", drill_down=0.2, tau=0.2,
                       coarse_stride=coarse)
    p, _ = naive(model, x, window, stride)
    exact = p[..., result.target]
    if result.method != "approximate":  # the bound was missed: recomputed exactly
        assert "recomputed exactly" in result.note and np.abs(result.p_target - exact).max() <= EXACT_TOL
        return
    assert result.interpolated.any(), "nothing was interpolated: the case does not test drill-down"
    assert result.p_target.shape == exact.shape
    assert abs(result.ssim - sk_ssim(exact, result.p_target)) <= SSIM_TOL
    assert result.ssim >= 0.9 and result.verified_error <= 0.02
    error = np.abs(result.p_target - exact)
    assert error[result.verified].max() <= EXACT_TOL  # verified positions hold exact values
    assert not (result.verified & result.interpolated).any()


def _near(shape, centres, step, spacing=1):
    i, j = np.divmod(np.arange(shape[0] * shape[1]), shape[1])
    ci, cj = np.divmod(np.asarray(centres), shape[1])
    di, dj = i[:, None] - ci, j[:, None] - cj
    return ((np.abs(di) < step) & (di % spacing == 0) & (np.abs(dj) < step) & (dj % spacing == 0)).any(1)


@pytest.mark.parametrize("r,coarse_stride", [(0.1, 4), (0.3, 4), (0.1, 3)])
def test_the_drill_down_rule_replayed_from_the_naive_loop(r, coarse_stride):
    """tau=1 cuts nothing, so every computed value is exact and the documented rule (coarse lattice, then at
    each level the m most sensitive known positions and their neighbours on the next lattice) can be replayed
    here from the naive loop's map; interpolated values are scipy's piecewise-linear interpolation of the
    computed ones."""
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image((3, 30, 27), seed=2)
    window, stride = 6, 1
    result = occlusion(model, x, window=window, stride=stride, method="approximate", drill_down=r, tau=1.0,
                       coarse_stride=coarse_stride, min_ssim=0.01, max_error=1.0)  # a bound met in one round
    p, _ = naive(model, x, window, stride)
    exact = p[..., result.target]                                                          # (R, Q)
    shape = exact.shape
    assert result.method == "approximate" and result.interpolated.shape == shape
    assert np.array_equal(result.rows, np.arange(0, 30 - window + 1)) and len(result.cols) == shape[1]
    # the coarse grid: every step-th position and the last, per axis
    ci = sorted(set(range(0, shape[0], coarse_stride)) | {shape[0] - 1})
    cj = sorted(set(range(0, shape[1], coarse_stride)) | {shape[1] - 1})
    known = np.zeros(shape, dtype=bool)
    known[np.ix_(ci, cj)] = True
    known = known.reshape(-1)
    m = math.ceil(r * known.sum())
    moved = np.abs(exact.reshape(-1) - result.p_clean)
    spacing = coarse_stride
    while spacing > 1:
        finer = max(1, spacing // 2)
        idx = np.flatnonzero(known)
        hot = idx[np.argsort(-moved[idx], kind="stable")[:m]]
        known |= _near(shape, hot, spacing, finer)
        spacing = finer
    computed = ~result.interpolated.reshape(-1)
    assert not (known & ~computed).any()  # every position the levels chose is computed
    # the TOP positions that move most are exact, and their neighbours computed
    top = np.argsort(-np.abs(result.p_target.reshape(-1) - result.p_clean), kind="stable")[:5]
    assert computed[_near(shape, top, 2)].all()
    # computed positions are exact; interpolated ones linear between the computed ones
    assert np.abs(result.p_target - exact)[~result.interpolated].max() <= EXACT_TOL
    assert result.interpolated.any() and (~result.interpolated).sum() < 0.6 * exact.size
    at = np.stack(np.divmod(np.arange(exact.size), shape[1]), 1)
    between = LinearNDInterpolator(at[computed], exact.reshape(-1)[computed])(at).reshape(shape)
    np.testing.assert_allclose(result.p_target[result.interpolated], between[result.interpolated], atol=EXACT_TOL)
    assert (result.top_prob >= result.p_target - 1e-12).all()


def test_a_one_row_map_is_interpolated_along_its_row():
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image((3, 6, 40), seed=4)
    result = occlusion(model, x, window=6, stride=1, method="approximate", drill_down=0.2, tau=1.0, coarse_stride=4,
                       min_ssim=0.01, max_error=1.0)
    p, _ = naive(model, x, 6, 1)
    exact = p[..., result.target][0]                                                        # (Q,)
    assert result.p_target.shape == (1, 35) and result.interpolated.any()
    done = ~result.interpolated[0]
    q = np.arange(len(exact))
    np.testing.assert_allclose(result.p_target[0], np.interp(q, q[done], exact[done]), atol=EXACT_TOL)


def test_drilling_into_every_coarse_position_interpolates_nothing():
    model = FIXTURE_MODELS["gray_net"]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=6, stride=2, method="approximate", drill_down=1.0, min_ssim=0.01)
    assert result.method == "approximate" and not result.interpolated.any()


def test_an_impossible_bound_falls_back_to_the_exact_map_keeping_what_it_computed_exactly(monkeypatch):
    from convlens.units.incremental import Incremental

    exact_rows, replay = [], Incremental.run

    def counted(self, rows, *args, **kwargs):
        if self.plan.tau is None:
            exact_rows.append(len(rows))
        return replay(self, rows, *args, **kwargs)

    monkeypatch.setattr(Incremental, "run", counted)
    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=8, stride=1, layer="layer2.conv2", unit=1, method="approximate",
                       drill_down=0.1, tau=0.1, min_ssim=1.0, max_error=1e-12)
    assert result.method == "incremental" and "could not meet its bound" in result.note
    assert "recomputed exactly" in result.note and result.interpolated is None and result.ssim is None
    p, act = naive(model, x, 8, 1, layer="layer2.conv2", unit=1)
    np.testing.assert_allclose(result.p_target, p[..., result.target], atol=1e-5, rtol=0)
    np.testing.assert_allclose(result.activation, act, atol=1e-5, rtol=1e-5)
    kept = int(re.search(r"(\d+) positions it had computed exactly kept", result.note).group(1))
    assert 0 < kept < result.p_target.size and sum(exact_rows) < result.p_target.size + kept  # none computed twice


def test_saved_and_loaded_and_files_without_drill_down_still_load(tmp_path):
    model = FIXTURE_MODELS["gray_net"]().eval()
    x = _image(model.input_shape)
    result = occlusion(model, x, window=6, stride=1, method="approximate", drill_down=0.2, min_ssim=0.01)
    assert result.interpolated is not None
    loaded = OcclusionMap.load(result.save(tmp_path / "m.json"))
    assert np.array_equal(loaded.interpolated, result.interpolated) and loaded.ssim == result.ssim
    assert loaded.coarse_stride == result.coarse_stride and loaded.drill_down == result.drill_down
    assert "interpolated" in repr(loaded)
    d = json.loads((tmp_path / "m.json").read_text())
    for key in ("interpolated", "ssim", "drill_down", "coarse_stride"):  # a file written before issue 20
        del d["maps"][0][key]
    (tmp_path / "m.json").write_text(json.dumps(d))
    old = OcclusionMap.load(tmp_path / "m.json")
    assert old.interpolated is None and old.ssim is None
    np.testing.assert_array_equal(old.p_target, result.p_target)


@pytest.mark.parametrize("options,match", [
    (dict(drill_down=0), "drill_down"), (dict(drill_down=1.5), "drill_down"), (dict(drill_down=True), "drill_down"),
    (dict(drill_down=0.2, coarse_stride=3), "coarse_stride"), (dict(drill_down=0.2, coarse_stride=1), "coarse_stride"),
    (dict(coarse_stride=4), "drill_down"), (dict(drill_down=0.2, min_ssim=0), "min_ssim"),
])
def test_bad_input_gets_clear_errors(options, match):
    model = FIXTURE_MODELS["gray_net"]().eval()
    with pytest.raises(InputError, match=match):
        occlusion(model, _image(model.input_shape), window=6, stride=2, method="approximate", **options)
    with pytest.raises(InputError, match="approximate"):
        occlusion(model, _image(model.input_shape), window=6, stride=2, drill_down=0.2)


def test_cli_drill_down(small_run, tmp_path, capsys):
    from convlens.cli import main
    from convlens.units.occlusion import load_maps

    out = tmp_path / "o.json"
    main(["occlusion", str(small_run.dir), "--index", "0", "--window", "6", "--stride", "1", "--drill-down", "0.3",
          "--out", str(out)])
    [m] = load_maps(out)
    assert m.method == "incremental" or (m.interpolated is not None and m.drill_down >= 0.3)
    assert "OcclusionMap" in capsys.readouterr().out
    with pytest.raises(SystemExit) as err:
        main(["occlusion", str(small_run.dir), "--drill-down", "2", "--out", str(out)])
    assert err.value.code == 2
    assert "--drill-down" in capsys.readouterr().err


def test_model_left_as_found():
    model = FIXTURE_MODELS["bn_net"]().train()
    state = model_state(model)
    occlusion(model, _image(model.input_shape), window=4, stride=1, method="approximate", drill_down=0.2)
    assert_as_found(model, state)


def test_the_figure_marks_the_computed_positions():
    from matplotlib.collections import PathCollection

    model = FIXTURE_MODELS["tiny_resnet"]().eval()
    x = _image((3, 30, 27), seed=2)
    result = occlusion(model, x, window=6, stride=1, method="approximate", drill_down=0.1, coarse_stride=4,
                       min_ssim=0.01, max_error=1.0)
    assert result.method == "approximate" and result.interpolated.any()
    fig = result.plot()
    dots = [c for c in fig.axes[0].collections if isinstance(c, PathCollection)]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == int((~result.interpolated).sum())
    i, j = np.nonzero(~result.interpolated)  # each dot at the centre of its occluder square
    np.testing.assert_allclose(dots[0].get_offsets(), np.c_[result.cols[j] + 3.0, result.rows[i] + 3.0])
    assert "interpolated" in fig.axes[0].get_title() and "drill-down" in fig._suptitle.get_text()
