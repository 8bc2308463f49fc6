"""Side-by-side timing: the two sides alternate, so that drift of a shared machine affects both."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(ours: Callable, peer: Callable, repeats: int) -> tuple[float, float]:
    """Median seconds of ``ours()`` and ``peer()`` over ``repeats`` alternating runs (no warm-up here)."""
    t_ours, t_peer = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer()
        t_peer.append(time.perf_counter() - t)
    return statistics.median(t_ours), statistics.median(t_peer)


def median_pair(ours: Callable, peer: Callable, repeats: int) -> tuple[float, float, object, object]:
    """``repeats`` pairs of runs, ``ours()`` then ``peer()`` back to back; the pair whose ratio of the
    two sides' outputs (each a time they measured themselves, e.g. seconds per step) is the median:
    (ours' whole seconds, peer's whole seconds, ours' output, peer's output).

    A pair runs back to back, so a machine that is slower for a while slows both of its runs; on a
    shared machine whose speed drifts by 10-30% this is steadier than comparing each side's median."""
    pairs = []
    for _ in range(repeats):
        t = time.perf_counter()
        out_ours = ours()
        t_ours = time.perf_counter() - t
        t = time.perf_counter()
        out_peer = peer()
        pairs.append((t_ours, time.perf_counter() - t, out_ours, out_peer))
    pairs.sort(key=lambda p: p[3] / p[2])
    return pairs[(len(pairs) - 1) // 2]
