"""`make demo` from scratch, and every figure the README quotes about it, measured and kept in one place.

Runs the ``convlens demo`` command in a fresh process on an empty run directory (imports, data
generation, training with the per-epoch test pass, every analysis, the report), as `make demo` does on
a fresh clone, and reads what it measured from the run's own files: test accuracy, training and
analysis times, and each analysis's headline number (fooling images reached, class-model confidence,
inversion errors, adversarial distortion, FGSM accuracy, GrabCut IoU, code-space agreement).

Each call appends its figures to ``docs/demo_figures.json`` (the last ``KEEP`` runs) and rewrites the
README's block between ``<!-- demo-figures -->`` markers with every figure's range over those runs
(:mod:`benchmarks.demo_figures`), so the README says what fresh runs measured, with their spread. The
benchmark row compares the training + analysis wall time with the 3-minute target (goal <= 1.0).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.demo_figures import record

TARGET_S = 180.0


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as work:
        out = Path(work) / "demo"
        command = [str(Path(sys.executable).with_name("convlens")), "demo", "--out", str(out)]
        t = time.perf_counter()
        subprocess.run(command, capture_output=True, text=True, check=True, env={**os.environ, "COLUMNS": "120"})
        wall = time.perf_counter() - t
        figures = measured(out, wall)
    record(figures)
    return [{"case": "`convlens demo` from scratch: data, training, every analysis, the report",
             "convlens_s": wall, "peer": "target: 3 minutes", "peer_s": TARGET_S, "ratio": wall / TARGET_S,
             "test_acc": figures["test accuracy (%)"] / 100}]


def measured(run_dir: Path, wall: float) -> dict:
    """The README's figures, from the files a demo run writes (run.json, results/*.json, and the results
    store's records of how long each analysis took)."""
    from convlens.cli.demo_steps import RESULTS
    from convlens.results import ResultStore

    def read(name):
        return json.loads((run_dir / name).read_text())

    manifest, res = read("run.json"), lambda name: read(f"results/{name}.json")
    store, evaluation = ResultStore(run_dir), res("evaluation")
    gradient, evolution = res("fooling-gradient")["info"], res("fooling-evolution")["info"]
    classes = res("class-model")["info"]
    adversarial, fgsm = res("adversarial"), res("fgsm-sweep")
    eps = [round(e * 255) for e in fgsm["eps"]]
    inversion = {layer["layer"]: layer["info"]["feature_error"][0] for layer in res("inversion")["layers"]}
    agreement = {row["layer"]: row["agreement"] for row in res("codes-agreement")["rows"]}
    probe, shift = res("probe"), res("invariance-translate")
    at8 = [i for i, a in enumerate(shift["amounts"]) if abs(a) == 8]
    eps = res("eps-vs-dimension")
    n_cls = len(gradient["targets"])
    return {
        "wall (s)": wall,
        "training (s)": sum(epoch["seconds"] for epoch in manifest["history"]),
        "analyses (s)": sum(store.entry(name).seconds for name in RESULTS),
        "test accuracy (%)": 100 * (1 - evaluation["top1_error"]),
        "top-5 error (%)": 100 * evaluation["top5_error"],
        "fooling, gradient: classes at >= 99.6%": f"{sum(gradient['reached'])}/{n_cls}",
        "fooling, gradient: steps": gradient["steps"],
        "fooling, evolution: classes at >= 99.6%": f"{sum(evolution['reached'])}/{n_cls}",
        "fooling, evolution: generations": evolution["generations"],
        "fooling, lowest confidence (%)": 100 * min(gradient["confidence"] + evolution["confidence"]),
        "class models: lowest P(class)": min(classes["prob_after"]),
        "class models: top-1": f"{sum(t == c for t, c in zip(classes['top1'], classes['targets']))}"
                               f"/{len(classes['targets'])}",
        **{f"inversion: feature error at {layer}": err for layer, err in inversion.items()},
        "adversarial: reached the target": f"{sum(adversarial['success'])}/{len(adversarial['success'])}",
        "adversarial: mean L-inf (/255)": 255 * sum(adversarial["linf"]) / len(adversarial["linf"]),
        **{f"FGSM accuracy at eps {e}/255 (%)": 100 * a for e, a in zip(eps, fgsm["accuracy"]) if e in (0, 1, 4)},
        **{f"linear probe accuracy (%), {row[0]}, {' / '.join(map(str, probe['per_class']))} per class":
           " / ".join(row[1:]) for row in probe["table"]},
        **{f"invariance: mean distance at ±8 px, {layer}": sum(shift["mean_distance"][i][j] for j in at8) / len(at8)
           for i, layer in enumerate(shift["layers"])},
        **{f"linear fooling on photos: median nudge at {s}x{s}x3": e
           for s, e in zip(eps["sizes"], eps["median_eps"]) if s in (4, 64)},
        "saliency + GrabCut: mean IoU": res("saliency")["mean_iou"],
        **{f"5-NN class agreement, {layer} (%)": 100 * a for layer, a in agreement.items()},
    }


if __name__ == "__main__":
    print(run())
