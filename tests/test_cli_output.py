"""What the CLI prints: tables instead of raw reprs, the paths it saved, no progress bars in a log, Ctrl-C's
message and exit status, and no empty run folder left by an interrupted first epoch."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convlens.cli.app import main
from convlens.cli.output import show_progress, train_progress
from convlens.errors import RunError
from convlens.training.runs import load_run

TINY_ARCH = "CONV3-4,RELU,POOL2,FC"
RESUME_HINT = "interrupted; run the same command again to resume"


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def saved_paths(text: str) -> list[Path]:
    """The paths of every ``saved: A (+ .npz, .png), B`` line."""
    lines = [re.sub(r" \([^)]*\)", "", line[len("saved: "):])
             for line in text.splitlines() if line.startswith("saved: ")]
    return [Path(item) for line in lines for item in line.split(", ")]


@pytest.fixture
def run_dir(small_run, tmp_path):
    """A private copy of the small run (its results folder starts empty)."""
    dst = tmp_path / "run"
    shutil.copytree(small_run.dir, dst, ignore=shutil.ignore_patterns("results", "report", "codes"))
    return dst


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """An image folder with train/ and test/ splits: 2 classes (dark, bright) of 8x8 gray images."""
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 8)):
        for name, level in (("dark", 40), ("bright", 200)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(level + rng.normal(0, 20, (8, 8)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{i}.png")
    return root


def train_argv(out, data, epochs=2):
    return ["train", "--out", out, "--arch", TINY_ARCH, "--data", data, "--epochs", epochs, "--batch-size", 8]


@pytest.mark.parametrize("argv, columns", [
    (["class-model", "--class", "3", "--seeds", "1", "--steps", "3"], ["class", "P(class) before -> after", "top-1"]),
    (["class-model", "--layer", "conv3", "--unit", "0", "--seeds", "1", "--steps", "3"], ["unit", "activation"]),
    (["fooling", "--class", "3", "--steps", "3"], ["class", "P(class) start -> end", "top-1", "reached 99.6%"]),
    (["fooling", "--class", "3", "--method", "evolution", "--generations", "2"], ["P(class) start -> end"]),
])
def test_class_model_and_fooling_print_a_table_not_a_repr(argv, columns, run_dir, capsys):
    code, out, err = run([argv[0], run_dir, *argv[1:]], capsys)
    assert code == 0, err
    assert "OptimizedImage" not in out and not re.search(r"\d\.\d{7,}", out)  # no raw floats either
    assert any(all(c in line for c in columns) for line in out.splitlines())  # the table's header
    paths = saved_paths(out)
    assert paths and all(p.is_file() and p.parent == run_dir / "results" for p in paths)


@pytest.mark.parametrize("argv", [
    ["filters"],
    ["health", "--max-samples", "20"],
    ["invariance", "--n", "1", "--amounts", "0,2"],
    ["top-patches", "--k", "2", "--layer", "conv1"],
    ["saliency", "--n", "1"],
    ["occlusion", "--index", "0", "--window", "8", "--stride", "8"],
    ["invert", "--steps", "2", "--layers", "conv1", "--quadrants", "none"],
    ["adversarial", "--index", "0", "--method", "fgsm"],
    ["codes", "--no-agreement"],
    ["evaluate", "--save", "EVAL"],
])
def test_every_file_written_is_named(argv, run_dir, capsys):
    argv = [str(run_dir / "evaluation.json") if a == "EVAL" else a for a in argv]
    code, out, err = run([argv[0], run_dir, *argv[1:]], capsys)
    assert code == 0, err
    paths = saved_paths(out)
    assert paths and all(p.exists() for p in paths)


def test_json_output_stays_json_with_the_saved_path_on_stderr(run_dir, capsys):
    import json

    code, out, err = run(["filters", run_dir, "--json"], capsys)
    assert code == 0
    assert json.loads(out)["layer"] == "conv1"
    assert all(p.exists() for p in saved_paths(err))


def test_train_in_a_log_prints_a_line_per_epoch_and_no_bar(tiny_folder, tmp_path, capsys):
    code, out, err = run(train_argv(tmp_path / "run", tiny_folder), capsys)  # captured: not a terminal
    assert code == 0, err
    assert "\r" not in out + err
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("epoch")] == ["epoch 1/2", "epoch 2/2"]
    assert str(tmp_path / "run") in out


def test_progress_bars_only_on_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr.isatty", lambda: False)
    assert not show_progress() and callable(train_progress()["callback"]) and not train_progress()["progress"]
    assert train_progress(quiet=True) == {"progress": False, "callback": None}
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert show_progress() and not show_progress(quiet=True)
    assert train_progress() == {"progress": True}


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


@pytest.mark.parametrize("argv, patched, message", [
    (["summary", "lenet"], "convlens.arch.summary.summary", "interrupted"),
    (["top-patches", "RUN"], "convlens.units.patches.top_patches", "interrupted"),
    (["top-patches", "RUN", "--out", "PROGRESS"], "convlens.units.patches.top_patches", RESUME_HINT),
    (["codes", "RUN"], "convlens.codespace.codes.codes", RESUME_HINT),
])
def test_ctrl_c_says_interrupted_and_how_to_resume_and_exits_130(argv, patched, message, run_dir, tmp_path,
                                                                  monkeypatch, capsys):
    monkeypatch.setattr(patched, _interrupt)
    argv = [{"RUN": run_dir, "PROGRESS": tmp_path / "progress"}.get(a, a) for a in argv]
    code, out, err = run(argv, capsys)
    assert code == 130
    assert err.strip() == message and "Traceback" not in out + err


@pytest.mark.parametrize("existed", [False, True])
def test_an_interrupted_first_epoch_leaves_no_half_run(existed, tiny_folder, tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "run"
    if existed:
        out_dir.mkdir()
    with monkeypatch.context() as m:
        m.setattr("convlens.training.fit._test_metrics", _interrupt)  # inside epoch 1, before it is saved
        code, _, err = run(train_argv(out_dir, tiny_folder, epochs=1), capsys)
    assert code == 130 and err.strip() == RESUME_HINT
    assert out_dir.exists() == existed  # the folder it created is gone; the user's own is left, empty
    if existed:
        assert not any(out_dir.iterdir())
        with pytest.raises(RunError, match="no run.json"):
            load_run(out_dir)
    else:
        with pytest.raises(RunError, match="no such file or directory"):
            load_run(out_dir)
    code, out, err = run(train_argv(out_dir, tiny_folder, epochs=1), capsys)
    assert code == 0, err
    assert "epoch 1/1" in out and load_run(out_dir).history[-1]["epoch"] == 1
