"""Side-by-side timing: the two sides alternate, so that drift of a shared machine affects both."""
from __future__ import annotations

import statistics
import time
from typing import Callable


def alternate(ours: Callable, peer: Callable, repeats: int, *, best: bool = False) -> tuple[float, float]:
    """Median (``best``: minimum) seconds of ``ours()`` and ``peer()`` over ``repeats`` alternating runs
    (no warm-up here)."""
    t_ours, t_peer = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        ours()
        t_ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        peer()
        t_peer.append(time.perf_counter() - t)
    stat = min if best else statistics.median
    return stat(t_ours), stat(t_peer)
