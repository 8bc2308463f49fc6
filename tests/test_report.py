"""The HTML report: one self-contained page with every section, figures embedded and saved as PNGs."""
from __future__ import annotations

import base64
import re

import pytest

from convlens import datasets
from convlens.report import build_report
from convlens.report.blocks import Table
from convlens.training.fit import train


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data = datasets.load("shapes", split="train", size=16, n=120)
    test = datasets.load("shapes", split="test", size=16, n=60)
    out = tmp_path_factory.mktemp("run") / "tiny"
    return train("CONV3-8,RELU,POOL2,CONV3-8,RELU,POOL2,FC", data, test_data=test, out=out, epochs=1,
                 batch_size=20, progress=False)


def test_report_is_self_contained_with_all_sections(tiny_run, tmp_path):
    path = build_report(tiny_run, tmp_path / "report")
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
    from convlens.training.evaluate import evaluate, run_test_data

    ev = evaluate(tiny_run, run_test_data(tiny_run))
    html = build_report(tiny_run, tmp_path / "r").read_text()
    assert f"{100 * ev.top1_error:.2f}%" in html
    assert f"{sum(p.numel() for p in tiny_run.model.parameters()):,}" in html


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
