"""projection_sets: every unit's deconvnet projections in one set of arrays, read back equal to
``top_projections`` called unit by unit (the oracle): crops of one size (receptive field known), crops of
many sizes (geometry unknown: unpadded boxes), units with fewer images than k; saved and read through the
results registry's format."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from convlens.errors import InputError
from convlens.results.registry import ANALYSES, imported
from convlens.units.backprop import top_projections
from convlens.units.patches import top_patches
from convlens.units.projection_sets import projection_sets, unit_projections

LAYERS = ["features.2", "features.6"]


def assert_equal_to_top_projections(model, top, data, meta, arrays):
    for layer in top.layers:
        for unit in top.units[layer]:
            direct = top_projections(model, top, data, layer, int(unit))
            stored = unit_projections(meta, arrays, layer, int(unit))
            assert len(stored) == len(direct)
            for a, b in zip(stored, direct):
                assert a.shape == b.shape and torch.equal(a, b), (layer, unit)


def test_every_unit_equals_top_projections(bn_net, tmp_path):
    torch.manual_seed(3)
    data = torch.rand(10, 3, 16, 16)
    top = top_patches(bn_net, data, LAYERS, k=4, units=[0, 2, 5], progress=False)
    meta, arrays = projection_sets(bn_net, top, data)
    assert meta["layers"] == LAYERS and meta["rule"] == "deconvnet" and meta["world_size"] == 1
    assert arrays["projections_1"].shape[:2] == (3, 4) and arrays["projections_1"].dtype == np.float32
    np.testing.assert_array_equal(arrays["indices_0"], top.indices["features.2"])
    spec = ANALYSES["top-projections"]                           # through the store's own format
    imported(spec.save)(tmp_path / "top-projections.json", (meta, arrays))
    meta, arrays = imported(spec.load)(tmp_path / "top-projections.json")
    assert_equal_to_top_projections(bn_net, top, data, meta, arrays)


def test_crops_of_many_sizes_and_fewer_images_than_k(bn_net):
    torch.manual_seed(4)
    data = torch.rand(3, 3, 16, 16)                              # 3 images, k = 5: two empty slots per unit
    mined = top_patches(bn_net, data, LAYERS, k=5, progress=False)
    top = dataclasses.replace(mined, fields={n: None for n in LAYERS})  # no geometry: unpadded boxes
    meta, arrays = projection_sets(bn_net, top, data, rule="guided")
    sizes = arrays["sizes_1"]                                     # (U, k, 2)
    assert (sizes[:, 3:] == 0).all() and len({tuple(s) for s in sizes[:, :3].reshape(-1, 2)}) > 1
    for layer in LAYERS:
        for unit in top.units[layer]:
            direct = top_projections(bn_net, top, data, layer, int(unit), rule="guided")
            stored = unit_projections(meta, arrays, layer, int(unit))
            assert len(stored) == 3 and all(torch.equal(a, b) for a, b in zip(stored, direct))


def test_bad_arguments(bn_net):
    data = torch.rand(4, 3, 16, 16)
    top = top_patches(bn_net, data, LAYERS[:1], k=2, units=[1], progress=False)
    with pytest.raises(InputError, match="world_size must be 1 unless torch.distributed"):
        projection_sets(bn_net, top, data, rank=0, world_size=2)
    meta, arrays = projection_sets(bn_net, top, data)
    with pytest.raises(InputError, match="layer must be one of the projected layers"):
        unit_projections(meta, arrays, "features.6", 1)
    with pytest.raises(InputError, match="unit must be a projected channel"):
        unit_projections(meta, arrays, "features.2", 0)
