"""Keep freed memory in the process's C heap (glibc), so that a loop's per-step tensors cost no page faults.

glibc's ``malloc`` gives memory back to the system whenever the free space at the top of its heap
grows past a threshold, and serves large blocks by ``mmap``. A loop that allocates and frees the same
few megabytes of tensors on every step (an optimization step, a training step, a batch of
activations) then pays for hundreds of page faults per step: on 2 CPU cores, about a third of the
time of an inversion step of the demo model. :func:`keep_heap` raises both thresholds, the effect
PyTorch's CPU performance notes get by swapping in jemalloc or tcmalloc.

It changes the whole process for good (the process keeps its peak heap instead of returning it), so
the library never calls it by itself: the ``convlens`` command does at start, and a script may call
``convlens.keep_heap()`` once. A no-op returning False where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import sys

__all__ = ["keep_heap"]

MMAP_THRESHOLD = 32 << 20      # blocks below 32 MiB come from the heap (glibc's largest allowed value)
TRIM_THRESHOLD = 512 << 20     # give memory back only when 512 MiB at the top of the heap are free
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3   # mallopt parameter numbers (malloc.h)


def keep_heap(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's mmap and trim thresholds (bytes); True when both were set."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: musl's mallopt accepts and ignores these
    except (OSError, AttributeError):
        return False
    set_mmap = libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
    set_trim = libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    return bool(set_mmap and set_trim)
