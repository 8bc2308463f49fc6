"""Atomic file writes: write a temporary file beside the target, fsync, then ``os.replace``.

A crash mid-write leaves the previous file (or none), never a half-written one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable where the platform allows opening a folder."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def atomic_write_npz(path: str | os.PathLike, **arrays) -> Path:
    """Numeric arrays into one ``.npz`` (uncompressed), atomically. Object arrays are refused, so
    reading back never needs pickle."""
    import io

    import numpy as np

    values = {k: np.asarray(v) for k, v in arrays.items()}
    for k, v in values.items():
        if v.dtype == object:
            raise TypeError(f"array {k!r} has dtype object; .npz results hold numeric or string arrays only")
    buf = io.BytesIO()
    np.savez(buf, **values)
    return atomic_write_bytes(path, buf.getvalue())


def read_npz(path: str | os.PathLike) -> dict:
    """Every array of an ``.npz`` file, loaded with ``allow_pickle=False`` (never unpickles code)."""
    import numpy as np

    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def write_json_npz(path: str | os.PathLike, meta: dict, **arrays) -> Path:
    """``path`` (its suffix dropped) as a pair: ``.npz`` (the arrays) first, then ``.json`` (``meta``), both
    atomic, so a JSON beside its arrays means both were written. Returns the JSON's path."""
    stem = Path(path).with_suffix("")
    atomic_write_npz(stem.parent / f"{stem.name}.npz", **arrays)
    return atomic_write_json(stem.parent / f"{stem.name}.json", meta)


def read_json_npz(path: str | os.PathLike) -> tuple[Any, dict]:
    """(the JSON, the arrays) of a pair written by :func:`write_json_npz`."""
    stem = Path(path).with_suffix("")
    return read_json(stem.parent / f"{stem.name}.json"), read_npz(stem.parent / f"{stem.name}.npz")


# ---- tensors: safetensors files (never pickle) ---------------------------------------------------

def save_tensors(path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None):
    """Atomically write tensors (copied to CPU, contiguous) to a safetensors file."""
    from safetensors.torch import save as st_save

    flat = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(flat, metadata=metadata))


def load_tensors(path: str | os.PathLike, *, what: str) -> tuple[dict, dict[str, str]]:
    """(tensors on CPU, header metadata) of a safetensors file, or RunError naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    from .errors import RunError

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise RunError(f"{path}: no such file; expected {what}") from None
    try:
        tensors = st_load(data)
        header_len = int.from_bytes(data[:8], "little")
        metadata = json.loads(data[8:8 + header_len]).get("__metadata__", {}) or {}
    except (SafetensorError, ValueError, json.JSONDecodeError) as err:
        raise RunError(f"{path}: not a readable safetensors file ({err}); expected {what}") from None
    return tensors, metadata
