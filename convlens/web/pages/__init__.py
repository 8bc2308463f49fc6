"""The explorer's pages. Each page is a function ``page(ex, request) -> dict`` registered with
:func:`page`; the app serves it twice: as HTML (its template rendered with the dict as ``page``) at
``path`` and as JSON at ``/api`` + ``path`` (the JSON twin: the same dict). Raw routes (PNG images by id)
are registered with :func:`raw`. Modules listed in ``MODULES`` are imported by the app to register theirs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODULES = ("model", "layers", "images", "codes")


@dataclass(frozen=True)
class Page:
    path: str
    name: str
    template: str
    fn: Callable


@dataclass(frozen=True)
class Raw:
    path: str
    name: str
    fn: Callable  # (ex, request) -> starlette Response
    methods: tuple[str, ...] = ("GET",)


PAGES: list[Page] = []
RAW: list[Raw] = []


def page(path: str, template: str, name: str | None = None):
    def register(fn):
        PAGES.append(Page(path, name or fn.__name__, template, fn))
        return fn
    return register


def raw(path: str, name: str | None = None, methods: tuple[str, ...] = ("GET",)):
    def register(fn):
        RAW.append(Raw(path, name or fn.__name__, fn, methods))
        return fn
    return register
