"""The deconvnet projections of every mined unit's top images, as one set of arrays for the results store.

``projection_sets(model, top, data)`` calls :func:`~convlens.units.backprop.top_projections` for every
unit of every layer of a :class:`~convlens.units.patches.TopPatches` (Zeiler & Fergus, ECCV 2014,
Fig. 2: each top image projected from that unit's strongest activation alone, cropped like its patch)
and returns ``(meta, arrays)``, the format ``results/registry.py`` saves as JSON + ``.npz``
(``"top-projections"``). ``unit_projections(meta, arrays, layer, unit)`` reads one unit back, equal to
what ``top_projections`` returns.

Arrays, per layer ``i`` (the ``i``-th of ``meta["layers"]``): ``projections_i`` (U, k, C, h, w)
float32, each crop in the top-left corner of its cell, zero elsewhere; ``sizes_i`` (U, k, 2) int64,
each crop's (h, w) ((0, 0) where the unit has fewer than k images); ``units_i`` (U,) and
``indices_i`` (U, k), the units and image rows of the top patches they project. With the layer's
receptive field known every crop is the field's size (``pad``), so ``h, w`` is that size.

Units are independent, so ``rank``/``world_size`` (under torch.distributed, e.g. ``torchrun``) take
every ``world_size``-th unit, and every rank returns the whole, equal to one process.
"""
from __future__ import annotations

import numpy as np
import torch

from ..errors import expect

SCHEMA = "convlens.top-projections/1"

__all__ = ["projection_sets", "unit_projections"]


def projection_sets(model_or_run, top, data, *, rule: str = "deconvnet", progress: bool = False, rank: int = 0,
                    world_size: int = 1) -> tuple[dict, dict]:
    """(meta, arrays) of the ``rule`` projections of every unit's top images in ``top`` (module docstring).

    ``top``: a TopPatches mined on ``data`` with ``model_or_run`` (a Run, run directory or nn.Module)."""
    from tqdm.auto import tqdm

    from ..errors import InputError
    from ..shards import check_shard, distributed, gathered
    from .backprop import top_projections

    check_shard(rank, world_size)
    if world_size > 1 and not distributed(world_size):
        raise InputError(f"world_size must be 1 unless torch.distributed runs that many processes (torchrun); "
                         f"got {world_size}")
    pairs = [(n, int(u)) for n in top.layers for u in top.units[n]][rank::world_size]
    mine = {}
    for n, u in tqdm(pairs, disable=not progress, desc="projections", unit="unit", leave=False):
        mine[(n, u)] = [p.numpy() for p in top_projections(model_or_run, top, data, n, u, rule=rule)]
    parts = gathered(mine, world_size)
    found = mine if parts is None else {key: v for part in parts for key, v in part.items()}
    arrays = {}
    for i, n in enumerate(top.layers):
        units, k = top.units[n], top.k
        crops = [found.get((n, int(u))) for u in units]
        shapes = [c.shape for unit in crops if unit for c in unit]
        channels = shapes[0][0] if shapes else 0
        h, w = (max(s[1] for s in shapes), max(s[2] for s in shapes)) if shapes else (0, 0)
        cells = np.zeros((len(units), k, channels, h, w), dtype=np.float32)     # (U, k, C, h, w)
        sizes = np.zeros((len(units), k, 2), dtype=np.int64)                    # (U, k, 2)
        for r, unit in enumerate(crops):
            for j, c in enumerate(unit or []):
                cells[r, j, :, :c.shape[1], :c.shape[2]] = c
                sizes[r, j] = c.shape[1:]
        arrays.update({f"projections_{i}": cells, f"sizes_{i}": sizes, f"units_{i}": np.asarray(units),
                       f"indices_{i}": np.asarray(top.indices[n])})
    meta = {"schema": SCHEMA, "layers": list(top.layers), "k": top.k, "rule": rule, "pad": True,
            "model": top.model, "data": top.data, "data_key": top.data_key, "world_size": world_size}
    return meta, arrays


def unit_projections(meta: dict, arrays: dict, layer: str, unit: int) -> list[torch.Tensor]:
    """One unit's projections from ``projection_sets``'s (meta, arrays): (C, h, w) tensors, best first, as
    :func:`~convlens.units.backprop.top_projections` returned them."""
    if layer not in meta["layers"]:
        raise expect("layer", "one of the projected layers " + ", ".join(map(repr, meta["layers"])), layer)
    i = meta["layers"].index(layer)
    hit = np.flatnonzero(arrays[f"units_{i}"] == unit)
    if isinstance(unit, bool) or not len(hit):
        raise expect("unit", f"a projected channel of {layer}", unit)
    r = int(hit[0])
    cells, sizes = arrays[f"projections_{i}"][r], arrays[f"sizes_{i}"][r]   # (k, C, h, w), (k, 2)
    return [torch.from_numpy(np.ascontiguousarray(cells[j, :, :h, :w])) for j, (h, w) in enumerate(sizes) if h]
