"""Side-by-side timing: the two sides alternate, so that drift of a shared machine affects both."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(ours: Callable, peer: Callable, repeats: int, *, paired: bool = False) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``peer()`` over ``repeats`` alternating runs (no warm-up here).

    ``paired``: the two times of the run pair whose ratio is the median of the pairs' ratios. A pair runs
    back to back, so a machine that is slower for a while slows both of its runs; on a shared machine
    whose speed drifts by 10-30% this is steadier than comparing each side's own median."""
    t_ours, t_peer = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer()
        t_peer.append(time.perf_counter() - t)
    if not paired:
        return statistics.median(t_ours), statistics.median(t_peer)
    pairs = sorted(zip(t_ours, t_peer), key=lambda p: p[1] / p[0])
    return pairs[(len(pairs) - 1) // 2]
