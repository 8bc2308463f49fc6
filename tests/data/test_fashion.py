"""``fashion``: the real Fashion-MNIST of Debian's dataset-fashion-mnist, read against the IDX bytes themselves,
the error when the package is missing, and its training recipe (on a tiny subset)."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from convlens import datasets
from convlens.data.fashion import DEFAULT_DIR, FASHION_CLASSES, PACKAGE
from convlens.errors import DataError

needs_package = pytest.mark.skipif(not (DEFAULT_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
                                   reason=f"needs the Debian package {PACKAGE} (apt-get install {PACKAGE}; .ci/run does)")


def _raw(name: str, header: int) -> np.ndarray:
    with gzip.open(DEFAULT_DIR / name, "rb") as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=header)


@needs_package
def test_the_test_split_is_the_idx_files_bytes():
    ds = datasets.load("fashion", "test")
    pixels = _raw("t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)  # header: magic, count, rows, cols
    labels = _raw("t10k-labels-idx1-ubyte.gz", 8)                      # header: magic, count
    assert ds.images.shape == (10000, 1, 28, 28) and ds.images.dtype == torch.float32
    assert torch.equal((ds.images[:, 0] * 255).round().to(torch.uint8), torch.from_numpy(pixels.copy()))
    assert ds.labels.tolist() == labels.astype(int).tolist()
    assert ds.class_names == list(FASHION_CLASSES) and len(ds.class_names) == 10
    assert ds.class_counts().tolist() == [1000] * 10  # Fashion-MNIST's test split is balanced
    assert ds.spec["name_or_path"] == "fashion" and ds.spec["split"] == "test"


@needs_package
@pytest.mark.slow
def test_the_train_split_and_the_load_options():
    train = datasets.load("fashion")
    assert len(train) == 60000 and train.class_counts().tolist() == [6000] * 10
    small = datasets.load("fashion", "test", n=50, size=32, channels=3, seed=2)
    assert small.images.shape == (50, 3, 32, 32) and small.class_counts().tolist() == [5] * 10
    again = datasets.load(**small.spec)  # the spec rebuilds it (what a run's manifest records)
    assert torch.equal(again.images, small.images) and torch.equal(again.labels, small.labels)


def test_a_missing_package_names_it_and_the_apt_command(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVLENS_FASHION_DIR", str(tmp_path))
    with pytest.raises(DataError) as info:
        datasets.load("fashion", "test")
    assert PACKAGE in str(info.value) and f"apt-get install {PACKAGE}" in str(info.value)


@needs_package
def test_the_cli_trains_fashion_with_its_recipe(tmp_path, monkeypatch):
    """`convlens train --data fashion` without --arch starts from FASHION_RECIPE (train is replaced by a recorder
    here: the recipe's own training is the next test)."""
    from convlens.cli.app import main
    from convlens.training import fit

    seen = {}

    class Done:
        history, already_done = [], False

    monkeypatch.setattr(fit, "train", lambda arch, data, **kw: seen.update(arch=arch, data=data, **kw) or Done())
    main(["train", "--data", "fashion", "--out", str(tmp_path / "r"), "--epochs", "2", "--quiet"])
    recipe = fit.FASHION_RECIPE
    assert seen["arch"] == recipe["arch"] and seen["data"] == "fashion" and seen["epochs"] == 2
    assert {k: seen[k] for k in ("batch_size", "lr", "optimizer", "weight_decay", "schedule")} == \
        {k: recipe[k] for k in ("batch_size", "lr", "optimizer", "weight_decay", "schedule")}
    main(["train", "--data", "digits", "--out", str(tmp_path / "d"), "--quiet"])
    assert seen["arch"] == fit.DEMO_RECIPE["arch"] and seen["epochs"] == fit.DEMO_RECIPE["epochs"]


@needs_package
@pytest.mark.slow
def test_the_recipe_learns_fashion_on_a_tiny_subset(tmp_path, one_thread):
    import convlens
    from convlens.training.fit import FASHION_RECIPE, train

    test = datasets.load("fashion", "test", n=500)
    recipe = {**FASHION_RECIPE, "data": {"name": "fashion", "n": 1000}, "epochs": 2, "batch_size": 32}
    run = train(**recipe, test_data=test, out=tmp_path / "fashion", progress=False)
    ev = convlens.evaluate(run, test)
    assert ev.top1_error == pytest.approx(1 - run.history[-1]["test_acc"], abs=1e-9)  # two scorers agree
    assert ev.top1_error < 0.4  # chance is 0.9
