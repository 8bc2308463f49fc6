"""MNIST IDX files and CIFAR python batches, written by hand here, then read back."""
import gzip
import os
import pickle
import shutil
import struct

import numpy as np
import pytest
import torch

from convlens import datasets
from convlens.errors import DataError

RNG = np.random.default_rng(0)


# ---- MNIST IDX ----

def _idx(path, array, magic=None):
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = (0x08 << 8 | array.ndim) if magic is None else magic
    data = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


@pytest.fixture
def mnist(tmp_path):
    data = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        x, y = RNG.integers(0, 256, (n, 28, 28)), np.arange(n) % 10
        _idx(tmp_path / f"{prefix}-images-idx3-ubyte", x)
        _idx(tmp_path / f"{prefix}-labels-idx1-ubyte", y)
        data[prefix] = (x, y)
    return tmp_path, data


def test_mnist_round_trip(mnist):
    root, data = mnist
    ds = datasets.load(root)
    x, y = data["train"]
    assert ds.images.shape == (12, 1, 28, 28) and ds.class_names == [str(k) for k in range(10)]
    assert torch.equal(ds.images, torch.from_numpy(x).float().unsqueeze(1) / 255.0)
    assert torch.equal(ds.labels, torch.from_numpy(y))
    assert len(datasets.load(root, "test")) == 5 and len(datasets.load(root, "all")) == 17
    direct = datasets.load(root / "t10k-images-idx3-ubyte", "test")  # the images file itself
    assert torch.equal(direct.labels, torch.from_numpy(data["t10k"][1]))
    assert direct.class_names == ds.class_names  # the test labels stop at 4; the names do not
    with pytest.raises(DataError, match="is the test file, not the train split"):
        datasets.load(root / "t10k-images-idx3-ubyte")
    small = datasets.load(root, size=14, channels=3, n=10)
    assert small.images.shape == (10, 3, 14, 14) and small.class_counts().tolist() == [1] * 10
    assert small.spec["size"] == [14, 14]


def test_mnist_gzipped_and_raw_folder(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    x, y = RNG.integers(0, 256, (3, 28, 28)), np.array([4, 0, 9])
    _idx(raw / "train-images-idx3-ubyte.gz", x)
    _idx(raw / "train-labels-idx1-ubyte.gz", y)
    ds = datasets.load(tmp_path)
    assert torch.equal(ds.images[:, 0], torch.from_numpy(x).float() / 255.0)
    assert ds.labels.tolist() == [4, 0, 9]


def test_mnist_errors_name_the_file(mnist):
    root, data = mnist
    images = root / "train-images-idx3-ubyte"
    _idx(images, data["train"][0], magic=2049)  # a labels magic on an images file
    with pytest.raises(DataError, match="magic number is 2049; expected 2051") as err:
        datasets.load(root)
    assert str(images) in str(err.value)
    _idx(images, data["train"][0][:11])  # one image short of the labels
    with pytest.raises(DataError, match="has 11 images but .* has 12 labels"):
        datasets.load(root)
    images.write_bytes(images.read_bytes()[:-5])  # truncated
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX header says 11 x 28 x 28"):
        datasets.load(root)
    os.remove(root / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="no labels file"):
        datasets.load(root, "test")


# ---- CIFAR python batches ----

NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _batch(path, n, protocol=2, str_keys=False):
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = [int(v) for v in RNG.integers(0, 10, n)]
    batch = {b"batch_label": b"testing", b"labels": labels, b"data": data,
             b"filenames": [b"img_%d.png" % i for i in range(n)]}
    if str_keys:
        batch = {k.decode(): v for k, v in batch.items()}
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)
    return data, labels


@pytest.fixture
def cifar(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    parts = [_batch(root / f"data_batch_{i}", 3, protocol=2 + i % 4, str_keys=i == 5) for i in range(1, 6)]
    test = _batch(root / "test_batch", 4)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in NAMES], b"num_vis": 3072}, f, protocol=2)
    return tmp_path, root, parts, test


def test_cifar_round_trip(cifar):
    parent, root, parts, test = cifar
    ds = datasets.load(parent)  # the folder above cifar-10-batches-py works too
    data = np.concatenate([d for d, _ in parts])
    want = torch.from_numpy(data.reshape(-1, 3, 32, 32)).float() / 255.0
    assert ds.images.shape == (15, 3, 32, 32) and torch.equal(ds.images, want)
    assert ds.labels.tolist() == [v for _, labels in parts for v in labels]
    assert ds.class_names == NAMES
    t = datasets.load(root, "test")
    assert torch.equal(t.images, torch.from_numpy(test[0].reshape(-1, 3, 32, 32)).float() / 255.0)
    assert len(datasets.load(root, "all")) == 19


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("payload", [_Evil(), {b"data": eval}, {b"labels": shutil.rmtree}])
def test_cifar_refuses_code_in_pickles(cifar, payload, monkeypatch):
    parent, root, _, _ = cifar
    monkeypatch.chdir(parent)
    with open(root / "data_batch_2", "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(DataError, match="refused to unpickle") as err:
        datasets.load(root)
    assert str(root / "data_batch_2") in str(err.value)
    assert not (parent / "pwned").exists()


def test_cifar_bad_batches(cifar):
    _, root, _, _ = cifar
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8)}, f)
    with pytest.raises(DataError, match="data_batch_3: CIFAR batch has no 'labels' key"):
        datasets.load(root)
    with open(root / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, f)
    with pytest.raises(DataError, match=r"data_batch_3: 'data' is uint8 \(2, 100\)"):
        datasets.load(root)
    (root / "data_batch_3").write_bytes(b"\x80\x02}q\x00")  # truncated pickle
    with pytest.raises(DataError, match="data_batch_3: cannot be unpickled"):
        datasets.load(root)
    os.remove(root / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3: missing"):
        datasets.load(root)


def test_cifar_reads_python2_style_numpy_paths(cifar):
    """The original batches (Python 2, numpy 1) name numpy.core.multiarray._reconstruct."""
    _, root, parts, _ = cifar
    raw = pickle.dumps({b"data": parts[0][0], b"labels": parts[0][1]}, protocol=2)
    old = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")  # as numpy 1 writes it
    assert b"cnumpy.core.multiarray\n_reconstruct" in old
    (root / "data_batch_1").write_bytes(old)
    want = torch.from_numpy(parts[0][0].reshape(-1, 3, 32, 32)).float()
    assert torch.equal(datasets.load(root).images[:3] * 255.0, want)
