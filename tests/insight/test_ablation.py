"""Layer ablation: re-wired specs and parameter counts against hand-written specs and convlens.summary,
weight copying against the original network's own outputs, the experiment against a plain accuracy loop."""
from __future__ import annotations

import json

import pytest
import torch

from convlens import datasets
from convlens.arch.grammar import parse
from convlens.arch.summary import summary
from convlens.errors import InputError, LayerNotFoundError
from convlens.insight.ablation import AblationResult, ablate
from convlens.insight.rewiring import layer_groups, remove_layers
from convlens.training.fit import train
from convlens.training.runs import load_run

# An AlexNet-shaped network, small enough for a unit test: 5 conv layers (grouped convs, LRN), fc6, fc7, fc8.
ALEX = ("CONV5-16/2,RELU,LRN,POOL3/2,CONV3-32g2,RELU,LRN,POOL3/2,CONV3-48,RELU,CONV3-48g2,RELU,CONV3-32g2,RELU,"
        "POOL3/2,FC-64,RELU,DROPOUT,FC-64,RELU,DROPOUT,FC-10,SOFTMAX")
EXPECTED = {  # the specs the lecture's four experiments should leave, written out by hand
    ("fc7",): ALEX.replace("FC-64,RELU,DROPOUT,FC-64,RELU,DROPOUT,", "FC-64,RELU,DROPOUT,"),
    ("fc6", "fc7"): ALEX.replace("FC-64,RELU,DROPOUT,FC-64,RELU,DROPOUT,", ""),
    ("conv3", "conv4"): ALEX.replace("CONV3-48,RELU,CONV3-48g2,RELU,", ""),
    ("conv3", "conv4", "fc6", "fc7"): ALEX.replace("CONV3-48,RELU,CONV3-48g2,RELU,", "")
                                         .replace("FC-64,RELU,DROPOUT,FC-64,RELU,DROPOUT,", ""),
}
SHAPE = (3, 47, 47)
TINY = "CONV3-8,BN,RELU,POOL2,CONV3-16,BN,RELU,POOL2,CONV3-16,BN,RELU,GAP,FC"


def alex():
    torch.manual_seed(0)
    return parse(ALEX, input_shape=SHAPE)


@pytest.mark.parametrize("names", list(EXPECTED))
def test_rewired_spec_and_params_match_summary(names):
    net = alex()
    new, _ = remove_layers(net, names)
    assert new.spec == EXPECTED[names]
    assert summary(new, SHAPE).total_params == sum(p.numel() for p in new.parameters())
    rebuilt = parse(EXPECTED[names], input_shape=SHAPE)  # an independent build of the expected net
    assert summary(rebuilt, SHAPE).total_params == summary(new, SHAPE).total_params
    assert new(torch.rand(2, *SHAPE)).shape == (2, 10)


@pytest.mark.slow
def test_the_lectures_parameter_counts_on_alexnet():
    from convlens.arch.zoo import create

    net = create("alexnet")
    full = summary(net, net.input_shape).total_params
    no7, _ = remove_layers(net, ["fc7"])
    assert full - summary(no7, net.input_shape).total_params == 4096 * 4096 + 4096  # "drop 16 million parameters"
    no67, _ = remove_layers(net, ["fc6", "fc7"])
    assert 48e6 < full - summary(no67, net.input_shape).total_params < 52e6  # "drop ~50 million parameters"


def test_groups_take_their_relu_lrn_bn_dropout_but_not_pooling():
    groups = {g.name: g for g in layer_groups(alex())}
    assert groups["conv1"].members == ("conv1", "relu1", "norm1") and groups["conv1"].output == "relu1"
    assert groups["fc6"].members == ("fc6", "relu6", "drop6")
    assert groups["fc8"].members == ("fc8",) and groups["fc8"].output == "fc8"
    bn = {g.name: g for g in layer_groups(parse(TINY, input_shape=(3, 16, 16)))}
    assert bn["conv2"].members == ("conv2", "bn2", "relu2")


def test_unchanged_layers_keep_their_weights_and_changed_ones_are_reinitialized():
    torch.manual_seed(1)
    net = parse(TINY, input_shape=(3, 16, 16)).eval()
    for m in net.modules():  # non-trivial BN statistics, to see them copied
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    new, reinit = remove_layers(net, ["conv3"])
    assert reinit == []  # fc4 sees conv2's 16 channels instead of conv3's 16: same shape, copied
    x = torch.rand(3, 3, 16, 16)
    prefix_old = net.features[:8](x)  # conv1 ... pool2
    prefix_new = new.features[:8](x)
    assert torch.equal(prefix_old, prefix_new)
    new2, reinit2 = remove_layers(net, ["conv2"])  # conv3 loses input channels: it and its BN start afresh
    assert reinit2 == ["conv3"]
    assert torch.equal(new2.features.bn2.running_mean, torch.zeros(16))  # bn2 is old bn3, re-initialized
    assert torch.equal(new2.classifier.fc3.weight, net.classifier.fc4.weight)  # same shape: copied


def test_errors_name_what_can_be_removed(tiny_resnet):
    net = alex()
    removable = "Removable layers: conv1, conv2, conv3, conv4, conv5, fc6, fc7$"
    with pytest.raises(InputError, match="output layer.*" + removable):
        remove_layers(net, ["fc8"])
    with pytest.raises(InputError, match="no convolutional layer"):
        remove_layers(net, ["conv1", "conv2", "conv3", "conv4", "conv5"])
    with pytest.raises(InputError, match="'relu3' is not a conv or fc layer.*belongs to conv3"):
        remove_layers(net, ["relu3"])
    with pytest.raises(InputError, match="pooling layers are kept"):
        remove_layers(net, ["pool1"])
    with pytest.raises(LayerNotFoundError, match="Did you mean 'fc7'"):
        remove_layers(net, ["fc77"])
    with pytest.raises(InputError, match=r"grammar network.*TinyResNet.*stem, layer1\.conv1.*fc"):
        remove_layers(tiny_resnet, ["layer1.conv1"])
    with pytest.raises(InputError, match=r"grammar network.*TinyResNet"):
        ablate(tiny_resnet, ["layer1.conv1"], data="shapes")
    with pytest.raises(InputError, match="removal sets"):
        ablate(net, "fc7", data="shapes", mode="scratch")
    with pytest.raises(InputError, match="needs a trained run"):
        ablate(net, ["fc7"], data="shapes")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    data = datasets.load("shapes", split="train", size=24, n=200)
    test = datasets.load("shapes", split="test", size=24, n=60)
    run = train(TINY, data, test_data=test, out=root / "run", epochs=1, batch_size=40, progress=False)
    return run, data, test


def _accuracy(run, test) -> float:
    """A plain loop: normalize with the run's stats, forward, argmax."""
    net = run.model.eval()
    with torch.no_grad():
        x = (test.images - run.mean.view(1, -1, 1, 1)) / run.std.view(1, -1, 1, 1)
        return (net(x).argmax(1) == test.labels).double().mean().item()


def test_ablate_finetune_table_matches_independent_accuracies(tiny):
    run, data, test = tiny
    res = ablate(run, ["conv3", "conv2,conv3"], data=data, test_data=test, epochs=1, progress=False)
    assert [r.removed for r in res.rows] == [(), ("conv3",), ("conv2", "conv3")]
    full_params = sum(p.numel() for p in run.model.parameters())
    for row in res.rows:
        retrained = load_run(row.run_dir)
        assert row.accuracy == pytest.approx(_accuracy(retrained, test))
        assert row.params == summary(retrained.model, (3, 24, 24)).total_params
        assert row.params_removed == full_params - row.params
        assert row.drop == pytest.approx(res.rows[0].accuracy - row.accuracy)
    assert res.original_accuracy == pytest.approx(_accuracy(run, test))
    assert res.mode == "finetune" and "fine-tuned for 1 epoch from the kept weights" in repr(res)
    assert "conv2, conv3" in repr(res) and f"{res.rows[1].params_removed:,}" in repr(res)
    again = AblationResult.from_dict(json.loads(json.dumps(res.to_dict())))
    assert again.to_dict() == res.to_dict()
    fig = res.plot()
    assert len(fig.axes[0].patches) == 2


def test_ablate_resumes_and_scratch_differs(tiny):
    run, data, test = tiny
    first = ablate(run, ["conv3"], data=data, test_data=test, epochs=1, progress=False)
    second = ablate(run, ["conv3"], data=data, test_data=test, epochs=1, progress=False)  # already trained
    assert [r.accuracy for r in second.rows] == [r.accuracy for r in first.rows]
    scratch = ablate(run, ["conv3"], data=data, test_data=test, epochs=1, mode="scratch", progress=False)
    assert scratch.mode == "scratch" and "/scratch/" in scratch.rows[1].run_dir
    assert [r.params for r in scratch.rows] == [r.params for r in first.rows]


def test_cli_saves_results_and_the_report_shows_them(tiny, tmp_path):
    from convlens.cli.app import main
    from convlens.reporting import report as build_report

    run, _, _ = tiny
    with pytest.raises(SystemExit) as info:
        main(["ablate", str(run.dir), "--remove", "conv3", "--remove", "conv2,conv3", "--epochs", "1", "--quiet"])
        raise SystemExit(0)
    assert info.value.code == 0
    saved = json.loads((run.dir / "results" / "ablation.json").read_text())
    assert [r["removed"] for r in saved["rows"]] == [[], ["conv3"], ["conv2", "conv3"]]
    html = build_report(run, tmp_path / "report").read_text()
    assert '<section id="ablation"' in html and f"{saved['rows'][2]['params_removed']:,}" in html
    with pytest.raises(SystemExit) as info:
        main(["ablate", str(run.dir), "--remove", "fc4"])
    assert info.value.code == 2


def test_ablate_a_spec_from_scratch_in_a_temporary_folder(tiny):
    _, data, test = tiny
    res = ablate(TINY, [["conv2"]], data=data, test_data=test, epochs=1, mode="scratch", progress=False)
    assert res.original_accuracy is None and all(r.run_dir is None for r in res.rows)
    assert res.rows[1].spec == parse(TINY, input_shape=(3, 24, 24)).spec.replace("CONV3-16,BN,RELU,", "", 1)  # pooling stays
    rebuilt = parse(res.rows[1].spec, input_shape=(3, 24, 24))
    assert res.rows[1].params == summary(rebuilt, (3, 24, 24)).total_params
