"""The results store (convlens.results): where each result lives, when a saved one is stale, atomic
writes, the listing, and the regression it exists for: exploring with options (``fooling --class 3``,
``top-patches --units 0,1``) must leave the default results, the report and the demo's done-list as
they were.

Oracles are the files themselves (bytes, JSON contents read directly), what the report sections show,
and the small run's own architecture (SMALL_SPEC: conv layers of 8, 16 and 32 channels, 10 classes)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest

import convlens
from convlens.cli.app import main
from convlens.errors import InputError
from convlens.results import ANALYSES, CURRENT, STALE, UNKNOWN, ResultStore
from convlens.reporting.context import ReportContext

CHANNELS = [8, 16, 32]  # conv1..conv3 of conftest's SMALL_SPEC


@pytest.fixture
def run_dir(small_run, tmp_path):
    """A private copy of the small run, without results (the original is never modified)."""
    dst = tmp_path / "run"
    shutil.copytree(small_run.dir, dst, ignore=shutil.ignore_patterns("results", "report", "codes"))
    return dst


def cli(*argv) -> int:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    return info.value.code


def sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def perturb_weights(run_dir) -> None:
    """Retrained, as far as the store can tell: one weight of the run's weights file changed."""
    from safetensors.torch import load_file, save_file

    path = run_dir / "weights.safetensors"
    tensors = load_file(path)
    name = next(k for k, v in tensors.items() if v.is_floating_point() and v.numel())
    tensors[name].view(-1)[0] += 0.5
    save_file(tensors, path)


def section(name, run_dir, tmp_path):
    import importlib

    module, fn = {"fooling": ("fooling", "fooling"), "patches": ("patches", "patches"),
                  "health": ("health", "health")}[name]
    build = getattr(importlib.import_module(f"convlens.reporting.sections.{module}"), fn)
    return build(ReportContext(convlens.load_run(run_dir), tmp_path / "report"))


# ---- the regression: exploring leaves the defaults, the report and the demo as they were --------------------

def test_fooling_with_a_class_is_kept_beside_the_default_and_the_report_shows_all_classes(run_dir, tmp_path,
                                                                                          capsys, monkeypatch):
    results = run_dir / "results"
    assert cli("fooling", run_dir, "--quiet") == 0
    default = results / "fooling-gradient.json"
    before = sha(default), sha(default.with_suffix(".npz"))
    assert cli("fooling", run_dir, "--class", "3", "--steps", "20", "--quiet") == 0
    assert (sha(default), sha(default.with_suffix(".npz"))) == before           # not overwritten
    assert json.loads(default.read_text())["info"]["targets"] == list(range(10))
    [beside] = results.glob("fooling-gradient@*.json")
    assert json.loads(beside.read_text())["info"]["targets"] == [3]
    sec = section("fooling", run_dir, tmp_path)
    table = next(b for b in sec.blocks if b.kind == "table")
    assert len(table.rows) == 10                                                # every class, not 1
    assert cli("fooling", run_dir, "--all", "--quiet") == 0                     # --all is the default
    assert list(results.glob("fooling-gradient@*.json")) == [beside]
    _demo_done_for(run_dir, [("fooling images", ("fooling-gradient",))], capsys, monkeypatch)


def test_top_patches_of_two_units_are_kept_beside_and_the_report_shows_every_unit(run_dir, tmp_path, capsys,
                                                                                   monkeypatch):
    results = run_dir / "results"
    assert cli("top-patches", run_dir, "--quiet") == 0
    default = results / "top-patches.json"
    before = sha(default), sha(default.with_suffix(".npz"))
    assert cli("top-patches", run_dir, "--units", "0,1", "--quiet") == 0
    assert (sha(default), sha(default.with_suffix(".npz"))) == before
    saved = json.loads(default.read_text())["per_layer"]
    assert [saved[n]["units"] for n in ("conv1", "conv2", "conv3")] == CHANNELS
    [beside] = results.glob("top-patches@*.json")
    assert [v["units"] for v in json.loads(beside.read_text())["per_layer"].values()] == [2, 2, 2]
    sec = section("patches", run_dir, tmp_path)
    table = next(b for b in sec.blocks if b.kind == "table")
    assert [row[2] for row in table.rows] == CHANNELS
    _demo_done_for(run_dir, [("top-9 patches", ("top-patches",))], capsys, monkeypatch)


def _demo_done_for(run_dir, steps, capsys, monkeypatch):
    """`convlens demo`'s steps over these results: done before, nothing recomputed, nothing rewritten."""
    from convlens.cli import demo_steps

    monkeypatch.setattr(demo_steps, "_never", _never, raising=False)
    monkeypatch.setattr(demo_steps, "STEPS", [(name, results, "convlens.cli.demo_steps:_never")
                                              for name, results in steps])
    files = {p: p.stat().st_mtime_ns for p in (run_dir / "results").iterdir() if p.is_file()}
    capsys.readouterr()
    demo_steps.run_steps(convlens.load_run(run_dir))
    out = capsys.readouterr().out
    assert all(f"{name:<16} done before" in out for name, _ in steps), out
    assert {p: p.stat().st_mtime_ns for p in files} == files


def _never(run):
    raise AssertionError("a step whose default results are current ran again")


# ---- staleness ------------------------------------------------------------------------------------------------

def test_other_weights_make_a_result_stale_and_the_report_leaves_it_out(run_dir, tmp_path, capsys):
    assert cli("health", run_dir, "--quiet") == 0
    store = ResultStore(run_dir)
    assert store.entry("health").state == CURRENT and section("health", run_dir, tmp_path) is not None
    perturb_weights(run_dir)
    e = ResultStore(run_dir).entry("health")
    assert (e.state, e.why) == (STALE, "computed from other weights")
    assert (run_dir / "results" / "health.json").is_file()                     # kept, not shown
    assert section("health", run_dir, tmp_path) is None
    capsys.readouterr()
    assert cli("report", run_dir, "--out", tmp_path / "r") == 0
    assert "not shown: health.json, computed from other weights" in capsys.readouterr().out
    assert cli("health", run_dir, "--quiet") == 0                               # computed again: current
    assert ResultStore(run_dir).entry("health").state == CURRENT


def test_other_data_make_a_result_stale(run_dir):
    assert cli("health", run_dir, "--quiet") == 0
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["data"]["test"]["spec"]["n"] = 100                                 # the run's test split changed
    (run_dir / "run.json").write_text(json.dumps(manifest))
    e = ResultStore(run_dir).entry("health")
    assert (e.state, e.why) == (STALE, "computed on other data")


def test_other_options_live_beside_and_weights_only_results_ignore_the_data(run_dir):
    store = ResultStore(run_dir)
    assert store.path("probe") == store.path("probe", {}) == run_dir / "results" / "probe.json"
    beside = store.path("probe", {"repeats": 2})
    assert beside.parent == run_dir / "results" and beside.name.startswith("probe@") and beside != store.path("probe")
    assert store.path("probe", {"repeats": 2}) == beside != store.path("probe", {"repeats": 3})
    assert store.path("ablation", {"remove": ["conv3"]}) == run_dir / "results" / "ablation.json"  # one slot
    with pytest.raises(InputError, match="options of 'probe' must be among layers"):
        store.path("probe", {"repeat": 2})
    with pytest.raises(InputError, match="Did you mean 'probe'"):
        store.path("probes")
    assert cli("filters", run_dir) == 0                                         # weights only: no data key
    manifest = json.loads((run_dir / "run.json").read_text())
    manifest["data"]["test"]["spec"]["n"] = 100
    (run_dir / "run.json").write_text(json.dumps(manifest))
    assert ResultStore(run_dir).entry("filters").state == CURRENT


def test_results_without_a_record_are_shown_but_never_current(run_dir, tmp_path, capsys, monkeypatch):
    """A run folder from before the store: its results show in the report; the demo computes them again."""
    from convlens.insight.health import health

    health(convlens.load_run(run_dir), progress=False).save(run_dir / "results" / "health.json")
    e = ResultStore(run_dir).entry("health")
    assert (e.state, e.options, e.default) == (UNKNOWN, None, True)
    assert section("health", run_dir, tmp_path) is not None
    assert cli("health", run_dir, "--quiet") == 0
    assert ResultStore(run_dir).entry("health").state == CURRENT
    (run_dir / "results" / "health.json").write_text((run_dir / "results" / "health.json").read_text() + " ")
    assert ResultStore(run_dir).entry("health").why == "changed since it was recorded"


# ---- atomic writes ------------------------------------------------------------------------------------------

def test_a_failing_write_leaves_the_previous_result_and_its_record(run_dir, monkeypatch):
    from convlens.insight.health import health

    assert cli("health", run_dir, "--quiet") == 0
    path = run_dir / "results" / "health.json"
    before, listing = path.read_bytes(), sorted(os.listdir(path.parent))
    result = health(convlens.load_run(run_dir), max_samples=20, progress=False)

    def refuse(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        with ResultStore(run_dir).saving("health") as saver:
            saver.save(result)
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(path.parent)) == listing  # no temporary left
    assert ResultStore(run_dir).entry("health").state == CURRENT


# ---- the listing, --force, caches -----------------------------------------------------------------------------

def test_the_listing_says_what_was_computed(run_dir, capsys):
    assert cli("results", run_dir) == 0 and "no results yet" in capsys.readouterr().out
    assert cli("health", run_dir, "--quiet") == 0
    assert cli("health", run_dir, "--quiet", "--max-samples", "50") == 0
    assert cli("filters", run_dir, "--layer", "conv2") == 0
    capsys.readouterr()
    assert cli("results", run_dir, "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["default"], r["options"], r["state"]) for r in rows] == [
        ("health", True, {}, CURRENT), ("health", False, {"max_samples": 50}, CURRENT),
        ("filters", False, {"layer": "conv2"}, CURRENT)]
    assert all(r["seconds"] >= 0 and r["created"] for r in rows)
    assert cli("results", run_dir) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["result", "options", "state", "computed", "seconds"]
    assert lines[2].split()[:3] == [rows[1]["stem"], "max_samples=50", "current"]
    assert cli("results", run_dir / "nowhere") == 2


def test_demo_steps_skip_current_results_and_force_recomputes(run_dir, capsys, monkeypatch):
    from convlens.cli import demo_steps

    monkeypatch.setattr(demo_steps, "STEPS", [s for s in demo_steps.STEPS if s[0] in ("health", "filters")])
    run = convlens.load_run(run_dir)
    demo_steps.run_steps(run)
    out = capsys.readouterr().out
    assert "done before" not in out and (run_dir / "results" / "health.json").is_file()
    first = {p: p.stat().st_mtime_ns for p in (run_dir / "results").glob("*.json")}
    demo_steps.run_steps(run)
    assert capsys.readouterr().out.count("done before") == 2
    assert {p: p.stat().st_mtime_ns for p in first} == first
    demo_steps.run_steps(run, force=True)
    assert "done before" not in capsys.readouterr().out
    assert all(p.stat().st_mtime_ns != t for p, t in first.items())


def test_a_cache_is_kept_while_current_and_emptied_otherwise(run_dir):
    store = ResultStore(run_dir)
    folder = store.cache("codes/x")
    (folder / "a.npy").parent.mkdir(parents=True)
    (folder / "a.npy").write_bytes(b"1")
    assert ResultStore(run_dir).cache("codes/x") == folder and (folder / "a.npy").is_file()
    assert not (ResultStore(run_dir).cache("codes/x", data="digits") / "a.npy").exists()  # other data
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"1")
    assert (ResultStore(run_dir).cache("codes/x", data="digits") / "a.npy").is_file()
    assert not (ResultStore(run_dir).cache("codes/x", data="digits", force=True) / "a.npy").exists()
    folder.mkdir()
    (folder / "a.npy").write_bytes(b"1")
    perturb_weights(run_dir)
    assert not (ResultStore(run_dir).cache("codes/x", data="digits") / "a.npy").exists()


# ---- the registry ---------------------------------------------------------------------------------------------

COMMANDS = {"evaluation": "evaluate", "health": "health", "probe": "probe", "invariance-translate": "invariance",
            "invariance-scale": "invariance", "invariance-rotate": "invariance", "eps-vs-dimension": "fool-linear",
            "ablation": "ablate", "filters": "filters", "top-patches": "top-patches", "saliency": "saliency",
            "occlusion": "occlusion", "class-model": "class-model", "unit-model": "class-model",
            "fooling-gradient": "fooling", "fooling-evolution": "fooling", "inversion": "invert",
            "inversion-quadrants": "invert", "adversarial": "adversarial", "fgsm-sweep": "adversarial",
            "codes-agreement": "codes", "codes-neighbors": "neighbors", "codes-tsne": "tsne",
            "top-projections": "precompute", "attribution": "saliency", "sanity": "sanity",
            "optimal-stimuli": "invariances", "hessian-invariances": "invariances"}


@pytest.mark.parametrize("name", sorted(ANALYSES))
def test_every_analysis_is_named_by_the_options_of_its_command(name):
    """Each registered option is a parameter of the command that computes the result (given_options reads it)."""
    import typer.main

    from convlens.cli import commands  # noqa: F401  (registers every command)
    from convlens.cli.app import app

    group = typer.main.get_command(app)
    params = {p.name for p in group.commands[COMMANDS[name]].params}
    assert set(ANALYSES[name].options) <= params, set(ANALYSES[name].options) - params


def test_every_result_a_report_section_reads_is_registered():
    import ast
    from pathlib import Path

    folder = Path(convlens.__file__).parent / "reporting" / "sections"
    assert folder.is_dir()
    asked = {node.args[0].value for path in folder.glob("*.py") for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("result", "arrays")
             and node.args and isinstance(node.args[0], ast.Constant)}
    assert "top-patches" in asked                                              # the sections were read
    asked |= {f"fooling-{m}" for m in ("gradient", "evolution")} | {f"invariance-{t}" for t in
                                                                     ("translate", "scale", "rotate")}
    assert asked <= set(ANALYSES), asked - set(ANALYSES)


def test_load_reads_back_what_saving_wrote(run_dir):
    assert cli("fooling", run_dir, "--class", "2", "--steps", "5", "--quiet") == 0
    assert cli("top-patches", run_dir, "--k", "3", "--quiet") == 0
    store = ResultStore(run_dir)
    assert store.load("fooling-gradient", {"classes": ["2"], "steps": 5}).info["targets"] == [2]
    assert store.load("top-patches", {"k": 3}).k == 3
    with pytest.raises(InputError, match="was not computed with these options"):
        store.load("top-patches")


# ---- results computed in Python --------------------------------------------------------------------------------

def test_a_result_computed_in_python_is_saved_with_its_record_and_reads_back(run_dir):
    run = convlens.load_run(run_dir)
    result = convlens.class_model(run, [3, 7], steps=3)
    store = ResultStore(run)                                                   # a Run, or its directory
    path = store.save("class-model", result)
    assert path == run_dir / "results" / "class-model.json" and path.with_suffix(".npz").is_file()
    record = json.loads((run_dir / "results" / ".records" / "class-model.json").read_text())
    assert record["options"] == {} and record["seconds"] is None
    assert record["weights"] == hashlib.sha256((run_dir / "weights.safetensors").read_bytes()).hexdigest()[:16]
    [entry] = ResultStore(run_dir).listing()
    assert (entry.name, entry.default, entry.state, entry.seconds) == ("class-model", True, CURRENT, None)
    back = ResultStore(run_dir).load("class-model")
    assert back.info["targets"] == [3, 7] and (back.images == result.images).all()
    assert "class-model" in repr(ResultStore(run_dir).listing())              # a blank time, not a crash
    before = sha(path)
    beside = store.save("class-model", result, options={"classes": ["3", "7"], "steps": 3})
    assert beside.name.startswith("class-model@") and sha(path) == before      # kept beside the default
    assert ResultStore(run_dir).shown("class-model").path == path             # the report shows the default
    perturb_weights(run_dir)
    assert ResultStore(run_dir).entry("class-model").state == STALE


def test_saving_from_python_checks_the_run_the_name_and_the_result(run_dir, tmp_path):
    run = convlens.load_run(run_dir)
    with pytest.raises(InputError, match="name must be an analysis of the results store.*Did you mean 'class-model'"):
        ResultStore(run).save("class-models", None)
    with pytest.raises(InputError, match=r"result must be what 'class-model' computes.*got a str"):
        ResultStore(run).save("class-model", "not a result")
    with pytest.raises(InputError, match=r"options of 'class-model' must be among classes, seeds, steps"):
        ResultStore(run).save("class-model", None, options={"lr": 1})
    file_run = convlens.load_run(run_dir / "weights.safetensors", arch=run.model)
    with pytest.raises(InputError, match="run must have a run directory to keep results in"):
        ResultStore(file_run)
    with pytest.raises(InputError, match="run must be a Run or a run directory; got 'int'"):
        ResultStore(3)
    assert not (run_dir / "results" / ".records").exists()                    # nothing recorded
