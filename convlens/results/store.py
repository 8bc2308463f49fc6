"""The results of one run directory, with a record of what produced each.

Layout::

    RUN/results/<name>.json (+ .npz, .png)          the default result of an analysis (what the report shows)
    RUN/results/<name>@<key>.json (+ .npz, .png)    the same analysis with other options, kept beside it
    RUN/results/.records/<stem>.json                what produced it: options, weights and data keys,
                                                    when, how long, and the size and time of its files

A result is *current* when its record matches its files and the run's weights and data still have the
keys it records; *stale* when the weights or data changed since (the report leaves it out); *unknown*
when no record matches its files (written by an older convlens, or by hand): shown, never trusted as
current. Every file is written atomically (convlens.io); the record last, so an interrupted save leaves
the previous result and its record, or a result whose record no longer matches (unknown).
"""
from __future__ import annotations

import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from ..errors import ConvLensError, InputError, expect
from ..io import atomic_write_bytes, atomic_write_json, read_json, read_npz
from .provenance import data_key, file_key, options_key
from .registry import ANALYSES, Analysis, analysis, imported

RECORDS = ".records"
CURRENT, STALE, UNKNOWN = "current", "stale", "unknown"


@dataclass(frozen=True)
class Entry:
    """One saved result. ``options``: those other than the defaults (``{}`` for the default result; None
    when unknown). ``why``: what made it stale or unknown."""

    name: str
    stem: str
    default: bool
    options: dict | None
    state: str
    why: str
    created: str
    seconds: float | None
    path: Path

    def to_dict(self) -> dict:
        return {"name": self.name, "stem": self.stem, "default": self.default, "options": self.options,
                "state": self.state, "why": self.why, "created": self.created, "seconds": self.seconds,
                "path": str(self.path)}


class Listing(list):
    """What a run has computed: a list of :class:`Entry` whose repr is the table."""

    def to_dict(self) -> list[dict]:
        return [e.to_dict() for e in self]

    def __repr__(self) -> str:
        if not self:
            return "no results yet"
        rows = [["result", "options", "state", "computed", "seconds"]]
        rows += [[e.stem, _options_text(e), e.state + (f" ({e.why})" if e.why else ""),
                  datetime.fromisoformat(e.created).astimezone().strftime("%Y-%m-%d %H:%M"),
                  "" if e.seconds is None else f"{e.seconds:.1f}"] for e in self]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        return "\n".join("  ".join(c.rjust(w) if i == 4 else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                         .rstrip() for row in rows)


def _options_text(e: Entry) -> str:
    if e.options is None:
        return "default" if e.default else "?"
    text = lambda v: ",".join(map(str, v)) if isinstance(v, list) else str(v)  # noqa: E731
    return " ".join(f"{k}={text(v)}" for k, v in e.options.items()) or "default"


class Saver:
    """Where one result goes: ``save(value)`` writes it in its registered format, ``figure(render)`` a
    PNG beside it. For a run without a directory, ``path`` is None and both do nothing."""

    def __init__(self, spec: Analysis, path: Path | None):
        self.spec, self.path, self.saved = spec, path, False

    def save(self, value) -> Path | None:
        if self.path is not None:
            imported(self.spec.save)(self.path, value)
            self.saved = True
        return self.path

    def figure(self, render: Callable[[], bytes], suffix: str = "") -> Path | None:
        """``<stem><suffix>.png`` from ``render()`` (PNG bytes; not called without a directory)."""
        if self.path is None:
            return None
        return atomic_write_bytes(self.path.with_name(f"{self.path.stem}{suffix}.png"), render())


class ResultStore:
    """The results folder of a run directory (see the module docstring); ``run``: a Run that has one, or its path.

    Results computed in Python go in with ``save``: ``ResultStore(run).save("class-model",
    convlens.class_model(run, "star"))``, and then show in ``convlens.report(run)``."""

    def __init__(self, run: str | Path):
        if not isinstance(run, (str, Path)):
            if not hasattr(run, "dir") or not hasattr(run, "manifest"):
                raise expect("run", "a Run or a run directory", type(run).__name__)
            if run.dir is None:
                raise InputError(f"run must have a run directory to keep results in; got a model loaded from "
                                 f"{run.path or 'memory'}")
            run = run.dir
        self.dir = Path(run)
        self.folder = self.dir / "results"
        self._read: tuple[int, dict] | None = None  # (run.json's modification time, its contents)

    @classmethod
    def of(cls, run) -> "ResultStore | None":
        """The store of a Run (None for a run loaded from a single file: it has no folder to keep results in)."""
        return None if getattr(run, "dir", None) is None else cls(run.dir)

    @property
    def _manifest(self) -> dict:
        """``run.json``, read again when it changes (a run trained further in the same folder)."""
        path = self.dir / "run.json"
        mtime = path.stat().st_mtime_ns if path.is_file() else 0
        if self._read is None or self._read[0] != mtime:
            self._read = (mtime, read_json(path) if mtime else {})
        return self._read[1]

    def weights_key(self) -> str | None:
        """The key of the run's weights file as it is now (None when it has none)."""
        return file_key(self.dir / (self._manifest.get("files") or {}).get("weights", "weights.safetensors"))

    def data_key(self, name: str, options: dict | None = None) -> str:
        """The key of the images ``name`` reads with ``options``, as the run's folder names them now."""
        spec = analysis(name)
        return data_key(self._manifest.get("data"), options or {}, default_data=spec.default_data)

    # ---- where a result lives ---------------------------------------------------------------------

    def path(self, name: str, options: dict | None = None) -> Path:
        """``RUN/results/<name>.json`` for the default options (``{}``/None), else ``<name>@<key>.json``."""
        spec, options = analysis(name), options or {}
        unknown = sorted(set(options) - set(spec.options))
        if unknown:
            raise expect(f"options of {name!r}", "among " + (", ".join(spec.options) or "none"), unknown)
        stem = name if spec.single or not options else f"{name}@{options_key(options)}"
        return self.folder / f"{stem}.json"

    @contextmanager
    def saving(self, name: str, options: dict | None = None) -> Iterator[Saver]:
        """A Saver for ``name`` with ``options``; times the block, and records what produced the result once
        the block ends without an error after ``saver.save``."""
        path, options = self.path(name, options), dict(options or {})
        saver = Saver(analysis(name), path)
        start = time.perf_counter()
        yield saver
        if saver.saved:
            self._record(name, path, options, time.perf_counter() - start)

    def save(self, name: str, result, *, options: dict | None = None) -> Path:
        """Put ``result``, computed in Python, into the store as the analysis ``name``; returns its JSON path.

        ``result``: what the analysis's function returns (``convlens.class_model(run, "star")`` for
        ``"class-model"``). ``options``: those it was computed with that differ from its command's
        defaults, named as the command names them (``{"classes": "star"}``); None saves it as the default
        result, the one the report shows. What it depends on (the run's weights and data, as they are now)
        is recorded as for a command's result; the time it took is not known (shown blank).
        """
        path, options = self.path(name, options), dict(options or {})
        try:
            imported(analysis(name).save)(path, result)
        except ConvLensError:
            raise
        except (AttributeError, TypeError, KeyError, ValueError) as err:
            raise InputError(f"result must be what {name!r} computes, to be saved in its format; got a "
                             f"{type(result).__name__} ({type(err).__name__}: {err})") from None
        self._record(name, path, options, None)
        return path

    def _record(self, name: str, path: Path, options: dict, seconds: float | None) -> None:
        from .. import __version__

        spec = analysis(name)
        atomic_write_json(self._record_path(path), {
            "name": name, "default": not options or spec.single, "options": options,
            "weights": self.weights_key() if spec.weights else None,
            "data": self.data_key(name, options) if spec.data else None,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "seconds": None if seconds is None else round(seconds, 3),
            "convlens": __version__, "files": _stats(path)})

    def _record_path(self, path: Path) -> Path:
        return path.parent / RECORDS / f"{path.stem}.json"

    # ---- what is there --------------------------------------------------------------------------

    def entry(self, name: str, options: dict | None = None) -> Entry | None:
        """The result saved for ``name`` with ``options`` (None when there is none)."""
        path = self.path(name, options)
        return self._entry(name, path) if path.is_file() else None

    def _entry(self, name: str, path: Path) -> Entry:
        spec = analysis(name)
        record_path = self._record_path(path)
        record = read_json(record_path) if record_path.is_file() else None
        default = spec.single or "@" not in path.stem
        if record is None or record.get("files") != _stats(path):
            when = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
            why = "no record of what made it" if record is None else "changed since it was recorded"
            return Entry(name, path.stem, default, None, UNKNOWN, why, when, None, path)
        options, why = record["options"], ""
        if spec.weights and record["weights"] != self.weights_key():
            why = "computed from other weights"
        elif spec.data and record["data"] != self.data_key(name, options):
            why = "computed on other data"
        return Entry(name, path.stem, default, options, STALE if why else CURRENT, why, record["created"],
                     record.get("seconds"), path)

    def listing(self) -> Listing:
        """Every result saved in this run, in registry order, the default one of each name first."""
        return Listing(e for name in ANALYSES for e in self._entries(name))

    def _entries(self, name: str) -> list[Entry]:
        found = [self._entry(name, p) for p in (self.folder / f"{name}.json", *self.folder.glob(f"{name}@*.json"))
                 if p.is_file()]
        return sorted(found, key=lambda e: (not e.default, e.created))

    def shown(self, name: str) -> Entry | None:
        """The result the report shows for ``name``: the default one unless it is stale, else the newest one
        of other options that is not stale; None when there is none."""
        found = [e for e in self._entries(analysis(name).name) if e.state != STALE]
        defaults = [e for e in found if e.default]
        return defaults[0] if defaults else max(found, key=lambda e: e.created, default=None)

    def result(self, name: str) -> dict | None:
        """The JSON of the result the report shows for ``name`` (None when there is none)."""
        e = self.shown(name)
        return None if e is None else read_json(e.path)

    def arrays(self, name: str) -> dict | None:
        """The arrays (``.npz``, never unpickled) of the result the report shows (None when there are none)."""
        e = self.shown(name)
        npz = None if e is None else e.path.with_suffix(".npz")
        return read_npz(npz) if npz is not None and npz.is_file() else None

    def load(self, name: str, options: dict | None = None):
        """The value saved for ``name`` with ``options`` (its result object), read in its registered format."""
        path = self.path(name, options)
        if not path.is_file():
            raise InputError(f"{path} must exist to be loaded: {name} was not computed with these options; "
                             f"got {options or 'the defaults'}")
        return imported(analysis(name).load)(path)

    # ---- caches of intermediate arrays (e.g. CNN codes) --------------------------------------------

    def cache(self, folder: str, *, data: str | None = None, force: bool = False) -> Path:
        """``RUN/<folder>``, a resumable cache kept while it is current: emptied first when it holds arrays
        of other weights or data, has no record (an older convlens made it), or ``force``."""
        path = self.dir / folder
        record_path = path.parent / RECORDS / f"{path.name}.json"
        want = {"weights": self.weights_key(), "data": data_key(self._manifest.get("data"), {"data": data})}
        have = read_json(record_path) if record_path.is_file() else {}
        if force or {k: have.get(k) for k in want} != want:
            if path.exists():
                shutil.rmtree(path)
            atomic_write_json(record_path, {**want, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        return path


def _stats(path: Path) -> dict:
    """Size and modification time of a result's .json and .npz: a record describes exactly these files."""
    out = {}
    for p in (path, path.with_suffix(".npz")):
        if p.is_file():
            st = p.stat()
            out[p.name] = [st.st_size, st.st_mtime_ns]
    return out


@contextmanager
def saving(run, name: str, options: dict | None = None) -> Iterator[Saver]:
    """``ResultStore.of(run).saving(name, options)``, or a Saver that saves nothing for a run without a directory."""
    store = ResultStore.of(run)
    if store is None:
        yield Saver(analysis(name), None)
        return
    with store.saving(name, options) as saver:
        yield saver
