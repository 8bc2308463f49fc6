"""The steps of `convlens precompute`: which results it fills ``RUN/results`` with, in one list.

Each step saves the default results of a command (with ``--data``: those of ``--data DATA``), through
that command's own compute-and-save helper, so the CLI, the report and the web explorer share the files.
A step is done when every result it makes is current (``ResultStore``: made from these weights and
data). Sharded steps run on every rank under torchrun, each taking its shard; the others on rank 0
alone, last, so that no rank waits in a collective while rank 0 works alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .launcher import Launch


@dataclass
class Job:
    """What the steps share: the run, ``--data`` as typed (None: the run's test split), this process's
    place, and what one step made for the next (the images, the top patches, the codes)."""

    run: object
    data: str | None = None
    launch: Launch = field(default_factory=Launch)
    force: bool = False
    progress: bool = False
    made: dict = field(default_factory=dict)

    @property
    def options(self) -> dict:
        """The options the commands record for ``--data`` (none for the run's own test split)."""
        return {"data": self.data} if self.data else {}

    def dataset(self):
        """The images, loaded once: ``--data``'s test split, as the commands load it, or the run's."""
        if "dataset" not in self.made:
            from .. import datasets
            from ..training.evaluate import run_test_data

            self.made["dataset"] = datasets.load(self.data, split="test") if self.data else run_test_data(self.run)
        return self.made["dataset"]

    def loaded(self, key: str, name: str):
        """What an earlier step made (``key``), or the result ``name`` it saved before (that step was skipped)."""
        if key not in self.made:
            from ..results import ResultStore

            self.made[key] = ResultStore.of(self.run).load(name, self.options)
        return self.made[key]


@dataclass(frozen=True)
class Step:
    title: str
    results: Callable[[Job], list[tuple[str, dict]]]   # (name, options) of each result it makes
    compute: Callable[[Job], None]
    sharded: bool = False                               # every rank takes its shard under torchrun


def _evaluation(job: Job) -> None:
    from .train_cmds import save_evaluation

    save_evaluation(job.run, job.dataset(), options=job.options, launch=job.launch)


def _top_patches(job: Job) -> None:
    from .patches_cmds import compute

    job.made["top"] = compute(job.run, job.dataset(), options=job.options, progress=job.progress,
                              launch=job.launch)[0]


def _projections(job: Job) -> None:
    from .patches_cmds import compute_projections

    compute_projections(job.run, job.loaded("top", "top-patches"), job.dataset(), options=job.options,
                        progress=job.progress, launch=job.launch)


def _codes(job: Job) -> None:
    from .codes_cmds import save_agreement

    save_agreement(job.run, _cached_codes(job, job.launch, force=job.force), options=job.options,
                   progress=job.progress, launch=job.launch)


def _cached_codes(job: Job, launch: Launch, *, force: bool = False):
    """The codes of the default layer, from (or into) the cache `convlens codes` uses; ``launch``: the
    processes that share the extraction (a step of rank 0 alone passes ``Launch()``)."""
    from .codes_cmds import cache_dir, cached_codes

    if "codes" not in job.made:
        folder = launch.broadcast(  # rank 0 empties a cache of other weights or data; then every rank uses it
            cache_dir(job.run, None, None, job.data, force=force) if launch.leader else None)
        job.made["codes"] = cached_codes(job.run, data=job.dataset(), out=folder, progress=job.progress,
                                         launch=launch)
    return job.made["codes"]


def _health(job: Job) -> None:
    from .insight_health_cmd import compute

    compute(job.run, job.dataset(), options=job.options, progress=job.progress)


def _filter_layers(job: Job) -> list[str]:
    from ..units.filters import conv_layers

    return [name for name, _, _ in conv_layers(job.run.pixel_model())]


def _filters(job: Job) -> None:
    from .filters_cmds import compute

    compute(job.run)  # the default result (the first layer's grid), what the report shows
    for layer in _filter_layers(job):
        compute(job.run, layer, options={"layer": layer})  # `convlens filters RUN --layer LAYER`


def _tsne(job: Job) -> None:
    from .codes_cmds import save_tsne

    save_tsne(job.run, _cached_codes(job, Launch()), options=job.options)


STEPS: list[Step] = [
    Step("evaluation", lambda job: [("evaluation", job.options)], _evaluation, sharded=True),
    Step("top-9 patches", lambda job: [("top-patches", job.options)], _top_patches, sharded=True),
    Step("projections", lambda job: [("top-projections", job.options)], _projections, sharded=True),
    Step("codes", lambda job: [("codes-agreement", job.options)], _codes, sharded=True),
    Step("health", lambda job: [("health", job.options)], _health),
    Step("filters", lambda job: [("filters", {})] + [("filters", {"layer": n}) for n in _filter_layers(job)],
         _filters),
    Step("t-SNE", lambda job: [("codes-tsne", job.options)], _tsne),
]
