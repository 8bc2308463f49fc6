"""keep_heap: the optimization loop stops page-faulting on every step (faults counted by the kernel, in
a fresh process each way, since the setting is process-wide)."""
from __future__ import annotations

import subprocess
import sys

import pytest

LOOP = """
import resource, sys, torch
import convlens
from convlens.visualize import objectives as O
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


def _faults_per_step(mode: str) -> tuple[str, list[float]]:
    """(whether keep_heap ran, page faults per step of each of 5 calls of the loop)."""
    out = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, check=True).stdout
    kept, *faults = out.split()
    return kept, [float(f) for f in faults]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc thresholds")
def test_keep_heap_removes_the_page_faults_of_the_optimization_loop():
    """With the defaults, the loop faults tens to hundreds of pages in most calls. With the heap kept,
    the calls settle at none; now and then a call still takes some from outside the loop (the kernel
    reclaiming idle pages), so kept is judged by its fewest and the defaults by their median."""
    kept, with_keep = _faults_per_step("keep")
    if kept != "True":
        pytest.skip("the C library is not glibc")
    _, default = _faults_per_step("default")
    typical = sorted(default)[len(default) // 2]
    if typical < 20:
        pytest.skip(f"this C library's defaults fault little here ({typical:.0f} page faults per step)")
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
