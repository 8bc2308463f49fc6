"""gradcheck: autograd against finite differences.

Oracles: autograd Functions with a deliberately wrong backward (and their correct twins), PyTorch's
own ``torch.autograd.gradcheck`` on the same tiny model, and exact equality of the model before/after.
"""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from conftest import FIXTURE_MODELS
from torch import nn

import convlens
from convlens import InputError, SpecError, UnknownModelError
from convlens.training.gradcheck import GradcheckResult, gradcheck


# -- fixtures: a function with a right and a wrong backward ------------------------------------------
class SiLU(torch.autograd.Function):
    """y = x·σ(x); dy/dx = σ(x) + x·σ(x)·(1 − σ(x))."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s + x * s * (1 - s))


class SiLUDropsATerm(SiLU):
    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * torch.sigmoid(x)  # forgets the x·σ'(x) term


class SiLUDoubles(SiLU):
    @staticmethod
    def backward(ctx, grad):
        return 2 * SiLU.backward(ctx, grad)


class SiLUNaN(SiLU):
    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


class FnNet(nn.Module):
    """conv -> fn -> fc: a wrong fn backward corrupts the input and conv gradients, not the fc's."""

    def __init__(self, fn=SiLU, channels: int = 1, size: int = 6):
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv2d(channels, 3, 3, padding=1)
        self.fc = nn.Linear(3 * size * size, 4)

    def forward(self, x):
        return self.fc(self.fn.apply(self.conv(x)).flatten(1))


class Residual(nn.Module):
    """A residual block written with functional F.relu, an in-place ReLU, BN and an add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        x = F.relu(self.stem(x))
        y = self.conv2(self.act(self.bn(self.conv1(x))))
        x = F.max_pool2d(F.relu(x + y), 2)  # (N, 4, H/2, W/2)
        return self.head(x.mean(dim=(2, 3)))


def rows(result: GradcheckResult) -> dict[str, bool]:
    return {r.layer: r.passed for r in result.rows}


# -- (1) correct models pass ---------------------------------------------------------------------------
def test_lenet_passes_with_a_table_and_lecture_names():
    result = convlens.gradcheck("lenet")
    assert result.passed and all(r.passed for r in result.rows)
    assert list(rows(result)) == ["input", "conv1", "conv2", "fc3", "fc4", "fc5"]
    assert [r.checked for r in result.rows] == [8, 8 + 6, 16, 16, 16, 16]  # conv1 has only 6 biases
    assert result.worst.max_rel_error < 1e-6  # float64: far below the tolerance
    text = repr(result)
    assert "conv1" in text and "features.conv1" in text and text.splitlines()[-1].startswith("PASSED")
    assert result.input_shape == (2, 1, 32, 32)


@pytest.mark.parametrize("batch_stats", [False, True])
def test_a_spec_with_bn_lrn_pools_and_dropout_passes(batch_stats):
    spec = "CONV3-6,BN,RELU,LRN,POOL2,CONV3-8,TANH,AVGPOOL2,DROPOUT,FC-12,BN,SIGMOID,FC-5,SOFTMAX"
    result = gradcheck(spec, (2, 12, 10), batch_size=3, samples=4, batch_stats=batch_stats)
    assert result.passed, result
    assert {"bn1", "bn3"} <= set(rows(result)) and result.batch_stats is batch_stats


def test_a_hand_written_residual_model_with_functional_relu_passes():
    result = gradcheck(Residual(), (1, 7, 9), samples=4)  # non-square, one channel
    assert result.passed, result
    assert set(rows(result)) == {"input", "stem", "conv1", "bn", "conv2", "head"}


@pytest.mark.parametrize("batch_stats", [False, True])
@pytest.mark.parametrize("name", sorted(FIXTURE_MODELS))
def test_every_fixture_model_passes(name, batch_stats):
    """Residual adds, in-place ReLUs, BN 1d/2d, ceil-mode pools, non-square kernels, a conv called twice."""
    model = FIXTURE_MODELS[name]().eval()
    result = gradcheck(model, samples=3, batch_stats=batch_stats)  # input_size from the model's input_shape
    assert result.passed, result
    assert {r.path for r in result.rows} >= {p.rpartition(".")[0] for p, _ in model.named_parameters()}


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layers=st.lists(st.sampled_from(["CONV3-4", "RELU", "TANH", "SIGMOID", "BN", "LRN3", "POOL2", "AVGPOOL2",
                                        "DROPOUT"]), min_size=1, max_size=5),
       seed=st.integers(0, 2**16))
def test_any_small_grammar_net_passes(layers, seed):
    spec = ",".join(["CONV3-4", *layers, "FC-3"])
    assert gradcheck(spec, (2, 32, 32), samples=3, seed=seed).passed  # 32 survives five POOL2s


class Kink(nn.Module):
    """relu(b): finite differences of step eps > b straddle the kink at 0."""

    def __init__(self, b: float):
        super().__init__()
        self.b = nn.Parameter(torch.tensor([b]))

    def forward(self, x):
        return F.relu(self.b + 0 * x.flatten(1).sum(1, keepdim=True))


@pytest.mark.parametrize("b, eps, kinks", [(3e-7, 1e-6, 0), (3e-6, 1e-5, 0), (3e-7, 1e-5, 1)])
def test_a_kink_within_eps_is_retried_at_eps_over_10(b, eps, kinks):
    result = gradcheck(Kink(b), (1, 2, 2), eps=eps)
    assert result.passed  # the first two pass on the retry at eps/10 ...
    # ... the last straddles the kink at eps and at eps/10: its one-sided slopes (1 and 0.3) disagree
    # and autograd (1) equals one of them, so it is reported as not judged instead of failing.
    assert sum(r.kinks for r in result.rows) == kinks


def test_gradients_lost_in_rounding_noise_are_marked_not_claimed():
    class Drowned(nn.Module):  # outputs near 1e3 make L's rounding noise dwarf gradients of 1e-9
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return 1e-9 * self.fc(x.flatten(1)) + 1e3

    result = gradcheck(Drowned(), (1, 2, 2))
    assert result.passed and all(r.below_noise == r.checked for r in result.rows)
    assert "ok?" in repr(result).splitlines()[3] and "says nothing" in repr(result).splitlines()[-1]
    assert "ok?" not in repr(gradcheck("lenet", samples=2))


# -- (2) wrong backward fails, named where it shows -------------------------------------------------------------
@pytest.mark.parametrize("wrong", [SiLUDropsATerm, SiLUDoubles, SiLUNaN])
def test_a_wrong_backward_fails_where_it_is_used_and_its_twin_passes(wrong):
    torch.manual_seed(0)
    bad = gradcheck(FnNet(wrong), (1, 6, 6))
    assert bad.passed is False
    assert rows(bad) == {"input": False, "conv": False, "fc": True}
    assert bad.worst.layer in ("input", "conv") and bad.worst.max_rel_error > 1e-2
    assert [r.layer for r in bad.failed] == ["input", "conv"]
    assert repr(bad).splitlines()[-1].startswith("FAILED: 2 of 3") and "FAILED" in repr(bad).splitlines()[3]
    torch.manual_seed(0)
    assert gradcheck(FnNet(SiLU), (1, 6, 6)).passed


# -- (3) agreement with torch.autograd.gradcheck -----------------------------------------------------------
@pytest.mark.parametrize("fn, ok", [(SiLU, True), (SiLUDropsATerm, False), (SiLUDoubles, False)])
def test_agrees_with_torch_autograd_gradcheck(fn, ok):
    torch.manual_seed(1)
    model = FnNet(fn, channels=2, size=3)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().double().requires_grad_(True) for k, v in model.named_parameters()}
    names = list(params)

    def f(x, *values):
        return torch.func.functional_call(model, dict(zip(names, values)), (x,))

    theirs = torch.autograd.gradcheck(f, (x, *params.values()), raise_exception=False, fast_mode=True)
    ours = gradcheck(model, (2, 3, 3), samples=4)
    assert theirs is ok and ours.passed is ok


# -- (4) the model is left as found ------------------------------------------------------------------------
def test_the_model_is_left_exactly_as_found():
    model = nn.Sequential(Residual(), nn.Dropout(0.3))
    model.train()
    model[0].bn.eval()  # a mixed mode must come back mixed
    model[0].stem.weight.requires_grad_(False)  # frozen: still checked, still frozen afterwards
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    flags = [p.requires_grad for p in model.parameters()]

    result = gradcheck(model, (1, 6, 6), samples=2, batch_stats=True)

    assert result.passed and "0.stem" in {r.path for r in result.rows}
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) and after[k].dtype == before[k].dtype for k in before)
    assert all(p.dtype == torch.float32 and p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags


def test_seeded_and_deterministic():
    a, b = gradcheck("lenet", samples=3, seed=3), gradcheck("lenet", samples=3, seed=3)
    assert a.to_dict() == b.to_dict()  # same weights, input, loss weights and coordinates
    assert [r.worst_at for r in a.rows] != [r.worst_at for r in gradcheck("lenet", samples=3, seed=4).rows]
    state = torch.random.get_rng_state()
    gradcheck("lenet", samples=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not consumed


def test_to_dict_is_json():
    d = json.loads(json.dumps(gradcheck("lenet", samples=2).to_dict()))
    assert d["passed"] is True and d["rows"][1]["layer"] == "conv1" and d["rows"][1]["path"] == "features.conv1"
    assert set(d["rows"][0]) >= {"layer", "path", "checked", "max_rel_error", "passed", "worst_at"}


# -- errors --------------------------------------------------------------------------------------------------
def test_bad_arguments_raise_typed_errors():
    with pytest.raises(InputError, match=r"input_size must be \(C, H, W\) for a FnNet"):
        gradcheck(FnNet())
    with pytest.raises(InputError, match=r"samples must be a positive int; got 0"):
        gradcheck("lenet", samples=0)
    with pytest.raises(InputError, match=r"eps must be a positive float; got -1"):
        gradcheck("lenet", eps=-1)
    with pytest.raises(InputError, match=r"batch_size must be at least 2 with batch_stats=True"):
        gradcheck("lenet", batch_size=1, batch_stats=True)
    with pytest.raises(InputError, match=r"input_size must be three positive ints"):
        gradcheck("lenet", (32, 32))
    with pytest.raises(UnknownModelError, match="Did you mean 'lenet'"):
        gradcheck("lenett")
    with pytest.raises(SpecError):
        gradcheck("CONV3-8,FOO", (1, 8, 8))
    with pytest.raises(SpecError, match=r"\^"):
        gradcheck("CONVX", (1, 8, 8))  # a bare word far from every zoo name stays a spec error


# -- (5) CLI -------------------------------------------------------------------------------------------------
@pytest.fixture
def cli(monkeypatch, capsys):
    """Runs `convlens ...` through main(); returns (exit code, stdout, stderr)."""
    from convlens.cli import gradcheck_cmd  # noqa: F401  registers `gradcheck` whether or not commands.py does
    from convlens.cli import main

    try:
        import convlens.cli.commands  # noqa: F401
    except ImportError:  # other command modules still in progress: the test only needs this one
        monkeypatch.setitem(sys.modules, "convlens.cli.commands", types.ModuleType("convlens.cli.commands"))

    def run(*args: str):
        code = 0
        try:
            main(list(args))
        except SystemExit as exit:
            code = exit.code
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def test_cli_lenet_prints_the_table_and_exits_0(cli):
    code, out, _ = cli("gradcheck", "lenet")
    assert code == 0
    assert "conv1" in out and "max rel err" in out and "PASSED" in out


def test_cli_input_json_and_failure_exit_1(cli):
    code, out, _ = cli("gradcheck", "CONV3-4,TANH,POOL2,FC-3", "--input", "8x6x2", "--json")
    d = json.loads(out)
    assert code == 0 and d["input_shape"] == [2, 2, 8, 6] and d["passed"] is True
    code, out, _ = cli("gradcheck", "lenet", "--eps", "1", "--samples", "2")  # a step that big is no derivative
    assert code == 1 and "FAILED" in out


def test_cli_bad_spec_prints_a_message_and_exits_2(cli):
    code, out, err = cli("gradcheck", "CONV3-8,FOO")
    assert code == 2 and out == ""
    assert err.startswith("error:") and "FOO" in err and "^^^" in err


def test_coordinates_on_a_kink_are_not_judged_but_wrong_backwards_still_fail():
    # BN right after a ReLU: inputs that are exactly 0 put the next ReLU exactly on its kink, so the
    # BN bias has no derivative there (the one-sided differences disagree; autograd takes one side).
    result = gradcheck("CONV3-4,RELU,BN,RELU,FC-3", (2, 32, 32), samples=3, seed=0)
    bn = next(r for r in result.rows if r.layer == "bn1")
    assert result.passed and bn.kinks > 0 and "on a kink" in repr(result)
    # The same model behind a SiLU whose backward is doubled: a wrong backward is smooth, still caught.
    class Doubled(nn.Module):
        def forward(self, x):
            return SiLUDoubles.apply(x)

    net = convlens.parse("CONV3-4,RELU,BN,RELU,FC-3", input_shape=(2, 32, 32))
    wrong = gradcheck(nn.Sequential(Doubled(), net), (2, 32, 32), samples=3, seed=0)
    assert wrong.passed is False and any(r.path == "" for r in wrong.failed)
