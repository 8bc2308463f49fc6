"""The one model resolver (``convlens.load_run``) on every source, and ``convlens wrap``: your own code
(``file.py:factory``, ``package.module:factory``), a ``torch.export`` program (``.pt2``), TorchScript and
weight files; every bad input gets an error naming the thing, and nothing in a file runs code."""
from __future__ import annotations

import inspect
import json
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import convlens
from conftest import FIXTURE_MODELS, assert_as_found, model_state
from convlens.cli.app import main
from convlens.errors import ConvLensError, InputError, RunError, ShapeError

MODEL_CODE = textwrap.dedent('''
    import torch
    import torch.nn.functional as F
    from torch import nn


    class MyNet(nn.Module):
        input_shape = (3, 20, 24)

        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 6, 3, padding=1)
            self.bn = nn.BatchNorm2d(6)
            self.block = nn.Conv2d(6, 6, 3, padding=1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x):
            x = F.relu(self.bn(self.stem(x)))
            x = F.relu(self.block(x) + x)
            return self.fc(x.mean((2, 3)))


    def make():
        torch.manual_seed(3)
        net = MyNet().eval()
        with torch.no_grad():
            net.bn.running_mean.uniform_(-0.2, 0.2)
            net.bn.running_var.uniform_(0.5, 2.0)
        return net


    def boom():
        raise ValueError("the factory ran out of coffee")


    def not_a_module():
        return 42
''')


@pytest.fixture
def code(tmp_path) -> Path:
    path = tmp_path / "mynet.py"
    path.write_text(MODEL_CODE)
    return path


def _export(model: nn.Module, shape, path: Path, *, dynamic: bool = True) -> Path:
    x = torch.rand(2 if dynamic else 1, *shape)
    dims = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    if dims is not None:
        arg = next(iter(inspect.signature(model.forward).parameters))
        dims = {arg: dims["x"]}
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=dims), str(path))
    return path


# ---- your own code ---------------------------------------------------------------------------------------

def test_a_factory_in_a_file_or_a_module_gives_the_users_model(code, tmp_path, monkeypatch):
    run = convlens.load_run(f"{code}:make")
    namespace: dict = {}
    exec(compile(MODEL_CODE, "oracle", "exec"), namespace)  # the same code, run by hand: the oracle
    eager = namespace["make"]()
    x = torch.rand(3, 3, 20, 24)
    assert type(run.model).__name__ == "MyNet" and run.input_shape == (3, 20, 24)
    torch.testing.assert_close(run.pixel_model()(x), eager(x))
    assert run.manifest["arch"]["source"] == {"kind": "factory", "ref": f"{code.resolve()}:make"}

    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    run2 = convlens.load_run("userpkg.nets:make")
    torch.testing.assert_close(run2.pixel_model()(x), eager(x))
    assert run2.manifest["arch"]["source"]["ref"] == "userpkg.nets:make"
    sys.modules.pop("userpkg.nets", None)
    sys.modules.pop("userpkg", None)


@pytest.mark.parametrize("ref, message", [
    ("{dir}/nowhere.py:make", "no such file"),
    ("{code}:maek", "has no attribute 'maek'.*make"),
    ("{code}:boom", "calling boom\\(\\) raised ValueError: the factory ran out of coffee"),
    ("{code}:not_a_module", "must return an nn.Module; got int"),
    ("no_such_package_xyz.nets:make", "no module named 'no_such_package_xyz'"),
])
def test_bad_factories_are_named_with_what_went_wrong(code, tmp_path, ref, message):
    with pytest.raises(ConvLensError, match=message):
        convlens.load_run(ref.format(dir=tmp_path, code=code))


def test_a_factory_with_weights_loads_them_strictly_and_names_what_does_not_fit(code, tmp_path):
    namespace: dict = {}
    exec(compile(MODEL_CODE, "oracle", "exec"), namespace)
    trained = namespace["MyNet"]().eval()
    save_file(trained.state_dict(), str(tmp_path / "w.safetensors"))
    run = convlens.load_run(f"{code}:make", weights=tmp_path / "w.safetensors")
    x = torch.rand(2, 3, 20, 24)
    torch.testing.assert_close(run.pixel_model()(x), trained(x))

    state = dict(trained.state_dict())
    state["head.weight"] = state.pop("fc.weight")
    state["stem.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "w.pt")
    with pytest.raises(RunError) as err:
        convlens.load_run(f"{code}:make", weights=tmp_path / "w.pt")
    text = str(err.value)
    assert "missing keys: fc.weight (4, 6)" in text and "unexpected keys: head.weight (4, 6)" in text
    assert "wrong shapes: stem.bias (7,) (the model's is (6,))" in text and "MyNet" in text


class _Payload:
    """Unpickling this would create a file: proof that no code ran when the file is refused."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pt_file_holding_pickled_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"conv.weight": _Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(RunError, match="pickled Python objects.*never unpickles code"):
        convlens.load_run(tmp_path / "evil.pt", arch="lenet")
    assert not marker.exists()


def test_a_pt2_holding_pickled_code_is_refused_and_nothing_runs(tmp_path):
    path = _export(FIXTURE_MODELS["bn_net"]().eval(), (3, 16, 16), tmp_path / "good.pt2")
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(path) as z:
        files = {name: z.read(name) for name in z.namelist()}
    config_name = next(n for n in files if n.endswith("model_weights_config.json"))
    config = json.loads(files[config_name])
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True
    files[config_name] = json.dumps(config).encode()
    folder = config_name.rsplit("/", 1)[0]
    import io

    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    files[f"{folder}/{config['config'][first]['path_name']}"] = buf.getvalue()
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    with pytest.raises(RunError, match="pickled Python objects"):
        convlens.load_run(evil)
    assert not marker.exists()
    assert torch.load is torch.serialization.load  # the guard put torch.load back


# ---- torch.export programs ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_a_pt2_has_the_eager_models_names_layers_hooks_and_outputs(name, tmp_path):
    eager = FIXTURE_MODELS[name]().eval()
    path = _export(eager, eager.input_shape, tmp_path / f"{name}.pt2")
    run = convlens.load_run(path)
    net = run.model
    assert run.input_shape == tuple(eager.input_shape)
    x = torch.rand(5, *eager.input_shape)  # another batch size than exported with
    torch.testing.assert_close(run.pixel_model()(x), eager(x), rtol=1e-5, atol=1e-6)
    eager_types = {p: type(m) for p, m in eager.named_modules()
                   if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.BatchNorm1d, nn.MaxPool2d, nn.ReLU))}
    got = dict(net.named_modules())
    for path_, kind in eager_types.items():  # the same names, and real torch.nn layers where eager has them
        assert path_ in got and type(got[path_]) is kind, (path_, type(got.get(path_)))
    conv = next(p for p, t in eager_types.items() if t is nn.Conv2d)
    with convlens.capture(eager, [conv]) as a, convlens.capture(net, [conv]) as b:
        a.forward(x)
        b.forward(x)
    torch.testing.assert_close(b[conv], a[conv])
    assert run.manifest["arch"]["class"] == type(eager).__name__


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_every_method_gives_on_a_pt2_what_it_gives_on_the_eager_model(name, tmp_path):
    eager = FIXTURE_MODELS[name]().eval()
    net = convlens.load_run(_export(eager, eager.input_shape, tmp_path / "m.pt2")).model
    state = model_state(net)
    x = torch.rand(2, *eager.input_shape)
    for method in (convlens.saliency, convlens.deconvnet, convlens.guided_backprop):  # functional ReLUs included
        torch.testing.assert_close(method(net, x, 1), method(eager, x, 1), rtol=1e-5, atol=1e-7)
    window = max(2, min(eager.input_shape[1:]) // 4)
    a = convlens.occlusion(eager, x[0], 1, window=window, stride=window // 2)
    b = convlens.occlusion(net, x[0], 1, window=window, stride=window // 2)
    torch.testing.assert_close(torch.as_tensor(b.p_target), torch.as_tensor(a.p_target), rtol=1e-4, atol=1e-6)
    assert b.method == a.method == "incremental", b.note  # the exported graph replays like the eager one
    s_eager, s_net = convlens.summary(eager, eager.input_shape), convlens.summary(net, eager.input_shape)
    assert s_net.total_params == s_eager.total_params and s_net.total_macs == s_eager.total_macs
    conv = next(p for p, m in eager.named_modules() if isinstance(m, nn.Conv2d))
    shape = tuple(eager.input_shape)
    assert convlens.receptive_field(net, conv, (0, 0), shape) == convlens.receptive_field(eager, conv, (0, 0), shape)
    torch.testing.assert_close(torch.as_tensor(convlens.filters(net, conv).weights),
                               torch.as_tensor(convlens.filters(eager, conv).weights))
    assert_as_found(net, state)


def test_a_pt2_exported_with_a_fixed_batch_says_how_to_export_a_dynamic_one(tmp_path):
    eager = FIXTURE_MODELS["bn_net"]().eval()
    run = convlens.load_run(_export(eager, (3, 16, 16), tmp_path / "fixed.pt2", dynamic=False))
    with pytest.raises(ShapeError, match=r"exported for input 1x3x16x16; got 4x3x16x16.*Dim\('batch'\)"):
        run.pixel_model()(torch.rand(4, 3, 16, 16))
    with pytest.raises(ShapeError, match="exported for input Nx3x16x16; got 2x3x12x16"):
        convlens.load_run(_export(eager, (3, 16, 16), tmp_path / "dyn.pt2")).pixel_model()(torch.rand(2, 3, 12, 16))


# ---- TorchScript --------------------------------------------------------------------------------------

def test_torchscript_is_kept_and_the_methods_that_need_hooks_say_why_they_refuse(tmp_path):
    eager = FIXTURE_MODELS["tiny_resnet"]().eval()
    torch.jit.script(eager).save(str(tmp_path / "m.ts"))
    run = convlens.load_run(tmp_path / "m.ts", input_shape=eager.input_shape)
    x = torch.rand(2, *eager.input_shape)
    torch.testing.assert_close(convlens.saliency(run.model, x, 0), convlens.saliency(eager, x, 0))
    with pytest.raises(ConvLensError, match="the model is TorchScript.*torch.export.save"):
        convlens.deconvnet(run, x, 0)
    scripted, plain = convlens.filters(run), convlens.filters(eager)  # the weights are all filters need
    assert scripted.path == plain.path == "stem"
    np.testing.assert_array_equal(scripted.weights, plain.weights)
    for method in (lambda: convlens.health(run, (x, torch.zeros(2, dtype=torch.long))),
                   lambda: convlens.top_patches(run, (x, torch.zeros(2, dtype=torch.long)))):
        with pytest.raises(ConvLensError, match="the model is TorchScript, and TorchScript has no forward hooks"):
            method()


# ---- convlens wrap ------------------------------------------------------------------------------------------

def _folder(tmp_path: Path, classes, per_class: int = 2, size=(20, 24)) -> Path:
    from PIL import Image

    root = tmp_path / "imgs"
    gen = torch.Generator().manual_seed(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            img = (torch.rand(size[0], size[1], 3, generator=gen) * 255).to(torch.uint8).numpy()
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def test_wrap_writes_a_run_every_loader_rebuilds_with_the_same_outputs(code, tmp_path):
    data = _folder(tmp_path, ["ant", "bee", "cat", "dog"])
    out = tmp_path / "run"
    run = convlens.wrap(f"{code}:make", out, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], data=data)
    manifest = json.loads((out / "run.json").read_text())
    assert manifest["arch"]["source"] == {"kind": "factory", "ref": f"{code.resolve()}:make"}
    assert manifest["class_names"] == ["ant", "bee", "cat", "dog"] and manifest["input_shape"] == [3, 20, 24]
    assert manifest["normalization"]["std"] == pytest.approx([0.2, 0.25, 0.3])
    namespace: dict = {}
    exec(compile(MODEL_CODE, "oracle", "exec"), namespace)
    eager = namespace["make"]()
    x = torch.rand(3, 3, 20, 24)
    normalized = (x - torch.tensor([0.4, 0.5, 0.6]).reshape(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.3]).reshape(1, 3, 1, 1)
    torch.testing.assert_close(convlens.load_run(out).pixel_model()(x), eager(normalized))
    ev = convlens.evaluate(run)
    assert ev.n == 8 and ev.class_names == ["ant", "bee", "cat", "dog"]

    pt2 = _export(eager, (3, 20, 24), tmp_path / "mynet.pt2")
    out2 = tmp_path / "run2"
    convlens.wrap(pt2, out2, mean=[0.4, 0.5, 0.6], std=[0.2, 0.25, 0.3], data=data)
    pt2.unlink()  # the run holds its own copy
    torch.testing.assert_close(convlens.load_run(out2).pixel_model()(x), eager(normalized), rtol=1e-5, atol=1e-6)
    assert (out2 / "model.pt2").is_file() and json.loads((out2 / "run.json").read_text())["arch"]["source"]["kind"] \
        == "export"


def test_wrap_refuses_what_does_not_fit_before_writing_anything(code, tmp_path, capsys):
    data = _folder(tmp_path, ["ant", "bee", "cat"])
    names = tmp_path / "names.txt"
    names.write_text("ant\nbee\ncat\n")
    cases = [
        (["--classes", str(names)], "must number as many as the model's outputs: MyNet gives 4 scores; got 3"),
        (["--classes", "5"], "--classes 5: MyNet gives 4 scores"),
        (["--data", str(data)], "--data has 3 classes but MyNet gives 4 scores"),
        (["--data", str(names)], "not a folder; expected an image folder"),
        (["--input", "20x24x1"], "cannot take input 20x24x1"),
        (["--mean", "0.5,x"], "--mean must be numbers"),
    ]
    for extra, message in cases:
        out = tmp_path / "never"
        with pytest.raises(SystemExit) as info:
            main(["wrap", f"{code}:make", "--out", str(out), *extra])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert message in err, (extra, err)
        assert not out.exists()
    with pytest.raises(InputError, match="input_shape must be given"):
        convlens.wrap(nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)),
                      tmp_path / "never")


def test_wrap_on_the_command_line_and_every_loader_agrees(code, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        main(["wrap", f"{code}:make", "--out", str(out), "--classes", "4", "--mean", "0.5", "--std", "0.5"])
        raise SystemExit(0)
    assert info.value.code == 0
    assert f"saved: {out}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["wrap", f"{code}:make", "--out", str(out)])
    assert "exists and is not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["--version"])
        raise SystemExit(0)
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"convlens {convlens.__version__}"
