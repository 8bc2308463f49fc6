"""The HTML report: one self-contained page with every section, figures embedded and saved as PNGs; it shows
what the run's results store holds, results computed in Python included, and evaluates on given data."""
from __future__ import annotations

import base64
import re
import shutil

import numpy as np
import pytest
import torch

import convlens
from convlens import datasets
from convlens.errors import InputError
from convlens.reporting import report
from convlens.reporting.blocks import Table
from convlens.results import ResultStore
from convlens.training.fit import train

SPEC = "CONV3-8,RELU,POOL2,CONV3-8,RELU,POOL2,FC"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = datasets.load("shapes", split="train", size=16, n=120)
    test = datasets.load("shapes", split="test", size=16, n=60)
    out = tmp_path_factory.mktemp("run") / "tiny"
    return train(SPEC, data, test_data=test, out=out, epochs=1, batch_size=20, progress=False)


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A private copy of the tiny run's folder (the module's run is shared: never add results to it)."""
    dst = tmp_path / "copy"
    shutil.copytree(tiny_run.dir, dst, ignore=shutil.ignore_patterns("results", "report"))
    return dst


def top1_error_text(model, images, labels) -> str:
    """The oracle: the share of images whose highest score is not their label, as the report prints it."""
    with torch.no_grad():
        wrong = (model(images).argmax(1) != labels).float().mean().item()
    return f"{100 * wrong:.2f}%"


def test_report_is_self_contained_with_all_sections(tiny_run, tmp_path):
    path = report(tiny_run, tmp_path / "report")
    html = path.read_text()
    for section in ("architecture", "training", "evaluation"):
        assert f'<section id="{section}"' in html
    figures = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
    assert "architecture-memory-params.png" in figures and "training-curves.png" in figures
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == len(figures)  # every figure embedded, nothing linked from outside
    assert all(base64.b64decode(e)[:8] == b"\x89PNG\r\n\x1a\n" for e in embedded)
    assert "http://" not in html and "https://" not in html
    style = html[html.index("<style>"):html.index("</style>")]
    assert "&#34;" not in style and '"Liberation Sans"' in style  # CSS is not HTML-escaped


def test_report_numbers_match_the_evaluation(tiny_run, tmp_path):
    from convlens.training.evaluate import run_test_data

    test = run_test_data(tiny_run)
    html = report(tiny_run, tmp_path / "r").read_text()
    assert top1_error_text(tiny_run.pixel_model(), test.images, test.labels) in html
    assert f"{sum(p.numel() for p in tiny_run.model.parameters()):,}" in html


def test_a_result_computed_in_python_appears_in_the_report(run_copy, tmp_path):
    run = convlens.load_run(run_copy)
    result = convlens.class_model(run, "star", steps=4, n_seeds=2)
    ResultStore(run).save("class-model", result)
    html = report(run_copy).read_text()                       # a run directory; default out: RUN/report
    assert (run_copy / "report" / "report.html").is_file()
    assert '<section id="class_model"' in html and (run_copy / "report" / "figures" /
                                                     "class_model-class_models.png").is_file()
    info = result.info                                         # the oracle: the object computed in Python
    p_after = np.asarray(info["prob_after"], dtype=float)
    top1 = np.asarray(info["top1"]) == np.asarray(info["targets"])
    for label, value in (("classes", "1"), ("seeds", "2"), ("steps", str(result.steps)),
                         ("target top-1", f"{100 * top1.mean():.0f}%"),
                         ("median P(class)", f"{np.median(p_after):.3f}")):
        assert f'<div class="value">{value}</div><div class="label">{label}</div>' in html
    row = ["star"] + [f"{np.mean(np.asarray(info[k], dtype=float)):,.4g}"
                      for k in ("score_before", "score_after", "prob_before", "prob_after")]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", html)
    assert any(cells[i:i + 5] == row for i in range(len(cells))), row


def test_report_of_a_model_from_a_weight_file_evaluates_on_the_data_given(tiny_run, tmp_path):
    weights = tmp_path / "model.safetensors"
    shutil.copy(tiny_run.dir / "weights.safetensors", weights)
    loaded = convlens.load_run(weights, arch=SPEC, input_shape=(3, 16, 16), class_names=tiny_run.class_names,
                               mean=tiny_run.mean.tolist(), std=tiny_run.std.tolist())
    html = report(loaded, tmp_path / "none").read_text()
    assert "Not available: data must be given (report(run, data=...), CLI --data)" in html
    test = datasets.load("shapes", split="test", size=16, n=40)
    html = report(loaded, tmp_path / "given", data=test).read_text()
    assert '<section id="evaluation"' in html and "Not available" not in html.split('id="evaluation"')[1][:300]
    assert f'<div class="value">{top1_error_text(loaded.pixel_model(), test.images, test.labels)}</div>' in html
    assert '<div class="value">40</div><div class="label">test images</div>' in html
    with pytest.raises(InputError, match="data must be a dataset name or path, or an ImageDataset"):
        report(loaded, tmp_path / "bad", data=[1, 2])
    with pytest.raises(InputError, match="run must be a Run or a run directory; got 'int'"):
        report(3)


def test_convlens_report_is_the_public_function():
    """Needs ``"report": "convlens.reporting"`` in convlens/__init__.py's _API."""
    import convlens.reporting.sections.training  # noqa: F401  importing the package must not hide the function

    assert convlens.report is report and callable(convlens.report)


def test_table_alignment_rules():
    cells = Table(["a", "b", "c", "d"], [[1234, "(32,768)", "conv1", "97.0%"]]).cells()[0]
    assert cells == [("1,234", True), ("(32,768)", True), ("conv1", False), ("97.0%", True)]


def test_report_command(tiny_run, tmp_path, capsys):
    from convlens.cli.app import main

    with pytest.raises(SystemExit) as info:
        main(["report", str(tiny_run.dir), "--out", str(tmp_path / "cli")])
        raise SystemExit(0)
    assert info.value.code == 0
    assert (tmp_path / "cli" / "report.html").is_file()
    assert "report:" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["report", str(tmp_path / "no-such-run")])
    assert info.value.code == 2 and "no-such-run" in capsys.readouterr().err


def test_report_command_evaluates_on_the_data_given(tiny_run, tmp_path, capsys):
    """``--data`` names an image folder (test/<class>/*.png): the report evaluates on its images."""
    from PIL import Image

    from convlens.cli.app import main

    shapes = datasets.load("shapes", split="test", size=16, n=30)
    for split in ("train", "test"):
        for i, (img, label) in enumerate(zip(shapes.images, shapes.labels.tolist())):
            folder = tmp_path / "folder" / split / shapes.class_names[label]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, C)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    with pytest.raises(SystemExit) as info:
        main(["report", str(tiny_run.dir), "--out", str(tmp_path / "cli"), "--data", str(tmp_path / "folder")])
        raise SystemExit(0)
    assert info.value.code == 0, capsys.readouterr()
    html = (tmp_path / "cli" / "report.html").read_text()
    test = datasets.load(tmp_path / "folder", split="test")
    names = test.class_names                                   # sorted folder names: map them to the run's classes
    labels = torch.tensor([tiny_run.class_names.index(names[k]) for k in test.labels.tolist()])
    assert '<div class="value">30</div><div class="label">test images</div>' in html
    assert f'<div class="value">{top1_error_text(tiny_run.pixel_model(), test.images, labels)}</div>' in html


def test_evaluation_figures_of_a_1000_class_model_show_the_classes_present():
    """An ImageNet model's report draws the classes that have test images or predictions, not 1,000 (whose
    confusion-matrix canvas alone would exhaust memory); few classes are drawn whole."""
    import numpy as np

    from convlens.reporting.sections.evaluation import _present

    names = [f"c{i}" for i in range(1000)]
    confusion = np.zeros((1000, 1000), dtype=int)
    confusion[3, 3], confusion[3, 917], confusion[500, 12] = 4, 1, 2   # true 3 and 500; predicted 3, 917, 12
    per_class = {n: None for n in names}
    per_class.update(c3=0.8, c500=0.0)
    d = {"class_names": names, "confusion": confusion.tolist(), "per_class": per_class}
    kept, matrix, shown, note = _present(d)
    assert shown == ["c3", "c12", "c500", "c917"] and "4 of 1000" in note
    assert np.asarray(matrix).sum() == confusion.sum() and kept == {"c3": 0.8, "c12": None, "c500": 0.0, "c917": None}
    small = {"class_names": names[:10], "confusion": confusion[:10, :10].tolist(), "per_class": {}}
    assert _present(small)[2] == names[:10] and _present(small)[3] == ""
