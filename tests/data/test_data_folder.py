"""Image folders and single images: pixels, conversion policy, splits and every bad-file error."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from convlens import datasets
from convlens.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(h=16, w=16):
    return RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """cat/: 3 RGB PNGs, a gray PNG, an RGBA PNG; dog/: 4 RGB PNGs, one 20x24 PNG, a JPEG."""
    arrays = {}
    for cls, count in (("cat", 3), ("dog", 4)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            arrays[f"{cls}/{i}.png"] = a = _rgb()
            Image.fromarray(a).save(tmp_path / cls / f"{i}.png")
    arrays["cat/gray.png"] = g = RNG.integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(g, "L").save(tmp_path / "cat" / "gray.png")
    arrays["cat/rgba.png"] = rgba = RNG.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "cat" / "rgba.png")
    Image.fromarray(_rgb(20, 24)).save(tmp_path / "dog" / "big.png")
    Image.fromarray(_rgb()).save(tmp_path / "dog" / "photo.jpg", quality=90)
    (tmp_path / "dog" / ".DS_Store").write_bytes(b"\x00junk")  # hidden: ignored
    (tmp_path / "README.txt").write_text("loose files beside the class folders are ignored")
    return tmp_path, arrays


def _row(ds, tmp_path, name):
    """The image of the file called name in a dataset loaded with split='all' (files sorted)."""
    files = sorted(str(p) for p in tmp_path.glob("*/*") if not p.name.startswith("."))
    return ds.images[files.index(str(tmp_path / name))]


def test_folder_pixels_and_policy(folder):
    root, arrays = folder
    ds = datasets.load(root, "all")
    assert len(ds) == 11 and ds.class_names == ["cat", "dog"]
    assert ds.images.shape == (11, 3, 16, 16) and ds.class_counts().tolist() == [5, 6]
    assert ds.info["converted"] == {"L->RGB": 1, "RGBA->RGB": 1} and ds.info["resized"] == 1
    want = torch.from_numpy(arrays["cat/1.png"]).permute(2, 0, 1) / 255.0
    assert torch.equal(_row(ds, root, "cat/1.png"), want)  # PNG is lossless: exact
    gray = torch.from_numpy(arrays["cat/gray.png"]) / 255.0
    assert all(torch.equal(c, gray) for c in _row(ds, root, "cat/gray.png"))  # gray -> 3 equal channels
    rgba = torch.from_numpy(arrays["cat/rgba.png"][..., :3]).permute(2, 0, 1) / 255.0
    assert torch.equal(_row(ds, root, "cat/rgba.png"), rgba)  # alpha dropped, colour kept
    assert ds.source == str(root.resolve()) and ds.spec["split"] == "all"

    sized = datasets.load(root, "all", size=(8, 12), channels=1)
    assert sized.images.shape == (11, 1, 8, 12) and sized.info["resized"] == 11


def test_gray_folder_keeps_one_channel(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.fromarray(RNG.integers(0, 256, (6, 5), dtype=np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = datasets.load(tmp_path, "all")
    assert ds.input_shape == (1, 6, 5) and ds.info["converted"] == {}


def test_held_out_split_partitions_the_folder(folder):
    root, _ = folder
    every = datasets.load(root, "all")
    train, test = datasets.load(root), datasets.load(root, "test")
    assert len(train) + len(test) == len(every) and test.class_counts().tolist() == [1, 1]
    rows = {t.numpy().tobytes() for t in every.images}
    train_rows = {t.numpy().tobytes() for t in train.images}
    test_rows = {t.numpy().tobytes() for t in test.images}
    assert train_rows | test_rows == rows and not train_rows & test_rows
    assert torch.equal(datasets.load(root, "test").images, test.images)  # deterministic


def test_train_test_layout(tmp_path):
    for split, classes in (("train", ("a", "b", "c")), ("val", ("a", "b"))):
        for cls in classes:
            (tmp_path / split / cls).mkdir(parents=True)
            Image.fromarray(_rgb(8, 8)).save(tmp_path / split / cls / "x.png")
    train, test = datasets.load(tmp_path), datasets.load(tmp_path, "test")
    assert len(train) == 3 and len(test) == 2
    assert train.class_names == test.class_names == ["a", "b", "c"]  # indices agree across splits
    assert len(datasets.load(tmp_path, "all")) == 5


def test_lazy_folder_matches_eager(folder):
    root, _ = folder
    eager = datasets.load(root, "all")
    lazy = datasets.load(root, "all", lazy=True)
    assert isinstance(lazy, datasets.LazyImageDataset) and lazy.input_shape == (3, 16, 16)
    assert torch.equal(lazy[4][0], eager[4][0]) and lazy[4][1] == eager[4][1]
    assert torch.equal(lazy.subset([2, 0]).images, eager.images[[2, 0]])
    assert torch.equal(lazy.images, eager.images)


def _truncated_png(path):
    Image.fromarray(_rgb(32, 32)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name,make,message", [
    ("broken.png", _truncated_png, "cannot be read as an image"),
    ("empty.png", lambda p: p.write_bytes(b""), "is empty"),
    ("notes.txt", lambda p: p.write_text("hello"), "not an image file"),
    ("fake.jpg", lambda p: p.write_bytes(b"this is not a jpeg"), "cannot be read as an image"),
])
def test_bad_file_raises_or_is_skipped(folder, name, make, message):
    root, _ = folder
    make(root / "dog" / name)
    with pytest.raises(DataError, match=message) as err:
        datasets.load(root, "all")
    assert str(root / "dog" / name) in str(err.value)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = datasets.load(root, "all", on_error="skip")
    assert len(ds) == 11 and ds.info["skipped"] == [str(root / "dog" / name)]
    assert len(caught) == 1 and "skipped 1 " in str(caught[0].message) and name in str(caught[0].message)


def test_lazy_folder_reports_truncated_file_on_access(folder):
    root, _ = folder
    _truncated_png(root / "dog" / "zz.png")
    ds = datasets.load(root, "all", lazy=True)  # the header is fine, so this succeeds
    with pytest.raises(DataError, match="zz.png"):
        ds[len(ds) - 1]


def test_folder_layout_errors(tmp_path):
    with pytest.raises(DataError, match="empty"):
        datasets.load(tmp_path)
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(DataError, match="no class sub-folders"):
        datasets.load(tmp_path)
    (tmp_path / "cls").mkdir()
    with pytest.raises(DataError, match=r"cls: class folder is empty"):
        datasets.load(tmp_path)
    with pytest.raises(DataError, match="load_image"):
        datasets.load(tmp_path / "a.png")


def test_load_image(tmp_path):
    a = _rgb(10, 14)
    Image.fromarray(a).save(tmp_path / "x.png")
    x = datasets.load_image(tmp_path / "x.png")
    assert torch.equal(x, torch.from_numpy(a).permute(2, 0, 1) / 255.0)
    assert datasets.load_image(tmp_path / "x.png", size=(5, 7)).shape == (3, 5, 7)
    luma = np.asarray(Image.fromarray(a).convert("L"), np.float32) / 255.0
    assert torch.equal(datasets.load_image(tmp_path / "x.png", channels=1)[0], torch.from_numpy(luma))
    deep = (RNG.integers(0, 65536, (4, 6))).astype(np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")  # 16-bit gray
    y = datasets.load_image(tmp_path / "deep.png", channels=None)
    torch.testing.assert_close(y[0], torch.from_numpy(deep / 65535.0).float())
    with pytest.raises(DataError, match="no such file"):
        datasets.load_image(tmp_path / "missing.png")
    with pytest.raises(DataError, match="is a directory"):
        datasets.load_image(tmp_path)


def test_lazy_skip_and_pickling(folder):
    import pickle

    root, _ = folder
    (root / "cat" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1 unreadable file"):
        lazy = datasets.load(root, "all", lazy=True, on_error="skip")
    clone = pickle.loads(pickle.dumps(lazy))  # DataLoader workers need this
    assert torch.equal(clone[0][0], lazy[0][0]) and len(clone) == 11


def test_a_path_named_like_a_builtin_is_a_folder(tmp_path):
    (tmp_path / "shapes" / "a").mkdir(parents=True)
    Image.fromarray(_rgb(4, 4)).save(tmp_path / "shapes" / "a" / "x.png")
    ds = datasets.load(tmp_path / "shapes", "all")
    assert ds.class_names == ["a"] and len(ds) == 1


def test_split_folders_agree_on_size_and_channels(tmp_path):
    """train holds 8x8 colour images, test only a 6x6 gray one: test still comes out 3x8x8."""
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "test" / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(_rgb(8, 8)).save(tmp_path / "train" / cls / f"{i}.png")
        Image.fromarray(RNG.integers(0, 256, (6, 6), dtype=np.uint8)).save(tmp_path / "test" / cls / "g.png")
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"")  # a bad train file does not stop test
    test = datasets.load(tmp_path, "test")
    assert test.input_shape == (3, 8, 8) and test.info["converted"] == {"L->RGB": 2}
    with pytest.raises(DataError, match="bad.png"):
        datasets.load(tmp_path, "train")


def test_a_readme_in_a_class_folder_names_the_file_and_both_ways_to_skip(folder):
    root, _ = folder
    (root / "cat" / "README.txt").write_text("where these cats come from")
    with pytest.raises(DataError) as err:
        datasets.load(root, "all")
    msg = str(err.value)
    assert str(root / "cat" / "README.txt") in msg and "on_error='skip'" in msg and "--on-error skip" in msg
    with pytest.warns(UserWarning, match="README.txt"):
        assert len(datasets.load(root, "all", on_error="skip")) == 11


def test_describe_split_says_which_images(folder, tmp_path):
    root, _ = folder
    n_files = len([p for p in root.glob("*/*") if not p.name.startswith(".")])  # 11 images in 2 class folders
    test, train, every = (datasets.load(root, s) for s in ("test", "train", "all"))
    assert datasets.describe_split(test) == f"held-out test split: a seeded 20% of each class of the folder's " \
                                            f"{n_files} images"
    assert datasets.describe_split(train).startswith("train split: the 80% of each class not held out")
    assert datasets.describe_split(every) == "all images, split 'all'" and len(every) == n_files
    assert datasets.describe_split(datasets.load("digits", "test", n=20)) == "test split"
    assert datasets.describe_split((torch.zeros(1, 1, 2, 2), torch.zeros(1))) == ""
