"""The CNN codes of the explorer's data (no routes here), for the code space map and an image's neighbours:
the cache ``convlens codes RUN [--data DIR]`` keeps in ``RUN/codes`` (its folder and freshness test,
read here, since the explorer may not import the CLI), loaded memory-mapped and kept while its files stay
the same, filled by a job when it lacks them; and the code of one image, read where the codes were.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..memo import file_stats


def _slug(s) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "_", str(s)).strip("_")[:60]


def code_folder(ex) -> tuple[str, str | None]:
    """(the cache folder relative to the run, the data the CLI names): where ``convlens codes RUN [--data
    DIR]`` keeps the codes of the classifier's input (``cli.codes_cmds.cache_dir``'s naming)."""
    data = ex.data_source
    return "codes/classifier-input-auto" + (f"-{_slug(data)}" if data else ""), data


def _fresh(ex, folder: str, data: str | None) -> bool:
    """Whether the cache folder holds codes of the run's weights and this data (``ResultStore.cache``'s
    test, read only: nothing is emptied here)."""
    from ...io import read_json
    from ...results.provenance import data_key

    path = Path(ex.dir) / folder
    record = path.parent / ".records" / f"{path.name}.json"
    if not record.is_file() or not (path / "codes.json").is_file():
        return False
    have = read_json(record)
    want = {"weights": ex.store.weights_key(), "data": data_key(ex.run.manifest.get("data"), {"data": data})}
    return all(have.get(k) == v for k, v in want.items())


def _load_codes(ex):
    """The cached codes of the data (memory-mapped), or None when the cache lacks them."""
    from ...codespace.codes import Codes
    from ...errors import ConvLensError

    folder, data = code_folder(ex)
    path = Path(ex.dir) / folder
    cache = ex.memo.lru("codes", 1)
    stats = file_stats(path / "codes.json") + file_stats(path / "features.json")
    found = cache.get(stats)
    if found is not None:
        return found
    if not _fresh(ex, folder, data):
        return None
    try:
        code = Codes.load(path, data=ex.data)
    except ConvLensError:
        return None
    if len(code) != len(ex.data.labels):
        return None
    return cache.put(stats, code)


def compute_codes(ex, progress=None):
    """The codes of the data as ``convlens codes`` makes them (its cache folder, emptied first when it holds
    codes of other weights or data); returns them loaded from the cache."""
    from ...codespace.codes import codes

    found = _load_codes(ex)
    if found is not None:
        return found
    folder, data = code_folder(ex)
    if progress is not None:
        progress(0.05, f"CNN codes of {len(ex.data.labels)} images")
    out = ex.store.cache(folder, data=data)
    with ex.lock:
        codes(ex.run, ex.data, None, pool=None, out=out, progress=False)
    return _load_codes(ex)


def codes_or_job(ex):
    """(the codes of the data, None) from the cache, or (None, the job computing them)."""
    found = _load_codes(ex)
    if found is not None:
        return found, None
    folder, _ = code_folder(ex)
    job = ex.jobs.submit(f"codes {folder}", "CNN codes of the data", lambda progress: compute_codes(ex, progress))
    if job.state == "done" and job.result is not None:
        return job.result, None
    return None, job


def code_of(ex, code, x) -> np.ndarray:
    """(1, D): the code of one image (C, H, W), read where ``code`` was (one forward under the lock)."""
    from ...codespace.codes import codes

    with ex.lock:
        return np.asarray(codes(ex.run, x[None], code.tapped, pool=code.pool, progress=False).vectors)
