"""convlens.train on your own nn.Module: a factory file (``file.py:make``), an importable module, a callable
or an instance; the manifest says how to rebuild it; determinism and exact resume as for grammar nets; a model
that does not fit the data is refused before anything is written.

Oracles: a second, uninterrupted run (bit for bit), the same factory called by hand under the same seed, the
test accuracy recomputed from the returned model, and the files on disk."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest
import torch
from torch import nn

import convlens
from conftest import assert_as_found, assert_same_weights, model_state, run_weights as weights
from convlens import datasets
from convlens.errors import InputError, RunError
from convlens.models.factory import call_factory
from convlens.training.fit import train

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one torch thread is faster on a busy CPU

# A hand-written residual net: F.relu in forward, BatchNorm (running stats are state a resume must restore),
# a strided 1x1 projection shortcut, global mean pooling. 1-channel 16x16 digits in, 10 scores out.
NET = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride=1):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c_out)
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c_out)
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

        def forward(self, x):                       # (N, C_in, H, W)
            out = F.relu(self.bn1(self.conv1(x)))   # (N, C_out, H/s, W/s)
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


    class ResLite(nn.Module):
        def __init__(self, num_classes=10, channels=1):
            super().__init__()
            self.stem = nn.Conv2d(channels, 8, 3, padding=1)
            self.block = Block(8, 16, stride=2)
            self.fc = nn.Linear(16, num_classes)

        def forward(self, x):                       # (N, C, 16, 16)
            x = self.block(F.relu(self.stem(x)))    # (N, 16, 8, 8)
            return self.fc(x.mean((2, 3)))          # (N, num_classes)


    class Pair(ResLite):
        def forward(self, x):
            return super().forward(x), x            # not one tensor of scores


    def make():
        return ResLite()


    def make_seven():
        return ResLite(num_classes=7)


    def make_rgb():
        return ResLite(channels=3)


    def make_pair():
        return Pair()


    def not_a_net():
        return 3
''')


class Needs(nn.Module):
    """A module whose constructor needs an argument: no rebuild recipe (``Needs()`` fails)."""

    def __init__(self, width: int):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.fc = nn.Linear(width, 10)

    def forward(self, x):                           # (N, 1, H, W)
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


@pytest.fixture(scope="module")
def data():
    return (datasets.load("digits", split="train", size=16, n=96),
            datasets.load("digits", split="test", size=16, n=40))


@pytest.fixture(scope="module")
def net_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "resnet_lite.py"
    path.write_text(NET)
    return path


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """The same code as an importable module ``convlens_test_usernets`` (removed from sys.modules after)."""
    name = "convlens_test_usernets"
    (tmp_path / f"{name}.py").write_text(NET)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    yield module
    sys.modules.pop(name, None)


def fit(arch, data, out, **kw):
    options = dict(test_data=data[1], epochs=2, batch_size=16, optimizer="sgd", lr=0.05, progress=False, device="cpu")
    return train(arch, data[0], out=out, **{**options, **kw})


def seeded(ref: str, seed: int = 0) -> nn.Module:
    """The factory called by hand under ``torch.manual_seed(seed)`` (the global RNG left as found)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return call_factory(ref)


def test_a_factory_file_trains_and_the_manifest_says_how_to_rebuild_it(data, net_file, tmp_path, monkeypatch):
    before = torch.get_rng_state()
    monkeypatch.chdir(net_file.parent)
    run = fit("resnet_lite.py:make", data, tmp_path / "a")                     # relative: recorded absolute
    assert torch.equal(torch.get_rng_state(), before)
    m = json.loads((tmp_path / "a" / "run.json").read_text())
    assert m["arch"] == {"source": {"kind": "factory", "ref": f"{net_file.resolve()}:make"}, "name": None,
                         "spec": None, "input_shape": [1, 16, 16], "num_classes": 10, "dtype": "float32"}
    assert m["status"] == "complete" and m["input_shape"] == [1, 16, 16] and len(m["history"]) == 2
    assert type(run.model).__name__ == "ResLite" and not run.model.training
    assert_same_weights(weights(tmp_path / "a"), {k: v for k, v in run.model.state_dict().items()})
    with torch.no_grad():                                                     # the recorded test accuracy
        predicted = run.pixel_model()(data[1].images).argmax(1)
    assert m["history"][-1]["test_acc"] == pytest.approx((predicted == data[1].labels).float().mean().item())
    fit(str(net_file) + ":make", data, tmp_path / "b")                        # the same call: the same weights
    assert_same_weights(weights(tmp_path / "a"), weights(tmp_path / "b"))
    fit(str(net_file) + ":make", data, tmp_path / "c", seed=1, epochs=1)
    assert not torch.equal(weights(tmp_path / "a")["fc.weight"], weights(tmp_path / "c")["fc.weight"])


@pytest.mark.parametrize("given", ["reference", "instance"])
def test_interrupted_then_resumed_equals_uninterrupted_bitwise(data, net_file, tmp_path, given):
    ref = f"{net_file}:make"
    arch = (lambda: ref) if given == "reference" else (lambda: seeded(ref))   # a fresh instance for each call
    full = fit(arch(), data, tmp_path / "full", epochs=2, optimizer="adam", lr=0.01)

    def stop_after_first(record):
        if record["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(arch(), data, tmp_path / "cut", epochs=2, optimizer="adam", lr=0.01, callback=stop_after_first)
    assert json.loads((tmp_path / "cut" / "run.json").read_text())["status"] == "training"
    resumed = fit(arch(), data, tmp_path / "cut", epochs=2, optimizer="adam", lr=0.01)
    assert not resumed.already_done
    assert_same_weights(weights(tmp_path / "full"), weights(tmp_path / "cut"))  # BN running stats included
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in full.history]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.history]
    assert fit(arch(), data, tmp_path / "cut", epochs=2, optimizer="adam", lr=0.01).already_done


def test_an_instance_of_an_importable_class_records_a_factory_and_trains_from_its_weights(data, user_module,
                                                                                        tmp_path):
    net = seeded("convlens_test_usernets:ResLite")
    run = fit(net, data, tmp_path / "instance", epochs=1)
    assert run.model is net                                                    # trained in place
    assert run.manifest["arch"]["source"] == {"kind": "factory", "ref": "convlens_test_usernets:ResLite"}
    fit("convlens_test_usernets:make", data, tmp_path / "factory", epochs=1)  # the factory under the same seed
    assert_same_weights(weights(tmp_path / "instance"), weights(tmp_path / "factory"))
    fit(user_module.make, data, tmp_path / "callable", epochs=1)              # a function found again by name
    assert_same_weights(weights(tmp_path / "callable"), weights(tmp_path / "factory"))
    made = json.loads((tmp_path / "callable" / "run.json").read_text())["arch"]["source"]
    assert made == {"kind": "factory", "ref": "convlens_test_usernets:make"}


def test_a_function_of_a_factory_file_records_the_file(data, net_file, tmp_path):
    module = sys.modules[type(call_factory(f"{net_file}:make")).__module__]    # the file, as call_factory imports it
    run = fit(module.make, data, tmp_path / "run", epochs=1)
    assert run.manifest["arch"]["source"] == {"kind": "factory", "ref": f"{net_file.resolve()}:make"}


def test_a_module_without_a_rebuild_recipe_records_its_class(data, net_file, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Needs(6)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    run = fit(net, data, tmp_path / "needs", epochs=1)
    assert run.manifest["arch"]["source"] == {"kind": "instance", "class": f"{Needs.__module__}.Needs", "ref": None}
    assert not torch.equal(start["fc.weight"], net.fc.weight)                  # trained from its own weights
    lam = fit(lambda: seeded(f"{net_file}:make"), data, tmp_path / "lambda", epochs=1)
    source = lam.manifest["arch"]["source"]                                   # a lambda cannot be found by name
    assert source["kind"] == "instance" and source["ref"] is None and source["class"].endswith(".ResLite")


@pytest.mark.parametrize("arch, match", [
    ("make_seven", r"ResLite ends in 7 scores; the data has 10 classes"),
    ("make_rgb", r"ResLite must take the data's \(1, 16, 16\) images \(a batch of shape \(1, 1, 16, 16\)\); "
                 r"its forward raised RuntimeError"),
    ("make_pair", r"Pair must return class scores of shape \(N, 10\) for the data's 10 classes; got tuple"),
    ("not_a_net", r"not_a_net\(\) must return an nn.Module; got int"),
    ("no_such_factory", r"has no attribute 'no_such_factory'; callables there: .*make"),
])
def test_a_model_that_does_not_fit_the_data_leaves_nothing_behind(data, net_file, tmp_path, arch, match):
    out = tmp_path / "refused"
    with pytest.raises(InputError, match=match):
        fit(f"{net_file}:{arch}", data, out)
    assert not out.exists()


def test_a_refused_instance_is_left_as_found_and_other_arch_values_are_refused(data, net_file, tmp_path):
    net = call_factory(f"{net_file}:make_seven").train()
    state = model_state(net)
    with pytest.raises(InputError, match="ResLite ends in 7 scores; the data has 10 classes"):
        fit(net, data, tmp_path / "r")
    assert_as_found(net, state)                                                # mode and BN buffers untouched
    with pytest.raises(InputError, match=r"arch must be a zoo name, a grammar spec, a factory reference .*; got 'int'"):
        fit(42, data, tmp_path / "r")
    with pytest.raises(InputError, match=r"no such file"):
        fit(f"{tmp_path / 'missing.py'}:make", data, tmp_path / "r")
    with pytest.raises(InputError, match=r"arch must be a file with its factory, .*resnet_lite\.py:make"):
        fit(str(net_file), data, tmp_path / "r")
    with pytest.raises(InputError, match=r"calling <lambda>\(\) raised ZeroDivisionError"):
        fit(lambda: 1 / 0, data, tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_another_model_does_not_resume_a_run(data, net_file, tmp_path):
    fit(f"{net_file}:make", data, tmp_path / "run", epochs=1)
    with pytest.raises(RunError, match=r"different settings.*arch\.source\.ref"):
        fit(f"{net_file}:ResLite", data, tmp_path / "run", epochs=1)
    fit(Needs(6), data, tmp_path / "instance", epochs=1)
    with pytest.raises(RunError, match=r"checkpoint\.safetensors: weights do not .*Needs.*conv\.weight"):
        fit(Needs(8), data, tmp_path / "instance", epochs=1)                 # the same class, other shapes


# ---- loading the run back: needs load_run to read arch.source (convlens/training/runs.py) -----------------------

def test_load_run_rebuilds_a_factory_run(data, net_file, tmp_path):
    run = fit(f"{net_file}:make", data, tmp_path / "run", epochs=1)
    loaded = convlens.load_run(tmp_path / "run")
    assert type(loaded.model).__name__ == "ResLite"
    with torch.no_grad():
        assert torch.equal(loaded.pixel_model()(data[1].images), run.pixel_model()(data[1].images))


def test_load_run_of_an_instance_run_needs_the_module(data, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = Needs(6)
    run = fit(net, data, tmp_path / "run", epochs=1)
    with pytest.raises(RunError, match=r"arch="):
        convlens.load_run(tmp_path / "run")
    loaded = convlens.load_run(tmp_path / "run", arch=Needs(6))
    with torch.no_grad():
        assert torch.equal(loaded.pixel_model()(data[1].images), run.pixel_model()(data[1].images))
