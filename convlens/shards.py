"""Sharding a pass over N images between processes: which rows a rank takes, and the parts gathered back.

A rank takes a contiguous run of whole batches (``shard_bounds``), so every image meets the same batch
(same neighbours, same batch size) as in one uninterrupted process and sharded results are bitwise
those of one process. With ``torch.distributed`` initialized at that world size (``torchrun``; see
``convlens/cli/launcher.py``), ``gathered`` hands every rank every rank's part, in rank order; the
methods merge them (``Features.merge``, ``TopPatches.merge``, ``Evaluation.merge``).
"""
from __future__ import annotations

from .errors import expect


def check_shard(rank, world_size) -> None:
    """``world_size`` a positive int and ``rank`` an int in [0, world_size - 1], or an InputError naming it."""
    if not isinstance(world_size, int) or isinstance(world_size, bool) or world_size < 1:
        raise expect("world_size", "a positive int", world_size)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise expect("rank", f"an int in [0, {world_size - 1}]", rank)


def shard_bounds(n: int, batch_size: int, rank: int, world_size: int) -> tuple[int, int]:
    """[lo, hi) rows of shard ``rank``: a contiguous run of whole batches (the last batch may be short)."""
    batches = -(-n // batch_size)
    return (min(n, batches * rank // world_size * batch_size),
            min(n, batches * (rank + 1) // world_size * batch_size))


def distributed(world_size: int) -> bool:
    """Whether torch.distributed runs ``world_size`` > 1 processes (so that the shards can be gathered)."""
    import torch.distributed as dist

    return world_size > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() == world_size


def gathered(part, world_size: int) -> list | None:
    """Every rank's ``part`` in rank order when torch.distributed runs ``world_size`` ranks; None otherwise
    (one process, or shards computed one by one: the caller keeps its own part)."""
    import torch.distributed as dist

    if not distributed(world_size):
        return None
    parts: list = [None] * world_size
    dist.all_gather_object(parts, part)
    return parts
