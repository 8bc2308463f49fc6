"""The explorer's pages. Each page is a function ``page(ex, request) -> dict`` registered with
:func:`page`; the app serves it twice: as HTML (its template rendered with the dict as ``page``) at
``path`` and as JSON at ``/api`` + ``path`` (the JSON twin: the same dict). Raw routes (PNG images by id,
POSTs that start jobs or upload) are registered with :func:`raw`. Modules listed in ``MODULES`` are
imported by the app to register theirs.

One module a page, one a section of a page (with its PNGs), and a few helpers without routes:

* ``/``: ``model`` (the table, charts, evaluation and its confusion cells, health, probes);
* ``/layers/{layer}``: ``layer``, with ``filters``; ``/layers/{layer}/units/{unit}``: ``unit``, with
  ``patches`` (the top patches, also the layer's thumbnails), ``projections``, ``histogram``, ``unit_model``,
  ``unit_invariances`` (optimal stimuli and their Hessian invariances);
  helper: ``conv_units`` (layer and unit lookup and checks);
* ``/images``: ``image_list`` (and uploads, every image's PNG); ``/images/{id}``: ``image``, with
  ``activations``, ``image_maps`` (saliency, deconvnet, guided), ``image_attribution`` (Grad-CAM, SmoothGrad,
  IG), ``occlusion``, ``neighbours``; ``/sanity``: ``sanity`` (the sanity checks' verdicts, linked from the maps);
* ``/codes``: ``codes``; helper: ``code_cache`` (the CNN codes, also for the neighbours);
* ``predictions`` (helper: what the model predicts for an image and for the data, class names);
* ``/label``: ``label``, ``label_game``.

Imports go one way: a page imports its sections and the helpers, a section the helpers (and ``patches``),
a helper only the frame (``convlens.web``: explorer, memo, params, png, responses, uploads); never the
other way round.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

MODULES = ("model", "layer", "filters", "unit", "patches", "projections", "unit_model", "unit_invariances",
           "image_list", "image", "activations", "image_maps", "image_attribution", "sanity", "occlusion", "codes",
           "label")


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
