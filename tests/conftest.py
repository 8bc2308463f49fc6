"""Shared tiny fixture models: the awkward cases "any nn.Module" must cover, each small enough for CPU tests.

Each class has an ``input_shape`` (C, H, W) it is meant for (a convention borrowed from
``GrammarNet``; plain user models do not have one) and builds deterministic weights from a seed.

=================  ============================================================================
``TinyResNet``     residual blocks written by hand: ``F.relu`` in ``forward``, ``out + shortcut(x)``,
                   a strided 1x1 projection shortcut, BatchNorm, global mean pooling, FC
``InplaceNet``     ``nn.ReLU(inplace=True)`` modules and an in-place ``x.relu_()`` in ``forward``
``BatchNormNet``   conv-BN-ReLU blocks, max pooling, BatchNorm1d in the classifier
``GrayNet``        1-channel, non-square input (20x28), ceil-mode pooling, a strided conv, a
                   non-square kernel, adaptive average pooling
``TwiceNet``       one conv module called twice (shared weights)
=================  ============================================================================

Use the fixtures (``tiny_resnet``, ``inplace_net``, ``bn_net``, ``gray_net``, ``twice_net``) for a
fresh instance in eval mode, or ``FIXTURE_MODELS`` to parametrize over all of them.
"""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn


from hypothesis import settings as _hypothesis_settings

# Property-based tests draw the same examples on every run: CI is a gate, not a fuzzing campaign.
_hypothesis_settings.register_profile("convlens", derandomize=True, database=None)
_hypothesis_settings.load_profile("convlens")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # `make test` runs two workers on two cores: one thread each, no oversubscription


# ---- a skipped test is a failed test under --no-skip (`make test`, hence CI) ------------------------------
def pytest_addoption(parser):
    parser.addoption("--no-skip", action="store_true",
                     help="report every skipped test as failed: each test must run (`make test` sets it)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    if report.skipped and not hasattr(report, "wasxfail") and item.config.getoption("--no-skip"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome, report.longrepr = "failed", f"skipped under --no-skip (every test must run): {reason}"


def pytest_collectreport(report):
    """A module skipped at import (``importorskip``) fails too: the hook above never sees its tests."""
    if report.skipped and _no_skip:
        report.outcome = "failed"


def pytest_configure(config):
    global _no_skip
    _no_skip = config.getoption("--no-skip")


_no_skip = False


def _seeded(cls):
    """Build ``cls`` with weights drawn from a fixed seed, without disturbing the global RNG."""
    def make(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return cls(*args, **kwargs)
    make.__name__ = cls.__name__
    return make


class BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): conv-BN-relu-conv-BN, plus an identity or 1x1 projection."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):                      # (N, C_in, H, W)
        out = F.relu(self.bn1(self.conv1(x)))  # (N, C_out, H/s, W/s)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TinyResNet(nn.Module):
    input_shape = (3, 32, 32)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.layer3 = BasicBlock(16, 16, stride=2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):                      # (N, 3, H, W)
        x = F.relu(self.stem(x))
        x = self.layer3(self.layer2(self.layer1(x)))  # (N, 16, H/4, W/4)
        return self.fc(x.mean((2, 3)))         # (N, num_classes)


class InplaceNet(nn.Module):
    input_shape = (3, 16, 16)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(inplace=True))
        self.conv = nn.Conv2d(8, 8, 3, stride=2, padding=1)
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):                      # (N, 3, 16, 16)
        x = self.conv(self.features(x)).relu_()  # (N, 8, 4, 4)
        return self.fc(torch.flatten(x, 1))    # (N, 5)


class BatchNormNet(nn.Module):
    input_shape = (3, 16, 16)

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.BatchNorm1d(32), nn.ReLU(),
                                        nn.Linear(32, 10))

    def forward(self, x):                      # (N, 3, 16, 16)
        return self.classifier(self.features(x))


class GrayNet(nn.Module):
    input_shape = (1, 20, 28)

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 5)                             # (N, 4, 16, 24)
        self.pool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)       # (N, 4, 8, 12)
        self.conv2 = nn.Conv2d(4, 8, (3, 5), stride=2, padding=(1, 2))  # (N, 8, 4, 6)
        self.pool2 = nn.AdaptiveAvgPool2d((2, 3))                   # (N, 8, 2, 3)
        self.fc = nn.Linear(8 * 2 * 3, 3)

    def forward(self, x):                      # (N, 1, 20, 28)
        x = self.pool1(torch.tanh(self.conv1(x)))
        x = self.pool2(F.relu(self.conv2(x)))
        return self.fc(x.flatten(1))           # (N, 3)


class TwiceNet(nn.Module):
    input_shape = (3, 12, 12)

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x):                      # (N, 3, 12, 12)
        x = self.shared(F.relu(self.shared(F.relu(self.stem(x)))))  # the same weights, twice
        return self.head(x.amax((2, 3)))       # (N, 2)


FIXTURE_MODELS = {
    "tiny_resnet": _seeded(TinyResNet),
    "inplace_net": _seeded(InplaceNet),
    "bn_net": _seeded(BatchNormNet),
    "gray_net": _seeded(GrayNet),
    "twice_net": _seeded(TwiceNet),
}


@pytest.fixture
def tiny_resnet():
    return FIXTURE_MODELS["tiny_resnet"]().eval()


@pytest.fixture
def inplace_net():
    return FIXTURE_MODELS["inplace_net"]().eval()


@pytest.fixture
def bn_net():
    return FIXTURE_MODELS["bn_net"]().eval()


@pytest.fixture
def gray_net():
    return FIXTURE_MODELS["gray_net"]().eval()


@pytest.fixture
def twice_net():
    return FIXTURE_MODELS["twice_net"]().eval()


# ---- trained runs -----------------------------------------------------------------------------------
SMALL_SPEC = "CONV3-8,BN,RELU,POOL2,CONV3-16,BN,RELU,POOL2,CONV3-32,RELU,GAP,FC"
DEMO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runs", "demo")


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """A small grammar net trained for a second on ``digits`` (1 channel, 16x16, 10 classes; ~89% test accuracy):
    a real Run (class names, normalization, test split) that CI can always build. Do not modify it."""
    from convlens import datasets
    from convlens.training.fit import train

    data = datasets.load("digits", split="train", size=16, n=600)
    test = datasets.load("digits", split="test", size=16, n=200)
    out = tmp_path_factory.mktemp("small_run") / "run"
    return train(SMALL_SPEC, data, test_data=test, out=out, epochs=6, batch_size=20, lr=1e-2, augment=False,
                 progress=False)


@pytest.fixture
def demo_run_dir(tmp_path):
    """A private copy of ``runs/demo`` (weights and manifest, no results or report). `make test` trains
    the demo model first when it is missing; a bare ``pytest`` on a fresh clone skips these tests (and
    fails them under ``--no-skip``)."""
    import shutil

    if not os.path.isfile(os.path.join(DEMO_DIR, "weights.safetensors")):
        pytest.skip("runs/demo not built (`make demo`, or `make test`, which trains it)")
    dst = tmp_path / "demo"
    shutil.copytree(DEMO_DIR, dst, ignore=shutil.ignore_patterns("results", "report", "ablation"))
    return dst


# ---- "leave the model as found" -------------------------------------------------------------------
def model_state(model: nn.Module):
    """Everything a method must give back: weights and buffers, each parameter's requires_grad, each
    module's train/eval mode. Compare with :func:`assert_as_found` after the call."""
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            [p.requires_grad for p in model.parameters()], [m.training for m in model.modules()])


def assert_as_found(model: nn.Module, state) -> None:
    weights, flags, modes = state
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items()), "weights or buffers changed"
    assert [p.requires_grad for p in model.parameters()] == flags, "requires_grad not restored"
    assert [m.training for m in model.modules()] == modes, "train/eval mode not restored"
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks for m in model.modules()), \
        "a hook was left behind"


def hooks_left(model: nn.Module) -> int:
    """Forward, backward and pre-hooks still registered anywhere in ``model`` (0 when a method cleaned up)."""
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks)
               + len(getattr(m, "_forward_hooks_with_kwargs", {})) for m in model.modules())


@pytest.fixture
def one_thread():
    """Tiny tensors: one torch thread (two threads on a busy 2-core machine make a tiny conv far slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_gloo_workers(worker, tmp_path, world_size: int = 2, *args) -> list:
    """Spawn ``world_size`` processes running ``worker(rank, world_size, init_url, out_dir, queue, *args)``
    (each joins a gloo group at ``init_url`` and puts one result on the queue); their results in rank
    order after checking every process exited cleanly. ``worker`` must be a module-level function."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    init = f"file://{tmp_path / 'rendezvous'}"
    procs = [ctx.Process(target=worker, args=(r, world_size, init, str(tmp_path / "out"), q, *args))
             for r in range(world_size)]
    for p in procs:
        p.start()
    got = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return sorted(got, key=lambda g: g[0])


def run_weights(run_dir) -> dict[str, torch.Tensor]:
    """The weights a run directory holds (its weights.safetensors)."""
    import os

    from safetensors.torch import load_file

    return load_file(os.path.join(run_dir, "weights.safetensors"))


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    """A private copy of ``runs/demo`` (weights and manifest, no results), shared by one test module (the
    explorer's tests)."""
    import shutil

    if not os.path.isfile(os.path.join(DEMO_DIR, "weights.safetensors")):
        pytest.skip("runs/demo not built (`make demo`, or `make test`, which trains it)")
    dst = tmp_path_factory.mktemp("web") / "demo"
    shutil.copytree(DEMO_DIR, dst, ignore=shutil.ignore_patterns("results", "report", "ablation", "uploads"))
    return dst
