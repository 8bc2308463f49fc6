"""features(): equal to a manual forward + numpy pooling; sharded == unsharded; resumed == uninterrupted."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from convlens import Features, features, parse
from convlens.data.dataset import ImageDataset, LazyImageDataset
from convlens.errors import DataError, InputError, LayerNotFoundError
from conftest import hooks_left
from conftest import run_gloo_workers


def grammar_net():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return parse("CONV3-8,RELU,POOL2,CONV3-16,RELU,POOL2,FC-12,RELU,FC-5", input_shape=(3, 16, 16)).eval()


def dataset(n=37, shape=(3, 16, 16), classes=5):
    g = torch.Generator().manual_seed(1)
    images = torch.rand(n, *shape, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageDataset(images, labels, [f"c{i}" for i in range(classes)], name="random")


def np_pool(a: np.ndarray, pool: str) -> np.ndarray:
    if a.ndim == 2:
        return a
    if pool == "flat":
        return a.reshape(len(a), -1)
    axes = tuple(range(2, a.ndim))
    return a.max(axis=axes) if pool == "max" else a.mean(axis=axes)


@pytest.mark.parametrize("pool", ["max", "avg", "flat"])
def test_equals_manual_forward_and_numpy_pooling(pool):
    model, ds = grammar_net(), dataset()
    f = features(model, ds, ["conv1", "relu2", "fc3"], pool=pool, batch_size=10, progress=False)
    x = ds.images
    with torch.no_grad():
        conv1 = model.features[:1](x).numpy()
        relu2 = model.features[:5](x).numpy()
        fc3 = model.classifier[0](torch.flatten(model.features(x), 1)).numpy()
    for name, ref in (("conv1", conv1), ("relu2", relu2), ("fc3", fc3)):
        np.testing.assert_allclose(f[name], np_pool(ref, pool), rtol=1e-5, atol=1e-6)
        assert f[name].dtype == np.float32
    assert f.shapes["conv1"] == (8, 16, 16) and f.shapes["fc3"] == (12,)
    np.testing.assert_array_equal(f.labels, ds.labels.numpy())
    np.testing.assert_array_equal(f.indices, np.arange(len(ds)))
    assert f.layers == ["conv1", "relu2", "fc3"] and len(f) == len(ds)
    assert f.class_names == ds.class_names and hooks_left(model) == 0


def test_residual_fixture_block_by_block(tiny_resnet):
    m = tiny_resnet.train()  # extraction runs in eval mode and gives the mode back
    x = torch.rand(9, 3, 32, 32)
    labels = torch.arange(9) % 3
    f = features(m, (x, labels), ["layer1", "layer2.conv1", "layer3"], pool="avg", batch_size=4, progress=False)
    assert m.training and all(mm.training for mm in m.modules())
    m.eval()
    with torch.no_grad():
        h1 = m.layer1(F.relu(m.stem(x)))
        c2 = m.layer2.conv1(h1)
        h3 = m.layer3(m.layer2(h1))
    for name, ref in (("layer1", h1), ("layer2.conv1", c2), ("layer3", h3)):
        np.testing.assert_allclose(f[name], np_pool(ref.numpy(), "avg"), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f.labels, labels.numpy())


def test_inplace_and_gray_and_plain_tensor(inplace_net, gray_net):
    x = torch.randn(5, 3, 16, 16)
    f = features(inplace_net, x, ["features.0", "conv"], pool="flat", progress=False)
    with torch.no_grad():
        ref = inplace_net.features[0](x)
    np.testing.assert_allclose(f["features.0"], ref.reshape(5, -1).numpy(), rtol=1e-6, atol=1e-6)
    assert (f["conv"] < 0).any() and f.labels is None  # before the .relu_() in forward
    g = features(gray_net, torch.rand(4, 1, 20, 28), "conv2", batch_size=3, progress=False)
    assert g["conv2"].shape == (4, 8) and g.shapes["conv2"] == (8, 4, 6)


def test_float64_model_and_lazy_dataset():
    model = grammar_net().double()
    ds = dataset(n=11)
    lazy = LazyImageDataset([str(i) for i in range(11)], ds.labels, ds.class_names,
                            read=lambda f: ds.images[int(f)], input_shape=(3, 16, 16), name="lazy")
    f = features(model, lazy, ["conv2"], batch_size=4, progress=False)
    assert lazy._cache is None  # read batch by batch, never all at once
    with torch.no_grad():
        ref = model.features[:4](ds.images.double()).amax((2, 3)).float().numpy()
    np.testing.assert_allclose(f["conv2"], ref, rtol=1e-6)


@pytest.mark.parametrize("world_size", [2, 3])
def test_sharded_equals_unsharded(world_size, tmp_path):
    model, ds = grammar_net(), dataset(n=23)
    whole = features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False)
    parts = [features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False, rank=r, world_size=world_size)
             for r in reversed(range(world_size))]
    assert sum(len(p) for p in parts) == len(ds)
    assert list(parts[-1].indices) == list(range(len(parts[-1])))  # rank 0: a contiguous head
    assert all(len(p) % 5 == 0 for p in parts[1:])  # whole batches, the short one last
    merged = Features.merge(parts)
    for r in range(world_size):  # a shared out folder: each rank writes its shard
        features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False, rank=r, world_size=world_size,
                 out=tmp_path)
    loaded = Features.load(tmp_path)
    for got in (merged, loaded):
        for name in whole.layers:
            np.testing.assert_array_equal(got[name], whole[name])
        np.testing.assert_array_equal(got.labels, whole.labels)
        np.testing.assert_array_equal(got.indices, whole.indices)


def test_complete_folder_of_another_world_size_is_read_back(tmp_path):
    """A cache filled by 2 processes serves 1 (and the other way round) when complete; an incomplete one is refused."""
    model, ds = grammar_net(), dataset(n=23)
    whole = features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False)
    for r in range(2):
        features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False, rank=r, world_size=2, out=tmp_path / "two")
    one = features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False, out=tmp_path / "one")
    for folder, world_size in ((tmp_path / "two", 1), (tmp_path / "one", 3)):
        got = features(model, ds, ["conv1", "fc3"], batch_size=5, progress=False, out=folder, world_size=world_size)
        assert len(got) == len(ds) and not list(folder.glob(f"shard-*-of-{world_size:05d}"))  # read, not extracted
        for name in whole.layers:
            np.testing.assert_array_equal(got[name], whole[name])
    np.testing.assert_array_equal(one["conv1"], whole["conv1"])
    features(model, ds, ["conv1"], batch_size=5, progress=False, rank=0, world_size=2, out=tmp_path / "half")
    with pytest.raises(InputError, match="world_size differ"):
        features(model, ds, ["conv1"], batch_size=5, progress=False, out=tmp_path / "half")


def test_more_ranks_than_images(tmp_path):
    model, ds = grammar_net(), dataset(n=2)
    for r in range(3):
        features(model, ds, ["conv1"], progress=False, rank=r, world_size=3, out=tmp_path)
    np.testing.assert_array_equal(Features.load(tmp_path)["conv1"],
                                  features(model, ds, ["conv1"], progress=False)["conv1"])


class Interrupt(Exception):
    pass


def test_resume_after_interruption_equals_uninterrupted(tmp_path):
    model, ds = grammar_net(), dataset(n=37)
    whole = features(model, ds, ["conv1", "relu2", "fc3"], batch_size=8, progress=False)
    seen, budget = [], [2]  # batches allowed before the "crash"

    def flaky(x):
        if budget[0] == 0:
            raise Interrupt
        budget[0] -= 1
        seen.append(len(x))
        return x

    with pytest.raises(Interrupt):
        features(model, ds, ["conv1", "relu2", "fc3"], batch_size=8, progress=False, out=tmp_path, preprocess=flaky)
    assert hooks_left(model) == 0
    prog = json.loads((tmp_path / "shard-00000-of-00001" / "progress.json").read_text())
    assert prog["rows_done"] == 16
    with pytest.raises(DataError, match="incomplete"):
        Features.load(tmp_path)
    seen.clear()
    budget[0] = 100
    resumed = features(model, ds, ["conv1", "relu2", "fc3"], batch_size=8, progress=False, out=tmp_path,
                       preprocess=flaky)
    assert seen == [8, 8, 5]  # only the rows 16..36 were computed again
    loaded = Features.load(tmp_path)
    for got in (resumed, loaded):
        for name in whole.layers:
            np.testing.assert_array_equal(got[name], whole[name])
    assert loaded.shapes == whole.shapes
    seen.clear()
    features(model, ds, ["conv1", "relu2", "fc3"], batch_size=8, progress=False, out=tmp_path, preprocess=flaky)
    assert seen == []  # complete: nothing recomputed


def test_out_with_other_arguments_is_refused(tmp_path):
    model, ds = grammar_net(), dataset(n=6)
    features(model, ds, ["conv1"], progress=False, out=tmp_path)
    with pytest.raises(InputError, match="other arguments"):
        features(model, ds, ["conv1"], pool="avg", progress=False, out=tmp_path)
    with torch.no_grad():
        model.features.conv1.weight.mul_(2)
    with pytest.raises(InputError, match="other arguments"):
        features(model, ds, ["conv1"], progress=False, out=tmp_path)


def test_save_load_roundtrip(tmp_path):
    model, ds = grammar_net(), dataset(n=9)
    f = features(model, ds, ["conv1", "fc3"], pool="avg", progress=False)
    Features.load(f.save(tmp_path / "f"))
    g = Features.load(tmp_path / "f")
    for name in f.layers:
        np.testing.assert_array_equal(g[name], f[name])
    assert g.to_dict() == f.to_dict() and "conv1" in repr(g)
    json.dumps(f.to_dict())
    nolabels = features(model, ds.images, ["conv1"], progress=False)
    assert Features.load(nolabels.save(tmp_path / "g")).labels is None
    with pytest.raises(DataError, match="features.json"):
        Features.load(tmp_path)
    with pytest.raises(KeyError, match="conv2"):
        f["conv2"]


def test_bad_arguments():
    model, ds = grammar_net(), dataset(n=3)
    with pytest.raises(InputError, match="pool must be"):
        features(model, ds, ["conv1"], pool="min")
    with pytest.raises(InputError, match="batch_size must be"):
        features(model, ds, ["conv1"], batch_size=0)
    with pytest.raises(InputError, match="rank must be"):
        features(model, ds, ["conv1"], rank=2, world_size=2)
    with pytest.raises(InputError, match="data must be"):
        features(model, "shapes", ["conv1"])
    with pytest.raises(LayerNotFoundError, match="conv9"):
        features(model, ds, ["conv9"])
    assert hooks_left(model) == 0


def _dist_worker(rank, world_size, init, out, q):
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world_size)
    try:
        model, ds = grammar_net(), dataset(n=13)
        a = features(model, ds, ["conv1", "fc3"], batch_size=4, progress=False, rank=rank, world_size=world_size)
        b = features(model, ds, ["conv1", "fc3"], batch_size=4, progress=False, rank=rank, world_size=world_size,
                     out=out)
        q.put((rank, a.arrays["fc3"].copy(), np.asarray(b.arrays["conv1"]).copy()))
        torch.distributed.barrier()  # both done before either tears down (one leaving first aborts gloo)
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes(tmp_path):
    got = run_gloo_workers(_dist_worker, tmp_path)
    whole = features(grammar_net(), dataset(n=13), ["conv1", "fc3"], batch_size=4, progress=False)
    for _, fc3, conv1 in got:  # every rank returns the whole
        np.testing.assert_array_equal(fc3, whole["fc3"])
        np.testing.assert_array_equal(conv1, whole["conv1"])
