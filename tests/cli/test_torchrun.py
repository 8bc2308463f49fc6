"""The CLI under `torchrun --nproc_per_node 2`: `top-patches`, `codes`, `evaluate` and `precompute` write the files
one process writes, with equal arrays, recording ``world_size`` 2 instead of 1, and print once (rank 0); the
launcher's environment is checked (an error names what is missing) and the process group is destroyed on errors.

Both sides run with one thread per process (torchrun sets OMP_NUM_THREADS=1 for each worker; a backward pass
may sum in another order with more threads), on the small run of conftest.py."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convlens.cli.app import main
from convlens.cli.launcher import Launch, from_env, launched
from convlens.errors import InputError

BIN = Path(sys.executable).parent
LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def convlens(args, cwd: Path, *, nproc: int = 1, script: bool = False) -> subprocess.CompletedProcess:
    """``convlens ARGS`` in a fresh process, or under ``torchrun --standalone --nproc_per_node NPROC`` (as
    ``-m convlens.cli``, or with ``script`` the ``convlens`` console script itself)."""
    entry = [str(BIN / "convlens")] if script else ["-m", "convlens.cli"]
    head = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", str(nproc)] if nproc > 1 else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARS}
    env.update(OMP_NUM_THREADS="1", COLUMNS="120")
    done = subprocess.run([*head, *entry, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def set_aside(run_dir: Path, to: Path) -> Path:
    """Move what a command wrote (results, codes cache) to ``to``, so that the next run starts bare."""
    to.mkdir()
    for name in ("results", "codes"):
        if (run_dir / name).exists():
            shutil.move(str(run_dir / name), str(to / name))
    return to


def assert_same_json(a: dict, b: dict, *, skip=("seconds",)) -> None:
    """Equal but for ``world_size`` (1 in ``a``, 2 in ``b``) and timings."""
    assert a.get("world_size", 1) == 1 and b.get("world_size", 1) in (1, 2)
    strip = lambda d: {k: v for k, v in d.items() if k not in ("world_size", *skip)}  # noqa: E731
    assert strip(a) == strip(b)


def assert_same_results(one: Path, two: Path, names: list[str]) -> None:
    for name in names:
        a, b = json.loads((one / f"{name}.json").read_text()), json.loads((two / f"{name}.json").read_text())
        assert_same_json(a, b)
        if (one / f"{name}.npz").exists():
            with np.load(one / f"{name}.npz") as x, np.load(two / f"{name}.npz") as y:
                assert x.files == y.files
                for key in x.files:
                    np.testing.assert_array_equal(x[key], y[key], err_msg=f"{name}: {key}")


@pytest.fixture
def run_dir(small_run, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(small_run.dir, dst, ignore=shutil.ignore_patterns("results", "report", "codes"))
    return dst


# ---- the three commands and precompute, 2 processes vs 1 ------------------------------------------------

@pytest.mark.slow
def test_top_patches(run_dir, tmp_path):
    args = ["top-patches", run_dir, "--batch-size", "32", "--quiet"]  # 200 images: 7 batches, 3 + 4 per rank
    one = convlens(args, tmp_path)
    first = set_aside(run_dir, tmp_path / "one")
    two = convlens(args, tmp_path, nproc=2)
    assert two.stdout == one.stdout and two.stdout.count("TopPatches(") == 1  # rank 0 alone prints
    assert_same_results(first / "results", run_dir / "results", ["top-patches"])
    assert json.loads((run_dir / "results" / "top-patches.json").read_text())["world_size"] == 2


@pytest.mark.slow
def test_codes(run_dir, tmp_path):
    from convlens.codespace.codes import Codes

    args = ["codes", run_dir, "--quiet"]
    one = convlens(args, tmp_path)
    first = set_aside(run_dir, tmp_path / "one")
    two = convlens(args, tmp_path, nproc=2)
    assert two.stdout == one.stdout
    assert_same_results(first / "results", run_dir / "results", ["codes-agreement"])
    assert json.loads((run_dir / "results" / "codes-agreement.json").read_text())["world_size"] == 2
    folder = next(p.parent for p in (run_dir / "codes").rglob("codes.json"))
    assert len(list(folder.glob("shard-*-of-00002"))) == 2                  # each rank wrote its shard
    shared, single = Codes.load(folder), Codes.load(first / "codes" / folder.name)
    np.testing.assert_array_equal(shared.vectors, single.vectors)
    np.testing.assert_array_equal(shared.labels, single.labels)


@pytest.mark.slow
def test_evaluate_with_the_console_script(run_dir, tmp_path):
    args = ["evaluate", run_dir, "--batch-size", "16"]
    one = convlens([*args, "--save", tmp_path / "one.json"], tmp_path)
    two = convlens([*args, "--save", tmp_path / "two.json"], tmp_path, nproc=2, script=True)
    assert two.stdout.replace("two.json", "one.json") == one.stdout and two.stdout.count("Evaluation of") == 1
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two"))
    assert_same_json(a, b)
    assert (a["world_size"], b["world_size"]) == (1, 2)


@pytest.mark.slow
def test_precompute(run_dir, tmp_path):
    names = ["evaluation", "top-patches", "top-projections", "codes-agreement", "health", "filters", "codes-tsne"]
    convlens(["precompute", run_dir, "--quiet"], tmp_path)
    first = set_aside(run_dir, tmp_path / "one")
    two = convlens(["precompute", run_dir], tmp_path, nproc=2)
    assert two.stdout.count("[1/7]") == 1 and "7 step(s) computed by 2 processes" in two.stdout
    assert_same_results(first / "results", run_dir / "results", names)
    for name in ("evaluation", "top-patches", "top-projections", "codes-agreement"):  # the sharded steps
        assert json.loads((run_dir / "results" / f"{name}.json").read_text())["world_size"] == 2, name
    again = convlens(["precompute", run_dir], tmp_path, nproc=2)
    assert "0 step(s) computed by 2 processes, 7 current" in again.stdout


# ---- the launcher's environment --------------------------------------------------------------------------

def test_environment_read():
    assert from_env({}) == Launch(0, 1, 0)
    assert from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Launch(3, 4, 1)
    assert from_env({"RANK": "1", "WORLD_SIZE": "2"}).shard == {"rank": 1, "world_size": 2}


@pytest.mark.parametrize("env, message", [
    ({"WORLD_SIZE": "2"}, "RANK and WORLD_SIZE must be set together.*got WORLD_SIZE=2 and no RANK"),
    ({"RANK": "0"}, "RANK and WORLD_SIZE must be set together.*no WORLD_SIZE"),
    ({"LOCAL_RANK": "0"}, "RANK and WORLD_SIZE must be set together.*no RANK or WORLD_SIZE"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, r"RANK must be in \[0, WORLD_SIZE - 1\] = \[0, 1\]; got 2"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE must be an int"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE must be a positive int"),
    ({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "5"}, "LOCAL_RANK must be in"),
])
def test_bad_environment_is_named(env, message):
    with pytest.raises(InputError, match=message):
        from_env(env)


def test_bad_environment_from_the_command_line(small_run, monkeypatch, capsys):
    for name in LAUNCHER_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(small_run.dir)])
    assert info.value.code == 2
    assert "RANK and WORLD_SIZE must be set together" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(SystemExit) as info:
        main(["top-patches", str(small_run.dir), "--quiet"])
    assert info.value.code == 2 and "MASTER_ADDR and MASTER_PORT must be set" in capsys.readouterr().err


def _failing_worker(rank, world_size, port, out, q):
    """Joins a 2-process group through ``launched`` (as torchrun's environment gives it), fails inside, and
    reports whether the group is still there afterwards."""
    import torch.distributed as dist

    env = {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    os.environ.update(env)
    joined = raised = False
    try:
        with launched(env=env) as launch:
            joined = dist.is_initialized() and dist.get_world_size() == world_size and launch.rank == rank
            launch.barrier()
            raise InputError("boom")
    except InputError:
        raised = True
    q.put((rank, joined, raised, dist.is_initialized()))


@pytest.mark.slow  # two spawned processes import torch (~5 s)
def test_process_group_destroyed_on_error(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_failing_worker, args=(r, 2, port, str(tmp_path), q)) for r in range(2)]
    for p in procs:
        p.start()
    got = sorted(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert got == [(0, True, True, False), (1, True, True, False)]
