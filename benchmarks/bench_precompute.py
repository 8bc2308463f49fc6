"""`convlens precompute` on the demo run vs the library calls it makes, in the same process.

Run: a copy of ``runs/demo`` (weights and ``run.json``; shapesnet, 4 conv layers, 352 units, 1,000 test
images of 3x64x64) in a temporary folder. convlens: each step of the command as it runs them
(``precompute_steps.STEPS``, ``--force``: through the commands' helpers, writing every JSON, ``.npz``
(the projections: ~75 MB) and PNG with its record, the codes into their cache), plus the command's own
fixed cost (parsing, loading the run, the results store's checks), timed as a rerun that finds every step
current. Peer: per step, the library calls that step makes, on the run and images loaded once, their
results discarded: ``evaluate``; ``top_patches``; ``projection_sets`` (``top_projections`` of each unit);
``codes`` (into a fresh cache folder) and ``agreement_by_layer``; ``health``; ``filters`` of the default
and of each conv layer, each grid drawn to PNG bytes; ``tsne`` of the 1,000 codes, its 32x32 ``tsne_grid``
and the thumbnails. Both sides run with the same torch threads (``BENCH_THREADS``, default torch's own).

Time: one warm-up pass of the peer (imports, numba's compilation), then ``REPEATS`` rounds in which each
step runs on both sides back to back (so that the load of a shared machine hits both alike); per step the
fastest of each side; the totals are their sums. Also one cold end-to-end run of the command (its results
and codes removed) for reference. Goal: ratio <= 1.2x (the command's own work at most a fifth on top of
the library's).
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 3
THREADS = int(os.environ.get("BENCH_THREADS", "0"))  # torch threads for both sides (0: torch's default)


def library_steps(run, data, scratch: Path) -> dict:
    """Per step title of ``precompute_steps.STEPS``: a callable making the library calls that step makes."""
    import numpy as np

    from convlens.codespace.code_agreement import agreement_by_layer
    from convlens.codespace.codes import codes, thumbnails
    from convlens.codespace.tsne import tsne
    from convlens.codespace.tsne_grid import tsne_grid
    from convlens.insight.health import health
    from convlens.plots.common import to_png
    from convlens.training.evaluate import evaluate
    from convlens.units.filters import conv_layers, filters
    from convlens.units.patches import top_patches
    from convlens.units.projection_sets import projection_sets

    made: dict = {"folders": 0}

    def top():
        made["top"] = top_patches(run, data, progress=False)

    def extract():
        made["folders"] += 1
        made["code"] = codes(run, data, out=scratch / f"codes-{made['folders']}", progress=False)
        agreement_by_layer(run, made["code"].data, k=5)

    def grids():
        for layer in [None, *(name for name, _, _ in conv_layers(run.pixel_model()))]:
            to_png(filters(run, layer).plot())

    def embed():
        code = made["code"]
        embedded = tsne(code, seed=0, n_jobs=1)  # all 1,000 codes (precompute's default subset: up to 5,000)
        side = int(np.ceil(np.sqrt(len(code))))
        tsne_grid(embedded.embedding, -(-len(code) // side), side)
        thumbnails(code.images(), 32)

    return {"evaluation": lambda: evaluate(run, data), "top-9 patches": top,
            "projections": lambda: projection_sets(run, made["top"], data), "codes": extract,
            "health": lambda: health(run, data, progress=False), "filters": grids, "t-SNE": embed}


def _seconds(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def run() -> list[dict]:
    import torch

    demo = ROOT / "runs" / "demo"
    if not (demo / "weights.safetensors").is_file():
        return [{"case": "`convlens precompute` on the demo run", "note": "runs/demo not built (`make demo-model`)"}]
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS or threads)
    try:
        return _measure(demo)
    finally:
        torch.set_num_threads(threads)


def _measure(demo: Path) -> list[dict]:
    import torch

    from convlens.cli.app import main
    from convlens.cli.precompute_steps import STEPS, Job
    from convlens.training.runs import load_run

    with tempfile.TemporaryDirectory(prefix="bench_precompute_") as work:
        run_dir = Path(work) / "demo"
        run_dir.mkdir()
        for name in ("run.json", "weights.safetensors"):
            shutil.copy2(demo / name, run_dir / name)
        command = ["precompute", str(run_dir), "--quiet"]

        def cli() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                main(command)

        loaded = load_run(run_dir)
        job = Job(loaded, force=True)
        peer = library_steps(loaded, job.dataset(), Path(work))
        for fn in peer.values():  # warm-up
            fn()
        ours_s = {s.title: [] for s in STEPS}
        peer_s = {s.title: [] for s in STEPS}
        for _ in range(REPEATS):
            for step in STEPS:
                if step.title == "codes":
                    job.made.pop("codes", None)  # extracted again (--force empties the cache); t-SNE reuses them
                ours_s[step.title].append(_seconds(lambda: step.compute(job)))
                peer_s[step.title].append(_seconds(peer[step.title]))
        fixed = min(_seconds(cli) for _ in range(REPEATS))  # every step current: the command's own cost
        for name in ("results", "codes"):
            shutil.rmtree(run_dir / name)
        cold = _seconds(cli)
        size = sum(p.stat().st_size for p in (run_dir / "results").iterdir() if p.is_file()) / 1e6
    rows = [{"case": f"precompute step: {title}", "convlens_s": min(ours_s[title]), "peer_s": min(peer_s[title]),
             "ratio": min(ours_s[title]) / min(peer_s[title])} for title in ours_s]
    ours_total = sum(r["convlens_s"] for r in rows) + fixed
    peer_total = sum(r["peer_s"] for r in rows)
    rows.append({"case": "`convlens precompute` on the demo run: 7 steps, 4 conv layers, 352 units, 1,000 images",
                 "threads": torch.get_num_threads(), "results_mb": size, "command_fixed_s": fixed,
                 "cold_run_s": cold, "convlens_s": ours_total, "peer": "the library calls it makes",
                 "peer_s": peer_total, "ratio": ours_total / peer_total, "goal": "<= 1.2x"})
    return rows


if __name__ == "__main__":
    for row in run():
        print(row)
    if "ratio" in row:
        print(f"ratio {row['ratio']:.3f}x (goal {row['goal']})")
