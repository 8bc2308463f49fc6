"""CNN vs Human statistics against independent oracles: scipy's Wilson interval and exact binomial test,
Geirhos et al.'s kappa worked by hand, counts made by a plain loop, Karpathy's published numbers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from convlens.training.human_vs_cnn import (CATEGORIES, CELLS, KARPATHY_2014, error_consistency, game_sample,
                                            human_vs_cnn, mcnemar_exact, wilson)

CLASSES = ["cat", "dog", "fox", "owl", "eel", "ant", "bee"]


def _answers(seed: int = 0, n: int = 200) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        truth = CLASSES[rng.integers(len(CLASSES))]
        k = int(rng.integers(1, 6))
        labels = list(rng.choice(CLASSES, size=k, replace=False))
        top5 = list(rng.choice(CLASSES, size=5, replace=False))
        out.append({"image": f"t{i}", "truth": truth, "labels": labels, "model_top5": top5,
                    "seconds": float(rng.exponential(4.0)) if i % 7 else None, "annotator": f"a{i % 3}",
                    "category": list(CATEGORIES)[i % len(CATEGORIES)] if i % 2 else None})
    return out


@pytest.mark.parametrize("k, n", [(0, 10), (1, 10), (5, 100), (76, 1500), (102, 1500), (10, 10), (3, 7)])
def test_wilson_interval_matches_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-12)


def test_wilson_of_nothing_is_undefined():
    assert all(math.isnan(x) for x in wilson(0, 0))


@pytest.mark.parametrize("b, c", [(72, 46), (0, 0), (0, 5), (5, 0), (3, 3), (10, 1), (1, 30), (200, 170)])
def test_mcnemar_exact_matches_scipy_binomtest_on_the_discordant_pairs(b, c):
    expected = 1.0 if b + c == 0 else binomtest(b, b + c, 0.5).pvalue
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_kappa_on_a_hand_made_case():
    human = [1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    cnn = [1, 1, 1, 1, 0, 0, 1, 0, 0, 0]
    # by hand: both right 4, both wrong 3 -> c_obs = 0.7; p_h = 0.6, p_c = 0.5 -> c_exp = 0.3 + 0.2 = 0.5
    assert error_consistency(human, cnn) == pytest.approx((0.7 - 0.5) / (1 - 0.5))
    assert error_consistency(human, human) == pytest.approx(1.0)
    assert error_consistency([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx((0 - 0.5) / 0.5)  # opposite errors: -1
    assert math.isnan(error_consistency([1, 1, 1], [1, 1, 1]))  # c_exp = 1: undefined


def test_the_table_and_errors_match_a_count_by_hand():
    answers = _answers()
    result = human_vs_cnn(answers)
    for k, table in ((5, result.table(5)), (1, result.table(1))):
        counts = dict.fromkeys(CELLS, 0)
        cells = {c: [] for c in CELLS}
        for a in answers:
            h, c = a["truth"] in a["labels"][:k], a["truth"] in a["model_top5"][:k]
            name = ("both_correct" if c else "human_only_correct") if h else ("cnn_only_correct" if c else "both_wrong")
            counts[name] += 1
            cells[name].append(a["image"])
        assert table == counts
        assert result.cells(k) == cells
        n = len(answers)
        d = result.to_dict()
        key = "" if k == 5 else "_top1"
        assert d["human"][f"top{k}_error"] == pytest.approx((counts["cnn_only_correct"] + counts["both_wrong"]) / n)
        assert d["cnn"][f"top{k}_error"] == pytest.approx((counts["human_only_correct"] + counts["both_wrong"]) / n)
        assert d[f"mcnemar_p{key}"] == pytest.approx(
            binomtest(counts["human_only_correct"], counts["human_only_correct"] + counts["cnn_only_correct"]).pvalue)


def test_karpathys_table_gives_his_published_errors():
    answers, i = [], 0
    for cell, count in KARPATHY_2014.items():
        for _ in range(count):
            h = cell in ("both_correct", "human_only_correct")
            c = cell in ("both_correct", "cnn_only_correct")
            answers.append({"image": f"t{i}", "truth": "cat", "labels": ["cat"] if h else ["dog"],
                            "model_top5": ["cat" if c else "dog", "fox", "owl", "eel", "ant"]})
            i += 1
    d = human_vs_cnn(answers).to_dict()
    assert d["n"] == 1500
    assert round(100 * d["human"]["top5_error"], 1) == 5.1 and round(100 * d["cnn"]["top5_error"], 1) == 6.8
    assert d["table"] == KARPATHY_2014
    assert d["mcnemar_p"] == pytest.approx(binomtest(72, 118, 0.5).pvalue)


def test_per_class_time_and_categories_against_plain_loops():
    answers = _answers(seed=3)
    d = human_vs_cnn(answers, class_names=CLASSES).to_dict()
    for row in d["per_class"]:
        mine = [a for a in answers if a["truth"] == row["class"]]
        assert row["n"] == len(mine)
        assert row["human_top1"] == pytest.approx(np.mean([a["labels"][0] == a["truth"] for a in mine]))
        assert row["cnn_top5"] == pytest.approx(np.mean([a["truth"] in a["model_top5"] for a in mine]))
    assert [r["class"] for r in d["per_class"]] == [c for c in CLASSES if any(a["truth"] == c for a in answers)]
    secs = np.array([a["seconds"] for a in answers if a["seconds"] is not None])
    counts, edges = np.histogram(secs, bins=len(d["seconds"]["counts"]), range=(0, secs.max()))
    assert d["seconds"]["counts"] == counts.tolist() and d["seconds"]["edges"] == pytest.approx(edges.tolist())
    assert d["seconds"]["median"] == pytest.approx(np.median(secs)) and d["seconds"]["n"] == len(secs)
    for cell in CELLS[1:]:
        mine = []
        for a in answers:
            h, c = a["truth"] in a["labels"], a["truth"] in a["model_top5"]
            name = ("both_correct" if c else "human_only_correct") if h else ("cnn_only_correct" if c else "both_wrong")
            if name == cell:
                mine.append(a["category"])
        for key in CATEGORIES:
            assert d["categories"][cell][key] == mine.count(key)
        assert d["categories"][cell]["untagged"] == mine.count(None)


def test_per_annotator_results_are_each_annotators_own():
    answers = _answers(seed=5)
    pooled = human_vs_cnn(answers)
    rows = {s["annotator"]: s for s in pooled.to_dict()["per_annotator"]}
    assert sorted(rows) == ["a0", "a1", "a2"]
    for name, row in rows.items():
        alone = human_vs_cnn([a for a in answers if a["annotator"] == name])
        assert row["n"] == alone.n and row["human"]["top5_error"] == alone.error("human", 5)["error"]
        assert human_vs_cnn(answers, annotator=name).table() == alone.table()
    assert sum(r["n"] for r in rows.values()) == pooled.n


def test_bad_answers_are_refused():
    with pytest.raises(Exception, match="1 to 5"):
        human_vs_cnn([{"image": "t0", "truth": "cat", "labels": [], "model_top5": ["cat"]}])


def test_the_game_sample_is_seeded_disjoint_and_prefix_stable():
    counted, practice = game_sample(100, 20, practice=10, seed=4)
    assert len(set(counted)) == 20 and len(set(practice)) == 10 and not set(counted) & set(practice)
    assert game_sample(100, 20, practice=10, seed=4) == (counted, practice)
    assert game_sample(100, 10, seed=4)[0] == counted[:10]  # a smaller session sees the same first images
    assert game_sample(100, 20, seed=5)[0] != counted
    with pytest.raises(Exception, match="at most 100"):
        game_sample(100, 95, practice=10)


def test_the_figure_draws(tmp_path):
    fig = human_vs_cnn(_answers(n=40)).plot()
    assert len(fig.axes) == 3
    fig.savefig(tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
