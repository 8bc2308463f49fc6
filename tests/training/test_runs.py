"""convlens.load_run: run directories, bare state_dicts, TorchScript, and errors that name the path."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import convlens
from convlens.arch.grammar import parse
from convlens.arch.zoo import create
from convlens.data.dataset import ImageDataset
from convlens.errors import InputError, RunError
from convlens.layers import resolve
from convlens.training.fit import train
from convlens.training.runs import PixelModel, load_run


def tiny(n: int, seed: int) -> ImageDataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = 0.3 + 0.4 * torch.nn.functional.one_hot(labels, 3).float().view(n, 3, 1, 1).expand(n, 3, 8, 8)
    images = (images + 0.25 * torch.rand(n, 3, 8, 8, generator=g)).clamp(0, 1).contiguous()
    return ImageDataset(images, labels, ["red", "green", "blue"], name="tiny", source="test:tiny")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "run"
    run = train("CONV3-4-BN-RELU-POOL2,FC", tiny(96, 0), test_data=tiny(48, 1), out=out, epochs=2,
                batch_size=16, progress=False, device="cpu")
    return run, out


def test_round_trip_gives_identical_outputs(trained):
    run, out = trained
    loaded = convlens.load_run(out)
    x = tiny(10, 7).images
    assert torch.equal(run.pixel_model()(x), loaded.pixel_model()(x))
    assert torch.equal(loaded.pixel_model()(x), loaded.model(loaded.preprocess(x)))
    assert not loaded.model.training and loaded.dir == out and loaded.status == "complete"
    assert loaded.class_names == ["red", "green", "blue"] and loaded.input_shape == (3, 8, 8)
    assert torch.equal(loaded.mean, run.mean) and torch.equal(loaded.std, run.std)
    assert len(loaded.history) == 2 and "test acc" in repr(loaded)


def test_pixel_model_keeps_lecture_names_working(trained):
    run, _ = trained
    pm = run.pixel_model()
    assert isinstance(pm, PixelModel) and pm.net is run.model
    path, module = resolve(pm, "conv1")
    assert path == "net.features.conv1" and module is run.model.features.conv1
    assert set(pm.lecture_names) == set(run.model.lecture_names)


def test_load_run_leaves_the_global_rng_alone(trained):
    before = torch.get_rng_state()
    load_run(trained[1])
    assert torch.equal(torch.get_rng_state(), before)


def test_state_dict_files_with_a_zoo_name_or_a_spec(tmp_path):
    torch.manual_seed(0)
    net = create("lenet", num_classes=7).eval()
    x = torch.rand(2, 1, 32, 32)
    save_file(net.state_dict(), tmp_path / "lenet.safetensors")
    run = load_run(tmp_path / "lenet.safetensors", arch="lenet")
    assert torch.equal(run.model(x), net(x)) and run.class_names is None and run.model.num_classes == 7
    assert torch.equal(run.pixel_model()(x), net(x))  # no normalization unless given
    spec = "CONV3-4-RELU-POOL2,FC"
    net2 = parse(spec, input_shape=(3, 8, 8), num_classes=3).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in net2.state_dict().items()}}, tmp_path / "w.pth")
    run2 = load_run(tmp_path / "w.pth", arch=spec, input_shape=(3, 8, 8), class_names=["a", "b", "c"],
                    mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25])
    y = torch.rand(2, 3, 8, 8)
    assert torch.equal(run2.model(y), net2(y))
    assert torch.allclose(run2.pixel_model()(y), net2((y - 0.5) / 0.25))


def test_state_dict_into_your_own_module(tmp_path):
    class Mine(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))

        def forward(self, x):
            return self.body(x)

    src = Mine()
    torch.save(src.state_dict(), tmp_path / "mine.pt")
    dst = Mine()
    run = load_run(tmp_path / "mine.pt", arch=dst, input_shape=(1, 6, 6))
    assert run.model is dst
    x = torch.rand(3, 1, 6, 6)
    assert torch.equal(dst(x), src(x))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_torchscript_files(tmp_path, trained):
    run, _ = trained
    x = tiny(4, 3).images
    scripted = torch.jit.trace(run.pixel_model(), x)
    scripted.save(str(tmp_path / "model.pt"))
    loaded = load_run(tmp_path / "model.pt", input_shape=(3, 8, 8))
    assert torch.equal(loaded.model(x), run.pixel_model()(x))
    assert loaded.class_names is None and loaded.input_shape == (3, 8, 8)


@pytest.mark.parametrize("case", ["missing", "no_manifest", "corrupt_manifest", "manifest_key", "no_weights",
                                  "wrong_arch", "pickle", "no_arch", "garbage_safetensors", "bad_spec"])
def test_bad_inputs_raise_run_error_naming_the_path(tmp_path, trained, case):
    _, good = trained
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("run.json", "weights.safetensors"):
        (run_dir / name).write_bytes((good / name).read_bytes())
    manifest = json.loads((good / "run.json").read_text())
    target, kwargs, pattern = run_dir, {}, ""
    if case == "missing":
        target, pattern = tmp_path / "nope", "no such file or directory"
    elif case == "no_manifest":
        (run_dir / "run.json").unlink()
        pattern = "no run.json"
    elif case == "corrupt_manifest":
        (run_dir / "run.json").write_text('{"arch": ')
        target, pattern = run_dir / "run.json", "corrupt JSON"
    elif case == "manifest_key":
        del manifest["normalization"]
        (run_dir / "run.json").write_text(json.dumps(manifest))
        target, pattern = run_dir / "run.json", "missing or malformed entry 'normalization'"
    elif case == "no_weights":
        (run_dir / "weights.safetensors").unlink()
        target, pattern = run_dir / "weights.safetensors", "no such file"
    elif case == "wrong_arch":
        manifest["arch"]["spec"] = "CONV3-5,BN,RELU,POOL2,FC-3"
        (run_dir / "run.json").write_text(json.dumps(manifest))
        target, pattern = run_dir / "weights.safetensors", r"do not fit.*wrong shapes: features\.conv1\.weight"
    elif case == "pickle":
        torch.save(nn.Linear(2, 2), tmp_path / "whole_module.pt")  # a pickled module, not a state_dict
        target, kwargs, pattern = tmp_path / "whole_module.pt", {"arch": "lenet"}, "weights_only=True"
    elif case == "no_arch":
        save_file({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        target, pattern = tmp_path / "w.safetensors", "needs arch="
    elif case == "garbage_safetensors":
        (tmp_path / "bad.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
        target, kwargs, pattern = tmp_path / "bad.safetensors", {"arch": "lenet"}, "not a readable safetensors"
    elif case == "bad_spec":
        manifest["arch"]["spec"] = "CONV3-4,PUDDLE"
        (run_dir / "run.json").write_text(json.dumps(manifest))
        target, pattern = run_dir / "run.json", "cannot be rebuilt"
    with pytest.raises(RunError, match=pattern) as err:
        load_run(run_dir if case not in ("missing", "pickle", "no_arch", "garbage_safetensors") else target,
                 **kwargs)
    assert str(target) in str(err.value)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    net = parse("CONV3-4-RELU-POOL2,FC", input_shape=(3, 8, 8), num_classes=3)
    state = net.state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["features.conv1.bias"]
    save_file(state, tmp_path / "w.safetensors")
    with pytest.raises(RunError, match=r"missing keys: features\.conv1\.bias \(4,\); unexpected keys: extra\.weight \(1,\)"):
        load_run(tmp_path / "w.safetensors", arch="CONV3-4-RELU-POOL2,FC", input_shape=(3, 8, 8))


def test_argument_errors_are_input_errors(tmp_path, trained):
    save_file(parse("CONV3-4-RELU-POOL2,FC", input_shape=(3, 8, 8), num_classes=3).state_dict(),
              tmp_path / "w.safetensors")
    with pytest.raises(InputError, match="input_shape must be given"):
        load_run(tmp_path / "w.safetensors", arch="CONV3-4-RELU-POOL2,FC")
    with pytest.raises(InputError, match="must number as many as the model.s outputs"):
        load_run(tmp_path / "w.safetensors", arch="CONV3-4-RELU-POOL2,FC", input_shape=(3, 8, 8), class_names=["a"])
    with pytest.raises(InputError, match="arch must be None for a run directory"):
        load_run(trained[1], arch="lenet")


def test_dtype_follows_the_model_through_training_and_loading(tmp_path):
    net = parse("CONV3-4-BN-RELU-POOL2,FC", input_shape=(3, 8, 8), num_classes=3).double()
    run = train(net, tiny(48, 0), test_data=tiny(24, 1), out=tmp_path / "run", epochs=1, batch_size=16,
                progress=False)
    loaded = load_run(tmp_path / "run")
    assert next(loaded.model.parameters()).dtype == torch.float64 and loaded.manifest["arch"]["dtype"] == "float64"
    x = tiny(5, 3).images  # float32 pixels
    out = loaded.pixel_model()(x)
    assert out.dtype == torch.float64 and torch.equal(out, run.pixel_model()(x))
