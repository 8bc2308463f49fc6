"""`convlens describe` / `convlens zoo` and the CLI's error handling (message, no traceback, exit 2)."""
from __future__ import annotations

import pytest

from convlens.cli.app import main
from convlens.cli.options import parse_input_size


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def test_describe_prints_spec_and_lecture_names(capsys):
    code, out, _ = run(["describe", "vgg16"], capsys)
    assert code == 0
    assert out.splitlines()[0].startswith("CONV3-64,RELU,CONV3-64,RELU,POOL2,CONV3-128")
    assert "conv5_3" in out and "features.28" in out


def test_zoo_lists_models_with_param_counts(capsys):
    code, out, _ = run(["zoo", "alex*"], capsys)
    assert code == 0
    assert "60,965,224" in out and "61,100,840" in out and "vgg" not in out


@pytest.mark.parametrize("argv, fragment", [
    (["describe", "CONV3-8,PAOL"], "expected a layer"),
    (["describe", "vggg16"], "Did you mean"),
    (["describe", "vgg16", "--input", "16x16x3"], "cannot apply"),
    (["describe", "lenet", "--input", "axb"], "--input must look like HxWxC"),
])
def test_bad_input_prints_message_not_traceback(argv, fragment, capsys):
    code, _, err = run(argv, capsys)
    assert code == 2
    assert fragment in err and "Traceback" not in err


def test_parse_input_size():
    assert parse_input_size("224x224x3") == (3, 224, 224)
    assert parse_input_size("32x48x1") == (1, 32, 48)
    assert parse_input_size("64x64") == (3, 64, 64)
