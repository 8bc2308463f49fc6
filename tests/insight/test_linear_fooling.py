"""convlens.fool_linear against the lecture's printed numbers and plain arithmetic; the minimal
flipping eps against scikit-learn's own predictions; eps vs dimension; CLI and report section."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import convlens
from convlens import InputError, datasets
from convlens.insight.linear_fooling import EpsVsDimension, fit_logistic, flip_eps

X = [2, -1, 3, -2, 2, 2, 1, -4, 5, 1]
W = [-1, -1, 1, -1, 1, -1, 1, 1, -1, 1]
X_ADV = [1.5, -1.5, 3.5, -2.5, 2.5, 1.5, 1.5, -3.5, 4.5, 1.5]  # the lecture's "adversarial x" row


def test_lecture_numbers():
    r = convlens.fool_linear(X, W, 0.0, 0.5)
    assert r.x_adv.tolist() == X_ADV
    assert r.score_before == -3 and r.score_after == 2
    assert round(r.prob_before, 4) == 0.0474 and round(r.prob_after, 2) == 0.88
    # independently: plain Python sums and math.exp
    assert sum(a * b for a, b in zip(X, W)) == -3
    assert sum(a * b for a, b in zip(X_ADV, W)) == 2
    assert r.prob_before == pytest.approx(1 / (1 + math.exp(3)), rel=1e-12)
    assert r.prob_after == pytest.approx(1 / (1 + math.exp(-2)), rel=1e-12)
    assert convlens.fool_linear().to_dict() == r.to_dict()  # the defaults are the lecture's numbers


def test_walkthrough_text():
    text = repr(convlens.fool_linear())
    assert "-2 + 1 + 3 + 2 + 2 - 2 + 1 - 4 - 5 + 1 = -3" in text
    assert "-1.5 + 1.5 + 3.5 + 2.5 + 2.5 - 1.5 + 1.5 - 3.5 - 4.5 + 1.5 = 2" in text
    assert "0.0474" in text and "95% certain" in text and "from 5% to 88%" in text
    assert "1.5 -1.5  3.5 -2.5" in text


def test_target_zero_and_bias():
    r = convlens.fool_linear([1.0, 2.0], [2.0, -1.0], b=0.5, eps=0.25, target=0)
    assert r.x_adv.tolist() == [0.75, 2.25]
    assert r.score_before == pytest.approx(0.5) and r.score_after == pytest.approx(0.5 - 0.25 * 3)
    assert r.prob_after < r.prob_before


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-3, 3)), min_size=1, max_size=30),
       st.floats(-2, 2), st.floats(0, 2))
def test_score_moves_by_eps_times_l1_norm(pairs, b, eps):
    x, w = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    up, down = convlens.fool_linear(x, w, b, eps), convlens.fool_linear(x, w, b, eps, target=0)
    l1 = np.abs(w).sum()
    assert up.score_after - up.score_before == pytest.approx(eps * l1, abs=1e-9)
    assert down.score_before - down.score_after == pytest.approx(eps * l1, abs=1e-9)
    assert up.prob_after >= up.prob_before - 1e-12


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.floats(-3, 3)), min_size=1, max_size=30), st.floats(-2, 2))
def test_min_eps_just_flips(pairs, b):
    x, w = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    score = float(w @ x + b)
    if abs(score) < 1e-3 or np.abs(w).sum() < 1e-3:
        return
    r = convlens.fool_linear(x, w, b)
    towards = 1 if score < 0 else 0
    flips = convlens.fool_linear(x, w, b, r.min_eps * (1 + 1e-6), target=towards)
    stays = convlens.fool_linear(x, w, b, r.min_eps * (1 - 1e-6), target=towards)
    assert np.sign(flips.score_after) == -np.sign(score)
    assert np.sign(stays.score_after) == np.sign(score)


def test_errors():
    with pytest.raises(InputError, match="w must be as many numbers as x"):
        convlens.fool_linear([1, 2], [1, 2, 3])
    with pytest.raises(InputError, match="eps must be a finite number >= 0"):
        convlens.fool_linear(X, W, eps=-1)
    with pytest.raises(InputError, match="target must be 0 or 1"):
        convlens.fool_linear(X, W, target=2)
    with pytest.raises(InputError, match="x must be a non-empty sequence of finite numbers"):
        convlens.fool_linear([1, float("nan")], [1, 1])


# ---- eps vs dimension --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_01():
    ds = datasets.load("digits", size=8)
    keep = (ds.labels == 0) | (ds.labels == 1)
    return ds.images[keep].flatten(1).double().numpy(), ds.labels[keep].numpy()


def test_min_eps_flips_sklearn_predictions(digits_01):
    """The oracle is scikit-learn's own predict on the nudged images."""
    from sklearn.linear_model import LogisticRegression

    x, y = digits_01
    clf = LogisticRegression(C=1.0, max_iter=5000).fit(x, y)
    w, scores = clf.coef_[0], clf.decision_function(x)
    eps = flip_eps(scores, w)  # (N,)
    step = -np.sign(scores)[:, None] * np.sign(w)[None, :]  # towards the other side
    before = clf.predict(x)
    assert np.all(clf.predict(x + (eps * (1 + 1e-6))[:, None] * step) != before)
    assert np.all(clf.predict(x + (eps * (1 - 1e-6))[:, None] * step) == before)


def test_row_space_fit_equals_direct_sklearn_fit(digits_01):
    from sklearn.linear_model import LogisticRegression

    x, y = digits_01
    x = np.repeat(x[:60], 3, axis=1) + np.linspace(0, 0.01, 192)  # 60 images, 192 dims: the row-space path
    y = y[:60]
    w, b = fit_logistic(x, y)
    ref = LogisticRegression(C=1.0, max_iter=20_000, tol=1e-10).fit(x, y)
    np.testing.assert_allclose(w, ref.coef_[0], atol=2e-4 * np.abs(ref.coef_).max())
    assert b == pytest.approx(ref.intercept_[0], abs=1e-3)


@pytest.mark.slow
def test_median_eps_decreases_with_dimension():
    res = convlens.eps_vs_dimension("photos", classes=("cat", "coffee"), sizes=(4, 16, 64), n_per_class=60)
    assert res.dims == (48, 768, 12288)
    med = res.median_eps
    assert med[0] > med[1] > med[2]
    assert min(res.accuracy) > 0.85  # the classifiers do separate the classes
    assert res.slope < 0
    back = EpsVsDimension.from_dict(json.loads(json.dumps(res.to_dict())))
    np.testing.assert_allclose(back.median_eps, med)
    assert "64x64" in repr(res) and res.plot() is not None


def test_eps_vs_dimension_on_tensors_with_held_out_half():
    ds = datasets.load("digits", size=8)
    res = convlens.eps_vs_dimension((ds.images, ds.labels), classes=(0, 1), sizes=(4, 8), n_per_class=40)
    assert res.classes == ("0", "1") and res.dims == (16, 64) and res.n_train == 80
    for e, w, b, acc in zip(res.eps, res.weights, res.biases, res.accuracy):
        assert e.shape == (res.n_test,) and np.all(e >= 0) and acc > 0.9
    with pytest.raises(InputError, match="classes must be"):
        convlens.eps_vs_dimension((ds.images, ds.labels), classes=(0, 0))


# ---- CLI and report -----------------------------------------------------------------------------------------

def test_cli_walkthrough_and_options(capsys):
    from convlens.cli import main

    main(["fool-linear"])
    out = capsys.readouterr().out
    assert "= -3" in out and "0.0474" in out and "from 5% to 88%" in out
    main(["fool-linear", "--x", "1,2", "--w", "1,-1", "--eps", "1", "--json"])
    d = json.loads(capsys.readouterr().out)
    assert d["x_adv"] == [2.0, 1.0] and d["score_before"] == -1 and d["score_after"] == 1


def test_cli_dims_writes_json(tmp_path, capsys):
    from convlens.cli import main

    out = tmp_path / "eps.json"
    main(["fool-linear", "--dims", "--data", "digits", "--classes", "0,1", "--sizes", "4,8", "--n-per-class", "30",
          "--out", str(out)])
    assert "log-log slope" in capsys.readouterr().out
    assert json.loads(out.read_text())["dims"] == [16, 64]


class _Ctx:
    """What the section reads from a report context: saved results by name."""

    def __init__(self, results):
        self.results = results

    def result(self, name):
        return self.results.get(name)


def test_report_section():
    from convlens.reporting.sections.linear_fooling import linear_fooling

    sec = linear_fooling(_Ctx({}))
    table = sec.blocks[0]
    assert table.rows[2][1:] == ["1.5", "-1.5", "3.5", "-2.5", "2.5", "1.5", "1.5", "-3.5", "4.5", "1.5"]
    assert "from 5% to 88%" in sec.blocks[2].text and "convlens fool-linear --dims" in sec.blocks[-1].text
    ds = datasets.load("digits", size=8)
    saved = convlens.eps_vs_dimension((ds.images, ds.labels), sizes=(4, 8), n_per_class=30).to_dict()
    sec = linear_fooling(_Ctx({"eps-vs-dimension": saved}))
    assert [b.kind for b in sec.blocks][-2:] == ["figure", "table"]
