"""A method given a batch returns one result for the batch: ``len``, ``result[i]`` (image i as a result of
the same kind, equal to what the method gives for that image alone where the method is deterministic),
``.plot()`` of all and of one, save/load of the batch."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import convlens
from conftest import FIXTURE_MODELS


@pytest.fixture
def net():
    return FIXTURE_MODELS["tiny_resnet"]().eval()


def _images(n, shape=(3, 32, 32), seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))


def test_occlusion_of_a_batch_is_the_maps_of_each_image_alone(net, tmp_path):
    x = _images(3)
    maps = convlens.occlusion(net, x, [1, 2, 3], window=8, stride=8)
    assert isinstance(maps, convlens.OcclusionMaps) and len(maps) == 3
    for i in range(3):
        alone = convlens.occlusion(net, x[i], i + 1, window=8, stride=8)
        np.testing.assert_allclose(maps[i].p_target, alone.p_target, rtol=1e-6)
        assert maps[i].target == alone.target == i + 1
    maps.save(tmp_path / "maps.json")
    back = convlens.OcclusionMaps.load(tmp_path / "maps.json")
    assert [m.target for m in back] == [1, 2, 3]
    assert len(maps.plot().axes) >= 3 * 2 and maps[-1].plot() is not None


def test_adversarial_of_a_batch_is_each_image_alone(net):
    x = _images(3, seed=1)
    batch = convlens.adversarial(net, x, 4, method="fgsm", eps=0.05, labels=[0, 1, 2])
    for i in range(3):
        alone = convlens.adversarial(net, x[i:i + 1], 4, method="fgsm", eps=0.05, labels=[i])
        one = batch[i]
        assert len(one) == 1
        np.testing.assert_allclose(one.adversarial, alone.adversarial, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(one.l2, alone.l2, rtol=1e-5)
        assert one.goal["reached"] == alone.goal["reached"]
    assert batch[-1].labels.tolist() == [2]
    with pytest.raises(IndexError):
        batch[3]
    assert batch[0].plot() is not None


def test_an_optimized_batch_gives_each_image_with_its_own_goal_record(net):
    result = convlens.class_model(net, [0, 1, 2], steps=3, input_shape=(3, 32, 32))
    assert len(result) == 3
    for i in range(3):
        one = result[i]
        assert len(one) == 1 and torch.equal(one.images[0], result.images[i])
        assert one.info["targets"] == [result.info["targets"][i]]
        assert one.goal["values"] == [result.goal["values"][i]] and one.goal["reached"] == [result.goal["reached"][i]]
        assert bool(one.missed) == (not result.goal["reached"][i])
        np.testing.assert_array_equal(one.history[:, 0], result.history[:, i])
    assert [r.info["targets"][0] for r in result] == [0, 1, 2]  # iteration goes image by image
    assert len(result.plot().axes) >= 3 and result[1].plot() is not None
    with pytest.raises(ConvLensErrorOrIndex):
        result["a"]


ConvLensErrorOrIndex = (convlens.ConvLensError, IndexError)
