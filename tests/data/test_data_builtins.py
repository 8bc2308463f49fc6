"""digits and photos, the load() front door, and the ImageDataset interface."""
import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from convlens import datasets
from convlens.data import photos as photos_mod
from convlens.errors import DataError, InputError


def test_names():
    assert datasets.names() == ["shapes", "digits", "photos", "fashion"]


# ---- digits ----

def test_digits_split_partitions_sklearn_digits():
    bunch = load_digits()
    train = datasets.load("digits", size=8)
    test = datasets.load("digits", "test", size=8)
    assert len(train) == 1437 and len(test) == 360
    got = torch.cat([train.images, test.images]).reshape(-1, 64).numpy() * 16.0
    want = bunch.images.reshape(-1, 64).astype(np.float32)
    assert np.array_equal(got[np.lexsort(got.T)], want[np.lexsort(want.T)])  # same multiset of images
    test_counts = np.bincount(bunch.target, minlength=10) * 0.2
    assert np.all(np.abs(test.class_counts().numpy() - test_counts) <= 1)  # stratified


def test_digits_defaults_and_options():
    ds = datasets.load("digits", "test")
    assert ds.images.shape == (360, 1, 32, 32) and ds.images.dtype == torch.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0 and ds.images.max() > 0.9
    assert ds.class_names == [str(k) for k in range(10)]
    rgb = datasets.load("digits", "test", channels=3, size=(20, 24))
    assert rgb.images.shape == (360, 3, 20, 24)
    assert torch.equal(rgb.images[:, 0], rgb.images[:, 2])
    small = datasets.load("digits", n=50, seed=3)
    assert small.class_counts().tolist() == [5] * 10
    assert torch.equal(small.images, datasets.load("digits", n=50, seed=3).images)
    assert not torch.equal(datasets.load("digits", "test", seed=1).images, ds.images)


# ---- photos ----

def test_photos_defaults():
    ds = datasets.load("photos", "test")
    k = len(datasets.PHOTO_CLASSES)
    assert k >= 8 and ds.class_names == list(datasets.PHOTO_CLASSES)
    assert ds.images.shape == (100 * k, 3, 32, 32) and ds.class_counts().tolist() == [100] * k
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    std = ds.images.flatten(1).std(1)
    assert (std >= photos_mod.MIN_STD).float().mean() > 0.95  # structure, not flat sky
    assert torch.equal(ds.images, datasets.load("photos", "test").images)
    assert not torch.equal(ds.images, datasets.load("photos", "test", seed=1).images)
    assert len(datasets.load("photos", n=30, size=(16, 24), channels=1)) == 30


@pytest.mark.parametrize("test", [False, True])
def test_photo_patches_respect_the_held_out_strip(test):
    """A fake photo whose red channel is its column index shows which columns a patch came from."""
    h, w = 80, 200
    photo = np.zeros((h, w, 3), np.float32)
    photo[..., 0] = np.arange(w) / w
    photo[..., 1] = np.random.default_rng(0).random((h, w))  # texture, so no patch is "flat"
    patches = photos_mod._patches(photo, 200, (16, 16), test, np.random.default_rng(0))
    cols = np.rint(patches[:, 0] * w)
    strip_start = w - w // 4
    if test:
        assert cols.min() >= strip_start
    else:
        assert cols.max() < strip_start
    assert patches.shape == (200, 3, 16, 16)


# ---- load() ----

def test_load_rejects_bad_names_and_options():
    with pytest.raises(DataError, match="Did you mean 'shapes'"):
        datasets.load("shapez")
    with pytest.raises(DataError, match="no such file"):
        datasets.load("./no/such/dir")
    for kwargs, word in [({"split": "val"}, "split"), ({"split": "all"}, "split"), ({"size": 0}, "size"),
                         ({"size": (3, 4, 5)}, "size"), ({"n": 0}, "n"), ({"channels": 2}, "channels"),
                         ({"seed": -1}, "seed")]:
        with pytest.raises(InputError, match=word):
            datasets.load("shapes", **kwargs)
    with pytest.raises(InputError, match="n must be at most 360"):
        datasets.load("digits", "test", n=400)


# ---- ImageDataset ----

def test_dataset_interface():
    ds = datasets.load("shapes", n=20, size=32)
    loader = DataLoader(ds, batch_size=8, shuffle=False)
    x, y = next(iter(loader))
    assert x.shape == (8, 3, 32, 32) and y.dtype == torch.int64 and torch.equal(y, ds.labels[:8])
    sub = ds.subset([3, 1, 4])
    assert torch.equal(sub.images, ds.images[[3, 1, 4]]) and torch.equal(sub.masks, ds.masks[[3, 1, 4]])
    assert sub.class_names == ds.class_names and len(sub) == 3
    record = json.loads(json.dumps(ds.to_dict()))
    assert record["input_shape"] == [3, 32, 32] and record["size"] == 20
    again = datasets.load(**record["spec"])  # the manifest rebuilds the data
    assert torch.equal(again.images, ds.images)
    assert "shapes" in repr(ds) and ds.source
    with pytest.raises(InputError, match="indices"):
        ds.subset([20])


def test_dataset_validates_its_tensors():
    with pytest.raises(InputError, match="images"):
        datasets.ImageDataset(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.int64), ["a"], name="x")
    with pytest.raises(InputError, match="labels"):
        datasets.ImageDataset(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), ["a"], name="x")
