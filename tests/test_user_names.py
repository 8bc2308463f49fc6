"""A Run everywhere, names as the user wrote them (issue 15, item 4).

Layers of a run's PixelModel are found by the user's own ``named_modules()`` paths and lecture names
(the ``net.`` form still works), errors speak of the user's class, and summary / receptive_field /
capture take a Run. Oracles: the user's net itself (``get_submodule``, its own summary, a forward of
normalized images through hand-set hooks).
"""
from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from conftest import FIXTURE_MODELS, assert_as_found, model_state
from convlens import LayerNotFoundError, capture, receptive_field, summary
from convlens.cli.app import main
from convlens.layers import display_names, lecture_names, model_label, resolve, user_model
from convlens.training.runs import PixelModel, Run

MEAN, STD = 0.5, 0.25


def _run(net: nn.Module) -> Run:
    c = net.input_shape[0]
    return Run(net, None, torch.full((c,), MEAN), torch.full((c,), STD), tuple(net.input_shape))


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_pixel_model_layers_resolve_by_the_users_own_paths(name):
    net = FIXTURE_MODELS[name]().eval()
    pm = _run(net).pixel_model()
    for path, module in net.named_modules():
        if not path:
            continue
        assert resolve(pm, path) == (f"net.{path}", module)          # as the user wrote it
        assert resolve(pm, f"net.{path}") == (f"net.{path}", module)  # the prefixed form still works
        assert resolve(_run(net), path) == (path, module)            # a Run: its net's own path
    shown = display_names(pm)
    assert {p: shown[f"net.{p}"] for p, _ in net.named_modules() if p} == display_names(net)


@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_unknown_layer_speaks_of_the_users_model(name):
    net = FIXTURE_MODELS[name]().eval()
    first = next(p for p, _ in net.named_modules() if p)
    for model in (_run(net).pixel_model(), _run(net)):
        with pytest.raises(LayerNotFoundError) as err:
            resolve(model, first + "x")
        msg = str(err.value)
        assert f"this {type(net).__name__}." in msg and "PixelModel" not in msg
        assert f"Did you mean '{first}'" in msg and "net." not in msg and "normalize" not in msg
        assert msg.split("Layers: ")[1].startswith(first)


def test_lecture_names_of_a_grammar_run(small_run):
    pm = small_run.pixel_model()
    for lecture, path in lecture_names(small_run.model).items():
        module = small_run.model.get_submodule(path)
        assert resolve(pm, lecture) == (f"net.{path}", module)
        assert resolve(pm, path)[1] is module and resolve(small_run, lecture) == (path, module)
    assert display_names(pm)["net.features.conv1"] == "conv1"
    with pytest.raises(LayerNotFoundError, match=r"this GrammarNet\. Did you mean 'conv2'"):
        resolve(pm, "conv22")


def test_a_wrapper_of_a_wrapper_and_a_wrapper_without_lecture_names(small_run):
    class Outer(nn.Module):
        wraps = "inner"

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

    outer = Outer(small_run.pixel_model())
    conv1 = small_run.model.features.conv1
    assert user_model(outer) is small_run.model and model_label(outer) == "GrammarNet"
    assert resolve(outer, "conv1") == ("inner.net.features.conv1", conv1)  # lecture names through both
    assert resolve(outer, "features.conv1")[1] is conv1 and resolve(outer, "inner.net.features.conv1")[1] is conv1
    assert display_names(outer)["inner.net.features.conv1"] == "conv1"


def test_capture_of_a_run_taps_its_pixel_model(tiny_resnet):
    run = _run(tiny_resnet)
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))  # pixels in [0, 1]
    want, handles = {}, []
    for path in ("layer2", "layer3.conv1"):  # the oracle: plain hooks on the user's net, normalized input
        handles.append(tiny_resnet.get_submodule(path).register_forward_hook(
            lambda m, a, out, path=path: want.__setitem__(path, out.detach().clone())))
    with torch.no_grad():
        logits = tiny_resnet((x - MEAN) / STD)
    for h in handles:
        h.remove()
    state = model_state(tiny_resnet)
    with torch.no_grad(), capture(run, ["layer2", "layer3.conv1"]) as acts:
        out = acts.forward(x)
    assert_as_found(tiny_resnet, state)
    torch.testing.assert_close(out, logits)
    assert acts.paths == {"layer2": "layer2", "layer3.conv1": "layer3.conv1"}
    for path in want:
        torch.testing.assert_close(acts[path], want[path])


def test_summary_and_receptive_field_of_a_run_describe_its_net(gray_net):
    run = _run(gray_net)
    s, own = summary(run), summary(gray_net, gray_net.input_shape)
    assert s.model == own.model == "GrayNet" and s.input_size == (1, 20, 28)
    assert [r.to_dict() for r in s.rows] == [r.to_dict() for r in own.rows]
    for method in ("analytic", "probe"):
        assert receptive_field(run, "conv2", (1, 2), method=method) == \
            receptive_field(gray_net, "conv2", (1, 2), (1, 20, 28), method=method)
    pm = run.pixel_model()  # a PixelModel given as a module: its layers named as the user wrote them
    assert summary(pm).model == "GrayNet" and [r.name for r in summary(pm).rows][2:] == [r.name for r in own.rows][1:]


def test_a_method_on_a_loaded_run_takes_the_users_names(small_run):
    from convlens import health

    report = health(small_run, layers=["features.relu1", "conv2"], max_samples=40, progress=False)
    assert [layer.name for layer in report.layers] == ["features.relu1", "conv2"]
    with pytest.raises(LayerNotFoundError) as err:
        health(small_run, layers=["relu9"], max_samples=40, progress=False)
    assert "this GrammarNet" in str(err.value) and "PixelModel" not in str(err.value)


def test_cli_refuses_a_model_file_naming_how_to_make_a_run_directory(tmp_path, capsys):
    import convlens.cli.backprop_cmds  # noqa: F401  (registers saliency)

    net = FIXTURE_MODELS["bn_net"]().eval()
    path = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(net, torch.rand(1, 3, 16, 16)), str(path))
    with pytest.raises(SystemExit) as ex:
        main(["saliency", str(path)])
    err = capsys.readouterr().err
    assert ex.value.code == 2 and "must be a run directory" in err and "convlens wrap SOURCE --out RUN" in err


def test_cli_split_keys_results_apart_from_the_default(small_run, tmp_path, capsys):
    import json

    import convlens.cli.insight_health_cmd  # noqa: F401  (registers health)

    run_dir = tmp_path / "run"
    shutil.copytree(small_run.dir, run_dir, ignore=shutil.ignore_patterns("results"))
    main(["health", str(run_dir), "--json"])
    default = json.loads(capsys.readouterr().out)
    main(["health", str(run_dir), "--split", "train", "--json"])
    other = json.loads(capsys.readouterr().out)
    saved = sorted(p.name for p in (run_dir / "results").glob("health*.json"))
    assert len(saved) == 2 and saved[0] == "health.json" and saved[1].startswith("health@")
    assert default != other  # other images measured
    with pytest.raises(SystemExit) as ex:
        main(["health", str(run_dir), "--split", "everything"])
    assert ex.value.code == 2 and "--split must be train, test or all; got 'everything'" in capsys.readouterr().err
