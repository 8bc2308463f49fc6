"""Commands under ``torchrun``: the launcher's environment, the process group, and who writes and prints.

``torchrun --standalone --nproc_per_node 2 -m convlens.cli top-patches RUN`` (or ``torchrun ... $(which
convlens) top-patches RUN``: the console script is a Python file) starts two processes, each with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` (and ``MASTER_ADDR``/``MASTER_PORT``) set. A command
that shards (``top-patches``, ``codes``, ``evaluate``, ``precompute``) reads them with ``launched(device)``:
it joins the process group (gloo for a model on the CPU, NCCL on CUDA), gives the library
``launch.shard`` (``rank=``, ``world_size=``), so each rank computes its shard and every rank gets the
whole back (``convlens.shards``), and lets rank 0 alone write (``launch.saving``) and print: the other
ranks' stdout and stderr go nowhere while the command runs (errors still print). The group is destroyed
when the command ends (after a barrier when it succeeded), also on an error. Without those variables the
command runs as one process.
Every rank reads the run directory and writes its own shard of a cache (``--out``, ``RUN/codes``), so
across machines RUN must be on a shared filesystem. Results equal one process's with the same threads per
process (torchrun sets ``OMP_NUM_THREADS=1``; a backward pass may sum in another order with more threads).
"""
from __future__ import annotations

import os
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from typing import Iterator, Mapping

from ..errors import InputError

NAMES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Launch:
    """This process's place among ``world_size`` processes (rank 0 of 1 without a launcher)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0: the process that writes the results and prints."""
        return self.rank == 0

    @property
    def shard(self) -> dict:
        """The library's sharding arguments: ``top_patches(run, **launch.shard)``."""
        return {"rank": self.rank, "world_size": self.world_size}

    @contextmanager
    def saving(self, run, name: str, options: dict | None = None):
        """``convlens.results.saving`` on rank 0; elsewhere a Saver that writes nothing."""
        from ..results import Saver, analysis, saving

        if not self.leader:
            yield Saver(analysis(name), None)
            return
        with saving(run, name, options) as saver:
            yield saver

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (so that every rank takes the same decisions)."""
        if self.world_size == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        """Wait until every rank gets here (after rank 0 prepared a folder the others use)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()


def from_env(env: Mapping[str, str] = os.environ) -> Launch:
    """The Launch that ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` describe (torchrun sets all three); one
    process when none is set. An InputError names what is missing or wrong."""
    given = {name: env.get(name) for name in NAMES if env.get(name) not in (None, "")}
    if not given:
        return Launch()
    if "RANK" not in given or "WORLD_SIZE" not in given:
        missing = [n for n in ("RANK", "WORLD_SIZE") if n not in given]
        shown = ", ".join(f"{n}={v}" for n, v in given.items())
        raise InputError(f"RANK and WORLD_SIZE must be set together to run as one of several processes (torchrun "
                         f"sets RANK, WORLD_SIZE and LOCAL_RANK); got {shown} and no {' or '.join(missing)}")
    values = {}
    for name, text in given.items():
        try:
            values[name] = int(text)
        except ValueError:
            raise InputError(f"{name} must be an int (set by torchrun); got {text!r}") from None
    rank, world_size = values["RANK"], values["WORLD_SIZE"]
    local_rank = values.get("LOCAL_RANK", rank)
    if world_size < 1:
        raise InputError(f"WORLD_SIZE must be a positive int; got {world_size}")
    if not 0 <= rank < world_size:
        raise InputError(f"RANK must be in [0, WORLD_SIZE - 1] = [0, {world_size - 1}]; got {rank}")
    if not 0 <= local_rank <= rank:
        raise InputError(f"LOCAL_RANK must be in [0, RANK] = [0, {rank}]; got {local_rank}")
    return Launch(rank, world_size, local_rank)


@contextmanager
def launched(device=None, env: Mapping[str, str] = os.environ) -> Iterator[Launch]:
    """The Launch of this process, inside its process group (``device``: the model's; NCCL on CUDA, gloo
    otherwise), destroyed on the way out; the ranks other than 0 print nothing inside."""
    launch = from_env(env)
    if launch.world_size == 1:
        yield launch
        return
    import torch
    import torch.distributed as dist

    joined = False
    if dist.is_initialized():  # a caller's own group: used as it is, and left to the caller
        if (dist.get_rank(), dist.get_world_size()) != (launch.rank, launch.world_size):
            raise InputError(f"RANK and WORLD_SIZE must match the process group already running (rank "
                             f"{dist.get_rank()} of {dist.get_world_size()}); got {launch.rank} of {launch.world_size}")
    else:
        missing = [n for n in ("MASTER_ADDR", "MASTER_PORT") if not env.get(n)]
        if missing:
            raise InputError(f"{' and '.join(missing)} must be set to join the other {launch.world_size - 1} "
                             f"process(es) (torchrun sets them); got RANK={launch.rank}, WORLD_SIZE="
                             f"{launch.world_size} without them")
        cuda = device is not None and torch.device(device).type == "cuda"
        if cuda:
            torch.cuda.set_device(torch.device(device) if torch.device(device).index is not None else launch.local_rank)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://", rank=launch.rank,
                                world_size=launch.world_size)
        joined = True
    finished = False
    try:
        if launch.leader:
            yield launch
        else:
            with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):
                yield launch
        finished = True
    finally:
        if joined:
            if finished:  # every rank done before any tears its connections down (a rank that left first made
                dist.barrier()  # gloo abort the other's exit); not after an error: the others may never get here
            dist.destroy_process_group()
