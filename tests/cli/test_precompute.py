"""`convlens precompute RUN`: every result the explorer reads, in the commands' own files; a rerun recomputes
nothing (file times unchanged), a lost result is the only one recomputed, --force recomputes all; the stored
deconvnet projections equal ``top_projections`` called directly."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from convlens.cli.app import main
from convlens.results import CURRENT, ResultStore

pytestmark = pytest.mark.slow  # one precompute of the small run (~4 s on 2 cores), shared by the tests

LAYERS = ("conv1", "conv2", "conv3")  # the conv layers of conftest's SMALL_SPEC


def cli(argv, capsys=None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of ``convlens ARGV`` run in this process."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr() if capsys is not None else None
    return info.value.code, out.out if out else "", out.err if out else ""


def times(run_dir: Path) -> dict[str, int]:
    """Modification time of every file under RUN/results and RUN/codes (records and caches included)."""
    return {str(p.relative_to(run_dir)): p.stat().st_mtime_ns
            for folder in ("results", "codes") for p in (run_dir / folder).rglob("*") if p.is_file()}


@pytest.fixture(scope="module", autouse=True)
def one_thread_here():
    """One torch thread, as under `make test`'s workers: tiny convs, and steady on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def computed(small_run, tmp_path_factory):
    """A private copy of the small run, precomputed once (the tests below read it; those that change it copy it)."""
    dst = tmp_path_factory.mktemp("precompute") / "run"
    shutil.copytree(small_run.dir, dst, ignore=shutil.ignore_patterns("results", "report", "codes"))
    assert cli(["precompute", dst])[0] == 0
    return dst


def copy_of(run_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(run_dir, dst)
    return dst


def test_precompute_writes_every_result_as_the_commands_name_it(computed):
    store = ResultStore(computed)
    wanted = [("evaluation", {}), ("health", {}), ("filters", {}), ("top-patches", {}), ("top-projections", {}),
              ("codes-agreement", {}), ("codes-tsne", {})] + [("filters", {"layer": n}) for n in LAYERS]
    for name, options in wanted:
        entry = store.entry(name, options)
        assert entry is not None and entry.state == CURRENT, (name, options)
    assert (computed / "results" / "filters-conv1.png").is_file()
    assert any((computed / "codes").rglob("codes.json"))  # the codes cache `convlens codes` uses


def test_rerun_recomputes_nothing(computed, tmp_path, capsys):
    run_dir = copy_of(computed, tmp_path)
    before = times(run_dir)
    code, out, _ = cli(["precompute", run_dir], capsys)
    assert code == 0
    assert times(run_dir) == before                                  # not one file written again
    steps = [line for line in out.splitlines() if line.startswith("[")]
    assert len(steps) == 7 and all("current" in line for line in steps), out
    assert "0 step(s) computed, 7 current" in out


def test_interrupted_run_resumes_with_the_missing_step_only(computed, tmp_path, capsys):
    run_dir = copy_of(computed, tmp_path)
    for suffix in (".json", ".npz"):
        (run_dir / "results" / f"codes-tsne{suffix}").unlink()        # as if stopped before the last step
    before = times(run_dir)
    code, out, _ = cli(["precompute", run_dir, "--quiet"], capsys)
    assert code == 0 and "1 step(s) computed, 6 current" in out and "[" not in out
    after = times(run_dir)
    changed = {p for p in after if after[p] != before.get(p)}
    results = {p for p in changed if p.startswith("results/")}
    assert results and all("codes-tsne" in p for p in results), results
    assert not any(p.endswith(".npy") for p in changed), changed  # the codes read from the cache, not extracted
    assert ResultStore(run_dir).entry("codes-tsne").state == CURRENT


def test_force_recomputes_every_step(computed, tmp_path, capsys):
    run_dir = copy_of(computed, tmp_path)
    before = times(run_dir)
    code, out, _ = cli(["precompute", run_dir, "--force", "--quiet"], capsys)
    assert code == 0 and "7 step(s) computed, 0 current" in out
    after = times(run_dir)
    results = [p for p in before if p.startswith("results/") and p.endswith(".json") and "/.records/" not in p]
    assert results and all(after[p] != before[p] for p in results)


def test_stored_projections_equal_top_projections(computed):
    from convlens.training.evaluate import run_test_data
    from convlens.training.runs import load_run
    from convlens.units.backprop import top_projections
    from convlens.units.projection_sets import unit_projections

    store = ResultStore(computed)
    meta, arrays = store.load("top-projections")
    top = store.load("top-patches")
    assert meta["layers"] == list(top.layers) == list(LAYERS) and meta["world_size"] == 1
    run = load_run(computed)
    data = run_test_data(run)
    rng = np.random.default_rng(0)
    for layer in LAYERS:
        for unit in rng.choice(top.units[layer], 2, replace=False):
            direct = top_projections(run, top, data, layer, int(unit))
            stored = unit_projections(meta, arrays, layer, int(unit))
            assert len(stored) == len(direct) == top.k
            for a, b in zip(stored, direct):
                assert a.shape == b.shape and torch.equal(a, b)


def test_commands_write_the_files_precompute_wrote(computed, tmp_path, capsys):
    run_dir = copy_of(computed, tmp_path)
    listed = {e.stem for e in ResultStore(run_dir).listing()}
    code, out, _ = cli(["filters", run_dir, "--layer", "conv2"], capsys)
    saved = next(line for line in out.splitlines() if line.startswith("saved: "))
    assert code == 0 and Path(saved[len("saved: "):].split(" ")[0]).stem in listed
    code, out, _ = cli(["top-patches", run_dir, "--quiet"], capsys)
    assert code == 0 and f"saved: {run_dir / 'results' / 'top-patches.json'}" in out
    assert {e.stem for e in ResultStore(run_dir).listing()} == listed  # replaced in place, nothing beside

