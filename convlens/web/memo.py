"""What one explorer keeps in memory between requests (``ex.memo``, gone with the Explorer): caches of the
entries used last, by name (:meth:`Memo.lru`), and values made once (:meth:`Memo.once`). Thread-safe: pages
run on the server's thread pool. :func:`file_stats` stamps the files a value was read from, so that a value
is read again when they change."""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable


class LRU:
    """The ``size`` entries used last."""

    def __init__(self, size: int):
        self.size, self._items, self._lock = size, OrderedDict(), threading.Lock()

    def get(self, key: Hashable, default=None):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return default

    def put(self, key: Hashable, value):
        """Keep ``value`` under ``key`` (the entry used longest ago goes beyond ``size``); returns ``value``."""
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value

    def get_or_make(self, key: Hashable, make: Callable[[], Any]):
        """The value kept under ``key``, else ``make()``, kept (made outside the lock: two requests for a
        missing key may both make it)."""
        found = self.get(key)
        return found if found is not None else self.put(key, make())

    def get_or_make_locked(self, key: Hashable, make: Callable[[], Any], lock):
        """The value kept under ``key``, else ``make()`` under ``lock`` (the model lock), kept: one computation
        per key; a second request for it waits on the lock, then finds it."""
        found = self.get(key)
        if found is not None:
            return found
        with lock:
            found = self.get(key)
            return found if found is not None else self.put(key, make())

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class Memo:
    """The in-memory caches of one explorer, by name."""

    def __init__(self):
        self._lock = threading.Lock()
        self._lrus: dict[str, LRU] = {}
        self._values: dict[str, Any] = {}

    def lru(self, name: str, size: int) -> LRU:
        """The cache ``name`` (made with ``size`` entries on first use)."""
        with self._lock:
            found = self._lrus.get(name)
            if found is None:
                found = self._lrus[name] = LRU(size)
            return found

    def once(self, name: str, make: Callable[[], Any]):
        """The value ``name``: ``make()`` on first use (None included), then kept."""
        with self._lock:
            if name in self._values:
                return self._values[name]
        value = make()
        with self._lock:
            return self._values.setdefault(name, value)


def file_stats(path: Path) -> tuple:
    """(name, size, mtime) of ``path`` and of the ``.npz`` beside it, those that exist: what changes when a
    result is saved again."""
    out = []
    for p in (path, path.with_suffix(".npz")):
        try:
            st = p.stat()
        except OSError:
            continue
        out.append((p.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def version(stats: tuple) -> str:
    """A short id of ``stats`` (:func:`file_stats`), for URLs that must change when the files do (``?v=``)."""
    return hashlib.sha1(repr(stats).encode()).hexdigest()[:10]
