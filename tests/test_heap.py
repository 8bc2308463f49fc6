"""keep_heap: the optimization loop stops page-faulting on every step (faults counted by the kernel, in
a fresh process each way, since the setting is process-wide)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

LOOP = """
import resource, sys, torch
import convlens
from convlens.synthesis import objectives as O
kept = convlens.keep_heap() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
torch.manual_seed(0)
net = convlens.create("shapesnet").eval()
objective = O.feature_match("conv3", torch.randn(4, 128, 8, 8)) + 1e-3 * O.tv()
x = torch.rand(4, 3, 64, 64)
convlens.optimize(net, objective, x, steps=10)
per_step = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    convlens.optimize(net, objective, x, steps=20)
    per_step.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
print(kept, *per_step)
"""


# glibc's worst case for such a loop, fixed instead of left to its dynamic thresholds (which, depending
# on the order of the first allocations, fault on every step or hardly at all): blocks of 128 KiB and
# more are mmapped and unmapped each time, and free heap tops are given back at once.
WORST_CASE = "glibc.malloc.mmap_threshold=131072:glibc.malloc.trim_threshold=0"


def _faults_per_step(mode: str) -> tuple[str, list[float]]:
    """(whether keep_heap ran, page faults per step of each of 5 calls of the loop), under WORST_CASE."""
    env = {**os.environ, "GLIBC_TUNABLES": WORST_CASE}
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True,
                         env=env).stdout
    kept, *faults = out.split()
    return kept, [float(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_keep_heap_removes_the_page_faults_of_the_optimization_loop():
    """Under glibc's worst-case thresholds the loop faults hundreds of pages in every call; keep_heap
    overrides them and the calls settle at none. Now and then a call still takes some from outside the
    loop (the kernel reclaiming idle pages), so kept is judged by its fewest and the default by its median."""
    _, default = _faults_per_step("default")
    kept, with_keep = _faults_per_step("keep")
    assert kept == "True", "keep_heap found no glibc"
    typical = sorted(default)[len(default) // 2]
    assert typical > 50, f"the worst-case thresholds should fault on every step: {default}"
    assert min(with_keep) < 2 and min(with_keep) < typical / 10, (with_keep, default)


def test_the_command_keeps_the_heap(monkeypatch):
    import convlens.heap
    from convlens.cli import main

    calls = []
    monkeypatch.setattr(convlens.heap, "keep_heap", lambda: calls.append(1) or True)
    try:
        main(["--help"])
    except SystemExit as ex:
        assert not ex.code
    assert calls == [1]
