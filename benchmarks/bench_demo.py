"""The `make demo` job against its target: >= 95% test accuracy on `shapes` in <= 3 minutes on 2 cores.

Runs the demo recipe from scratch in a fresh process (imports, data generation, training with the
per-epoch test pass, checkpoints) and reports wall time and test accuracy. The "peer" here is the
target itself: ratio = wall time / 180 s (goal <= 1.0).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time

TARGET_S = 180.0
SCRIPT = """
import json, sys
from convlens.training.fit import demo
run = demo(out=sys.argv[1], progress=False)
print(json.dumps({"test_acc": run.history[-1]["test_acc"], "epochs": len(run.history)}))
"""


def run() -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as work:
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", SCRIPT, f"{work}/run"], capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return [{"case": f"make demo recipe from scratch (shapesnet on shapes, {result['epochs']} epochs)",
             "convlens_s": wall, "peer": "target: 3 minutes", "peer_s": TARGET_S, "ratio": wall / TARGET_S,
             "test_acc": result["test_acc"]}]


if __name__ == "__main__":
    print(run())
