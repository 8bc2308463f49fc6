"""convlens.train: determinism, exact resume, atomic files, manifest, augmentation and schedule oracles."""
from __future__ import annotations

import json
import math

import pytest
import torch

from safetensors import safe_open

import convlens
from conftest import assert_same_weights, run_weights as weights
from convlens.data.dataset import ImageDataset
from convlens.errors import InputError, RunError
from convlens.training import checkpoint
from convlens.training.fit import DEMO_RECIPE, augment_batch, channel_stats, lr_at, train

SPEC = "CONV3-4-BN-RELU-POOL2,DROPOUT,FC"  # BN running stats and dropout both exercise the RNG/state paths


def tiny(n: int, seed: int) -> ImageDataset:
    """3 classes of 3x8x8 images: class k has a brighter channel k, plus noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 + 0.4 * torch.nn.functional.one_hot(labels, 3).float().view(n, 3, 1, 1).expand(n, 3, 8, 8)
    images = (images + 0.25 * torch.rand(n, 3, 8, 8, generator=g)).clamp(0, 1).contiguous()
    return ImageDataset(images, labels, ["red", "green", "blue"], name="tiny", source=f"test:tiny?seed={seed}")


@pytest.fixture(scope="module")
def data():
    return tiny(96, 0), tiny(48, 1)


def fit(data, out, **kw):
    options = dict(test_data=data[1], epochs=3, batch_size=16, optimizer="sgd", lr=0.05, progress=False, device="cpu")
    return train(SPEC, data[0], out=out, **{**options, **kw})


def test_same_seed_gives_identical_weights_and_rng_is_left_alone(data, tmp_path):
    before = torch.get_rng_state()
    run = fit(data, tmp_path / "a", seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    fit(data, tmp_path / "b", seed=3)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    fit(data, tmp_path / "c", seed=4)
    assert not torch.equal(weights(tmp_path / "a")["classifier.fc2.weight"],
                           weights(tmp_path / "c")["classifier.fc2.weight"])
    assert run.history[-1]["test_acc"] > 0.6  # it learns the colour rule
    assert not run.model.training


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_interrupted_then_resumed_equals_uninterrupted_bitwise(data, tmp_path, optimizer):
    full = fit(data, tmp_path / "full", optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(data, tmp_path / "cut", optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01,
            callback=stop_after_first)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "training"
    resumed = fit(data, tmp_path / "cut", optimizer=optimizer, lr=0.05 if optimizer == "sgd" else 0.01)
    assert not resumed.already_done
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]


def test_finished_run_is_not_retrained_and_different_settings_raise(data, tmp_path):
    out = tmp_path / "run"
    fit(data, out)
    stamp = (out / "weights.safetensors").stat().st_mtime_ns
    again = fit(data, out)
    assert again.already_done and len(again.history) == 3
    assert (out / "weights.safetensors").stat().st_mtime_ns == stamp
    with pytest.raises(RunError, match=r"different settings.*hyper\.lr: 0\.05 -> 0\.1") as err:
        fit(data, out, lr=0.1)
    assert str(out) in str(err.value)
    with pytest.raises(RunError, match="different settings.*labels_sha1"):
        fit((tiny(96, 5).subset(list(range(95, -1, -1))), data[1]), out)
    redone = fit(data, out, lr=0.1, overwrite=True)
    assert not redone.already_done and redone.manifest["hyperparameters"]["lr"] == 0.1


def test_a_crash_while_saving_leaves_the_previous_files_valid(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(data, out, callback=lambda r: (_ for _ in ()).throw(KeyboardInterrupt))
    saved = {p.name: p.read_bytes() for p in out.iterdir()}

    def power_cut(fd):
        raise OSError("simulated power cut")

    monkeypatch.setattr(checkpoint.os, "fsync", power_cut)  # the next write dies before os.replace
    with pytest.raises(OSError, match="power cut"):
        fit(data, out)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == saved  # no temp file left, nothing torn
    assert len(convlens.load_run(out).history) == 1
    fit(data, out)
    fit(data, tmp_path / "clean")
    assert_same_weights(weights(out), weights(tmp_path / "clean"))


def test_stale_temp_files_of_a_killed_write_are_ignored_and_removed(data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.safetensors.abc123.tmp").write_bytes(b"half a file")
    fit(data, out, epochs=1)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.safetensors", "run.json", "weights.safetensors"]


def test_manifest_records_what_is_needed_to_rebuild_and_feed_the_model(data, tmp_path):
    run = fit(data, tmp_path / "run")
    m = json.loads((tmp_path / "run" / "run.json").read_text())
    assert m["status"] == "complete" and m["epochs_done"] == 3
    assert m["arch"]["spec"] == "CONV3-4,BN,RELU,POOL2,DROPOUT,FC-3" == convlens.describe(run.model)
    assert m["input_shape"] == [3, 8, 8] and m["class_names"] == ["red", "green", "blue"]
    imgs = data[0].images.double()
    assert m["normalization"]["mean"] == pytest.approx(imgs.mean((0, 2, 3)).tolist(), abs=1e-6)
    assert m["normalization"]["std"] == pytest.approx(imgs.std((0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert m["data"]["source"] == "test:tiny?seed=0" and m["data"]["test"]["size"] == 48
    assert m["hyperparameters"] == dict(epochs=3, batch_size=16, optimizer="sgd", lr=0.05, momentum=0.9,
                                        weight_decay=5e-4, schedule="cosine", augment=True, seed=0)
    assert [r["epoch"] for r in m["history"]] == [1, 2, 3]
    assert set(m["history"][0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    assert m["history"][0]["lr"] == 0.05
    assert set(m["versions"]) >= {"convlens", "torch", "python"}


def test_run_directory_holds_only_json_and_safetensors(data, tmp_path):
    fit(data, tmp_path / "run", optimizer="adam", lr=0.01)
    files = list((tmp_path / "run").iterdir())
    assert files
    for f in files:
        head = f.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK"  # neither a pickle stream nor a torch.save zip
        if f.suffix == ".json":
            json.loads(f.read_text())
        else:
            assert f.suffix == ".safetensors"
            with safe_open(f, framework="pt") as st:
                assert list(st.keys())
    model_state, optim_state, info = checkpoint.load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    assert info["epochs_done"] == 3 and set(optim_state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_optimizer_state_round_trips_through_tensors_and_json():
    net = torch.nn.Linear(3, 2)
    for opt in (torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(net.parameters())):
        net(torch.randn(4, 3)).sum().backward()
        opt.step()
        tensors, skeleton = checkpoint.flatten_optimizer(opt.state_dict())
        back = checkpoint.unflatten_optimizer(tensors, json.loads(json.dumps(skeleton)))
        fresh = type(opt)(net.parameters(), lr=1.0)
        fresh.load_state_dict(back)
        ref = opt.state_dict()
        assert fresh.state_dict()["param_groups"] == ref["param_groups"]
        for pid, slots in ref["state"].items():
            for key, value in slots.items():
                assert torch.equal(torch.as_tensor(fresh.state_dict()["state"][pid][key]), torch.as_tensor(value))


def test_workers_give_the_same_weights_as_in_memory_slicing(data, tmp_path):
    fit(data, tmp_path / "a", epochs=1)
    fit(data, tmp_path / "b", epochs=1, num_workers=1)
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))


def test_augmentation_matches_a_per_image_loop():
    x = torch.randn(6, 2, 5, 7)
    out = augment_batch(x, torch.Generator().manual_seed(1), shift=2)
    g = torch.Generator().manual_seed(1)
    flip = torch.rand(6, generator=g) < 0.5
    dy, dx = torch.randint(-2, 3, (2, 6), generator=g)
    for n in range(6):
        img = x[n].flip(-1) if flip[n] else x[n]
        for i in range(5):
            for j in range(7):
                si, sj = i + int(dy[n]), j + int(dx[n])  # output (i, j) reads input (i + dy, j + dx)
                want = img[:, si, sj] if 0 <= si < 5 and 0 <= sj < 7 else torch.zeros(2)
                assert torch.equal(out[n, :, i, j], want)


def test_learning_rate_schedules():
    h = dict(lr=0.1, epochs=4, schedule="cosine")
    assert lr_at(0, 0, steps=10, hyper=h) == 0.1
    assert lr_at(20, 2, steps=10, hyper=h) == pytest.approx(0.05)
    assert lr_at(30, 3, steps=10, hyper=h) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.75)))
    h["schedule"] = "step"
    assert [lr_at(0, e, steps=10, hyper=h) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    h["schedule"] = "none"
    assert lr_at(35, 3, steps=10, hyper=h) == 0.1


def test_channel_stats_stream_in_chunks():
    x = torch.rand(50, 3, 4, 5)
    mean, std = channel_stats(x, chunk=7)
    assert torch.allclose(mean, x.mean((0, 2, 3)), atol=1e-6)
    assert torch.allclose(std, x.std((0, 2, 3), unbiased=False), atol=1e-6)


def test_train_defaults_are_the_demo_recipe():
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(train).parameters.items()}
    assert {k: v for k, v in DEMO_RECIPE.items() if k not in ("arch", "data")} == {k: defaults[k] for k in DEMO_RECIPE
                                                                                  if k not in ("arch", "data")}
    assert convlens.create("shapesnet").input_shape == (3, 64, 64)


def test_bad_inputs_raise_typed_errors(data, tmp_path):
    with pytest.raises(InputError, match="epochs must be a positive int; got 0"):
        fit(data, tmp_path / "r", epochs=0)
    with pytest.raises(InputError, match="optimizer must be one of"):
        fit(data, tmp_path / "r", optimizer="rmsprop")
    with pytest.raises(InputError, match="end in 3 scores.*7 outputs"):
        train("CONV3-4,RELU,FC-7", data[0], out=tmp_path / "r", progress=False)
    with pytest.raises(InputError, match="data must be"):
        train(SPEC, [1, 2, 3], out=tmp_path / "r", progress=False)
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match=str(tmp_path / "file")):
        fit(data, tmp_path / "file")


def test_data_given_as_a_name_with_load_options(tmp_path):
    from convlens import InputError, datasets

    run = train("CONV3-4,RELU,POOL2,FC", {"name": "shapes", "size": 16, "n": 40}, out=tmp_path / "r", epochs=1,
                batch_size=20, progress=False)
    assert run.input_shape == (3, 16, 16)
    train_info, test_info = run.manifest["data"]["train"], run.manifest["data"]["test"]
    assert train_info["size"] == 40 and train_info["spec"]["size"] == [16, 16]
    default_test = datasets.load("shapes", split="test", size=16)  # the test split keeps its own n
    assert test_info["size"] == len(default_test.labels) and test_info["spec"]["size"] == [16, 16]
    with pytest.raises(InputError, match="a dict with a 'name'"):
        train("CONV3-4,RELU,POOL2,FC", {"name": "shapes", "colour": 1}, out=tmp_path / "bad", epochs=1)
