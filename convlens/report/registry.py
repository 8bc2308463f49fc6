"""Which sections a report has, in which order. A capability adds its section by writing a module
with a ``@section`` function and naming the module in SECTION_MODULES; nothing else changes.

A section function takes a :class:`~convlens.report.context.ReportContext` and returns a
:class:`~convlens.report.blocks.Section`, or ``None`` when it has nothing to show (e.g. its
results were never computed for this run).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

SECTION_MODULES = [
    "convlens.report.sections.architecture",
    "convlens.report.sections.training",
    "convlens.report.sections.evaluation",
    "convlens.report.sections.health",
    "convlens.report.sections.probes", "convlens.report.sections.ablation",
    "convlens.report.sections.invariance", "convlens.report.sections.linear_fooling",
    "convlens.report.sections.class_model", "convlens.report.sections.fooling",
    "convlens.report.sections.filters",
    "convlens.report.sections.inversion", "convlens.report.sections.adversarial",
    "convlens.report.sections.occlusion",
    "convlens.report.sections.saliency",
    "convlens.report.sections.patches",
    "convlens.report.sections.codes",
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
