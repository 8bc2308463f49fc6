"""Fixtures of the explorer's tests."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import DEMO_DIR


@pytest.fixture(scope="module")
def demo_copy(tmp_path_factory):
    """A private copy of ``runs/demo`` (weights and manifest, no results), shared by one test module."""
    if not os.path.isfile(os.path.join(DEMO_DIR, "weights.safetensors")):
        pytest.skip("runs/demo not built (`make demo`, or `make test`, which trains it)")
    dst = tmp_path_factory.mktemp("web") / "demo"
    shutil.copytree(DEMO_DIR, dst, ignore=shutil.ignore_patterns("results", "report", "ablation", "uploads"))
    return dst
