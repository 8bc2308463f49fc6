"""What produced a result, in three short keys: the weights, the data, the options.

* weights: the sha256 of the run's ``weights.safetensors`` (16 hex digits), remembered per process by
  the file's size and modification time, so a listing hashes each weights file once;
* data: the sha256 of what names the images read: the run's own data (``run.json``'s ``data``: load
  specs, sizes, class names) unless the ``data`` option names another set, plus the contents of an
  ``image`` file when one was given. A folder of images edited in place keeps its key;
* options: the sha256 of the options as canonical JSON (8 hex digits), the ``@KEY`` of a result kept
  beside the default one.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

_FILE_KEYS: dict[tuple[str, int, int], str] = {}


def canonical(obj: Any) -> str:
    """One JSON text per value: sorted keys, no spaces, tuples as lists, paths as strings."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def digest(text: str | bytes, n: int = 16) -> str:
    return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()[:n]


def options_key(options: dict) -> str:
    return digest(canonical(options), 8)


def file_key(path: str | os.PathLike) -> str | None:
    """sha256 of a file's contents (16 hex digits), None when it is gone; remembered while its size and
    modification time stay the same."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    memo = (str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _FILE_KEYS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _FILE_KEYS[memo] = h.hexdigest()[:16]
    return _FILE_KEYS[memo]


def data_key(run_data: dict | None, options: dict, *, default_data: str | None = None) -> str:
    """The key of the images a result read: ``options["data"]`` (a data set name or path) or else
    ``default_data`` or else the run's own ``run_data``; with the contents of ``options["image"]``."""
    source = options.get("data") or default_data
    named = {"data": source if source is not None else run_data}
    if options.get("image"):
        named["image"] = file_key(options["image"])
    return digest(canonical(named))
