"""Which sections a report has, in which order. A capability adds its section by writing a module
with a ``@section`` function and naming the module in SECTION_MODULES; nothing else changes.

A section function takes a :class:`~convlens.reporting.context.ReportContext` and returns a
:class:`~convlens.reporting.blocks.Section`, or ``None`` when it has nothing to show (e.g. its
results were never computed for this run).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

SECTION_MODULES = [
    "convlens.reporting.sections.architecture",
    "convlens.reporting.sections.training",
    "convlens.reporting.sections.evaluation",
    "convlens.reporting.sections.human_vs_cnn",
    "convlens.reporting.sections.health",
    "convlens.reporting.sections.probes", "convlens.reporting.sections.ablation",
    "convlens.reporting.sections.invariance", "convlens.reporting.sections.linear_fooling",
    "convlens.reporting.sections.class_model", "convlens.reporting.sections.fooling",
    "convlens.reporting.sections.optimal_stimuli",
    "convlens.reporting.sections.filters",
    "convlens.reporting.sections.inversion", "convlens.reporting.sections.adversarial",
    "convlens.reporting.sections.occlusion",
    "convlens.reporting.sections.saliency",
    "convlens.reporting.sections.attribution", "convlens.reporting.sections.sanity",
    "convlens.reporting.sections.patches",
    "convlens.reporting.sections.codes",
]


@dataclass(frozen=True)
class SectionSpec:
    id: str
    order: int
    build: Callable


_SECTIONS: dict[str, SectionSpec] = {}


def section(id: str, *, order: int):
    """Register ``fn(ctx) -> Section | None`` as the report section ``id`` (lower order first)."""
    def wrap(fn):
        _SECTIONS[id] = SectionSpec(id, order, fn)
        return fn
    return wrap


def all_sections() -> list[SectionSpec]:
    for mod in SECTION_MODULES:
        importlib.import_module(mod)
    return sorted(_SECTIONS.values(), key=lambda s: s.order)
