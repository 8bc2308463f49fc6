"""Dataset-wide feature extraction: ``features(model, data, layers) -> Features``.

One (N, D) float32 array per layer, streamed in batches under ``torch.no_grad()`` in eval mode
(modes restored after), with a tqdm progress bar and memory bounded by one batch plus the result.
Outputs (N, C, *S) are pooled per channel inside the capture hook (no full map is copied):
``pool="max"``/``"avg"`` give D = C, ``"flat"`` keeps all (D = C * prod(S)); (N, D) outputs stay as
they are. The forward stops after the last requested layer (``capture(stop_at_last=True)``).
``data``: an ImageDataset (lazy folders read batch by batch), an (N, C, H, W) tensor or an
``(images, labels)`` pair; ``preprocess`` (e.g. ``run.preprocess``) maps each batch, already on the
model's device and dtype. (This module is not ``convlens/features.py``: importing a submodule of
that name would shadow the flat ``convlens.features`` function.)

**Exactness.** Every image meets the same batch (same neighbours, same batch size) as in one
uninterrupted process, so sharded and resumed results are bitwise identical to it (another batch
size may round differently, by ~1e-7).

**Resume.** With ``out=`` a folder, arrays are ``.npy`` memmaps there; after each batch the rows
are flushed and ``progress.json`` is replaced atomically, so a later call with the same arguments
(model weights, data, layers, pool, batch size, world size) skips the rows already done; other
arguments on the same folder raise InputError rather than mixing. A complete folder of the same arguments made
by another number of processes (``world_size``) is read back as it is.

**Sharding.** With ``rank``/``world_size`` each process takes a contiguous run of whole batches
(``shard_bounds``) and returns (with ``out``: writes) only that shard; ``Features.merge(parts)`` or
``Features.load(out)`` assembles the shards in index order. When ``torch.distributed`` is
initialized with that world size, every rank returns the whole (a barrier and ``Features.load``
with ``out``, ``all_gather_object`` without).

Layout of ``out``: ``features.json`` (arguments, layers, N) and ``shard-RRRRR-of-WWWWW/`` holding
``progress.json`` (rows done, dims), ``indices.npy``, ``labels.npy`` and ``layer-III.npy`` per layer.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DataError, InputError, expect
from ..io import atomic_write_json, read_json
from ..inputs import as_images, forward_errors
from ..shards import gathered, shard_bounds
from ..taps import BatchSource, _names, capture, eval_mode, model_device

POOLS = ("max", "avg", "flat")
FORMAT = "convlens-features"
MANIFEST = "features.json"
PROGRESS = "progress.json"

__all__ = ["features", "Features", "POOLS", "shard_bounds"]


@dataclass(eq=False)
class Features:
    """Per-layer (N, D) float32 arrays over the same N samples.

    ``indices`` (N,) are the rows of the source data; ``labels`` (N,) int64 or None; ``shapes``
    the per-sample output shape of each layer before pooling; ``paths`` each name's module path.
    """

    arrays: dict[str, np.ndarray]
    indices: np.ndarray
    labels: np.ndarray | None = None
    pool: str = "max"
    paths: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    class_names: list[str] | None = None

    @property
    def layers(self) -> list[str]:
        return list(self.arrays)

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            raise KeyError(f"{name!r} is not among these features; layers: {', '.join(self.arrays)}")
        return self.arrays[name]

    def __contains__(self, name) -> bool:
        return name in self.arrays

    def __len__(self) -> int:
        return len(self.indices)

    def __repr__(self) -> str:
        lines = [f"Features({len(self)} samples, pool={self.pool!r})"]
        for name, arr in self.arrays.items():
            shape = self.shapes.get(name)
            lines.append(f"  {name:<16} ({arr.shape[0]}, {arr.shape[1]})"
                         + (f"  from {tuple(shape)}" if shape is not None else ""))
        return "\n".join(lines)

    def to_dict(self) -> dict:
        """Everything but the arrays (their shapes instead): a JSON-able description."""
        return {"samples": len(self), "pool": self.pool, "class_names": self.class_names,
                "layers": {n: {"path": self.paths.get(n, n), "dims": int(a.shape[1]),
                               "shape": list(self.shapes.get(n, ()))} for n, a in self.arrays.items()}}

    def plot(self, layer: str | None = None, *, max_samples: int = 200, ax=None):
        """The (samples x units) activation matrix of one layer (default: the last), sorted by label."""
        from ..plots.health import plot_activation_matrix

        name = layer or self.layers[-1]
        arr = self[name]
        order = np.argsort(self.labels, kind="stable") if self.labels is not None else np.arange(len(arr))
        order = order[np.linspace(0, len(order) - 1, min(max_samples, len(order))).astype(int)] if len(order) else order
        return plot_activation_matrix(np.asarray(arr[order]), title=f"{name} ({self.pool}-pooled)", ax=ax)

    # ---- persistence -----------------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write the same folder layout ``features(out=...)`` writes (one complete shard)."""
        folder = Path(path)
        _write_manifest(folder, key=None, names=self.layers, paths=self.paths, pool=self.pool, n=len(self),
                        world_size=1, class_names=self.class_names, has_labels=self.labels is not None)
        store = _Store(folder, self.layers, len(self), 0, 1, fresh=True)
        store.begin(np.asarray(self.indices, dtype=np.int64), _labels_or_empty(self.labels, len(self)))
        store.write(0, len(self), [np.asarray(a, dtype=np.float32) for a in self.arrays.values()], self.shapes)
        store.result(self.pool, self.paths, self.class_names, self.labels is not None)  # an empty one: files too
        return folder

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> "Features":
        """Read a folder written by ``save`` or ``features(out=...)``, assembling every shard in order.

        Raises DataError when a shard is missing or incomplete. With one shard and ``mmap=True`` the
        arrays stay memory-mapped (read-only).
        """
        folder = Path(path)
        if not (folder / MANIFEST).exists():
            raise DataError(f"{folder}: no {MANIFEST}; expected a folder written by convlens.features")
        man = read_json(folder / MANIFEST)
        if man.get("format") != FORMAT:
            raise DataError(f"{folder / MANIFEST}: format must be {FORMAT!r}; got {man.get('format')!r}")
        parts = []
        for r in range(int(man["world_size"])):
            shard = _shard_dir(folder, r, man["world_size"])
            prog = read_json(shard / PROGRESS) if (shard / PROGRESS).exists() else {"rows_done": 0, "rows": "?"}
            if prog["rows_done"] != prog["rows"]:
                raise DataError(f"{shard}: shard {r} of {man['world_size']} is incomplete ({prog['rows_done']} of "
                                f"{prog['rows']} rows); run features(..., rank={r}) with the same out to finish it")
            mode = "r" if mmap and man["world_size"] == 1 else None
            labels = np.load(shard / "labels.npy") if man.get("has_labels", True) else None
            arrays = {n: np.load(shard / _layer_file(i), mmap_mode=mode) for i, n in enumerate(man["layers"])}
            shapes = {n: tuple(s) for n, s in zip(man["layers"], prog["shapes"])}
            parts.append(cls(arrays, np.load(shard / "indices.npy"), labels, man["pool"], dict(man["paths"]),
                             shapes, man.get("class_names")))
        return parts[0] if len(parts) == 1 else cls.merge(parts)

    @classmethod
    def merge(cls, parts: Sequence["Features"]) -> "Features":
        """Shards (any order) -> one Features in index order; layers and pooling must agree."""
        parts = [p for p in parts if len(p)] or list(parts[:1])
        if not parts:
            raise expect("parts", "a non-empty list of Features", parts)
        first = parts[0]
        for p in parts[1:]:
            if p.layers != first.layers or p.pool != first.pool:
                raise expect("parts", f"shards of the same layers and pool ({first.layers}, {first.pool!r})",
                             f"{p.layers}, {p.pool!r}")
        indices = np.concatenate([p.indices for p in parts])
        order = np.argsort(indices, kind="stable")
        labels = None if any(p.labels is None for p in parts) else np.concatenate([p.labels for p in parts])[order]
        arrays = {n: np.concatenate([np.asarray(p.arrays[n]) for p in parts])[order] for n in first.layers}
        return cls(arrays, indices[order], labels, first.pool, dict(first.paths), dict(first.shapes),
                   first.class_names)


# ---- extraction ----------------------------------------------------------------------------------

def features(model: nn.Module, data, layers: str | Sequence[str], *, pool: str = "max", batch_size: int = 128,
             preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
             out: str | os.PathLike | None = None, rank: int = 0, world_size: int = 1) -> Features:
    """Features of ``layers`` over every image of ``data`` (see the module docstring)."""
    if pool not in POOLS:
        raise expect("pool", "one of " + ", ".join(repr(p) for p in POOLS), pool)
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise expect("batch_size", "a positive int", batch_size)
    if not isinstance(world_size, int) or world_size < 1:
        raise expect("world_size", "a positive int", world_size)
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise expect("rank", f"an int in [0, {world_size - 1}]", rank)
    names = _names(layers)
    src = BatchSource(data)
    lo, hi = shard_bounds(src.n, batch_size, rank, world_size)
    rows = hi - lo
    device, dtype = model_device(model)
    shapes: dict[str, tuple[int, ...]] = {}
    tap = capture(model, names, stop_at_last=True,  # resolves the names before anything else
                  transform={n: _pooler(pool, n, shapes) for n in names})
    paths = dict(tap.acts.paths)
    if out is not None:
        key = {"layers": [paths[n] for n in names], "pool": pool, "n": src.n, "batch_size": batch_size,
               "model": _model_key(model),
               "data": src.key(), "preprocess": _callable_name(preprocess)}
        done = _done_by_others(Path(out), key, names, world_size)
        if done is not None:
            return done
    store = _Store(Path(out), names, rows, rank, world_size) if out is not None else _Memory(names, rows)
    if out is not None:
        _write_manifest(Path(out), key=key, names=names, paths=paths, pool=pool, n=src.n, world_size=world_size,
                        class_names=src.class_names, has_labels=src.labels is not None)
    store.begin(np.arange(lo, hi, dtype=np.int64), _labels_or_empty(src.labels[lo:hi] if src.labels is not None
                                                                    else None, rows))
    start = store.rows_done
    from tqdm.auto import tqdm

    with eval_mode(model), torch.no_grad(), tap as acts, \
            tqdm(total=rows, initial=start, disable=not progress, desc="features", unit="img", leave=False) as bar:
        for b0 in range(start, rows, batch_size):
            b1 = min(b0 + batch_size, rows)
            x = src.batch(lo + b0, lo + b1).to(device=device, dtype=dtype)  # (B, C, H, W)
            if preprocess is not None:
                x = preprocess(x)
            if b0 == start:
                as_images(x, model, name="data")  # the one image check, on the first batch the model takes
            with forward_errors(model, x):
                acts.forward(x)
            store.write(b0, b1, [_numpy(acts, n) for n in names], shapes)
            bar.update(b1 - b0)
    result = store.result(pool, paths, src.class_names, src.labels is not None)
    return _gather(result, out, world_size)


def _pooler(pool: str, name: str, shapes: dict):
    def pooled(t: torch.Tensor) -> torch.Tensor:  # (N, C, *S) -> (N, D) float32, always a copy
        shapes[name] = tuple(t.shape[1:])
        if t.ndim > 2 and pool == "max":
            return t.amax(dim=tuple(range(2, t.ndim))).float()  # (N, C)
        if t.ndim > 2 and pool == "avg":
            return t.mean(dim=tuple(range(2, t.ndim)), dtype=torch.float32)  # (N, C)
        return t.reshape(len(t), -1).to(torch.float32, copy=True)  # (N, C*prod(S)) or (N, D)
    return pooled


def _numpy(acts, name: str) -> np.ndarray:
    if name not in acts:
        raise InputError(f"layer {name!r} ({acts.paths[name]}) must run during the model's forward; "
                         "got a forward that never called it")
    value = acts[name]
    if not isinstance(value, torch.Tensor):
        raise InputError(f"layer {name!r} must output a tensor to be pooled; got {type(value).__name__}")
    return value.cpu().numpy()  # (B, D)


def _model_key(model: nn.Module) -> str:
    """A cheap fingerprint of the weights: per tensor, name, shape, sum and a strided sample."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        if t.numel():
            flat = t.reshape(-1)
            h.update(np.float64(flat.double().sum().item() if t.numel() < 1 << 20 else flat.sum().item()).tobytes())
            h.update(flat[:: max(1, flat.numel() // 2048)].cpu().double().numpy().tobytes())
    return h.hexdigest()[:16]


def _callable_name(fn) -> str | None:
    if fn is None:
        return None
    return f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"


def _labels_or_empty(labels, n: int) -> np.ndarray:
    return np.asarray(labels, dtype=np.int64) if labels is not None else np.zeros(0, dtype=np.int64)


def _done_by_others(folder: Path, key: dict, names: list[str], world_size: int) -> Features | None:
    """The whole of a complete extraction of these same arguments in ``folder`` made by another number of
    processes (a cache filled under torchrun, read by one process, or the other way round); None when
    there is none (an incomplete one of another world size is refused by ``_write_manifest``)."""
    path = folder / MANIFEST
    if not path.exists():
        return None
    man = read_json(path)
    if man.get("key") != key or man.get("layers") != list(names) or man.get("world_size") == world_size:
        return None
    try:
        return Features.load(folder)
    except DataError:
        return None


def _gather(result: Features, out, world_size: int) -> Features:
    """The whole when torch.distributed runs ``world_size`` ranks; this shard otherwise."""
    dist = torch.distributed
    if world_size == 1 or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() != world_size:
        return result
    if out is not None:
        dist.barrier()
        return Features.load(out)
    return Features.merge(gathered(result, world_size))


# ---- stores: in memory, or resumable on disk ------------------------------------------------------

class _Memory:
    def __init__(self, names, rows):
        self.names, self.rows, self.rows_done, self.arrays, self.shapes = names, rows, 0, None, {}

    def begin(self, indices, labels):
        self.indices, self.labels = indices, labels

    def write(self, b0, b1, values, shapes):
        if self.arrays is None:
            self.arrays = {n: np.empty((self.rows, v.shape[1]), np.float32) for n, v in zip(self.names, values)}
            self.shapes = {n: tuple(shapes.get(n, ())) for n in self.names}
        for n, v in zip(self.names, values):
            self.arrays[n][b0:b1] = v

    def result(self, pool, paths, class_names, has_labels) -> Features:
        arrays = self.arrays or {n: np.zeros((0, 0), np.float32) for n in self.names}
        return Features(arrays, self.indices, self.labels if has_labels else None, pool, paths, self.shapes,
                        class_names)


class _Store(_Memory):
    """Memmapped shard files; ``progress.json`` is replaced atomically after each flushed batch."""

    def __init__(self, folder: Path, names, rows, rank, world_size, *, fresh: bool = False):
        super().__init__(names, rows)
        self.folder, self.dir = folder, _shard_dir(folder, rank, world_size)
        self.dir.mkdir(parents=True, exist_ok=True)
        prog = read_json(self.dir / PROGRESS) if (self.dir / PROGRESS).exists() and not fresh else {}
        if prog.get("rows") != rows or not prog.get("dims"):
            prog = {}
        self.dims, self.rows_done = prog.get("dims"), int(prog.get("rows_done", 0))
        self.shapes = {n: tuple(s) for n, s in zip(names, prog.get("shapes", []))}
        if self.rows_done:
            self.arrays = {n: np.load(self.dir / _layer_file(i), mmap_mode="r+") for i, n in enumerate(names)}
            if any(a.shape != (rows, d) for a, d in zip(self.arrays.values(), self.dims)):
                self.arrays, self.rows_done = None, 0

    def begin(self, indices, labels):
        super().begin(indices, labels)
        if not self.rows_done:
            _save_npy(self.dir / "indices.npy", indices)
            _save_npy(self.dir / "labels.npy", labels)
        self._commit()

    def write(self, b0, b1, values, shapes):
        if self.arrays is None:
            self.dims = [int(v.shape[1]) for v in values]
            self.shapes = {n: tuple(shapes.get(n, ())) for n in self.names}
            self.arrays = {n: np.lib.format.open_memmap(self.dir / _layer_file(i), mode="w+", dtype=np.float32,
                                                        shape=(self.rows, d))
                           for i, (n, d) in enumerate(zip(self.names, self.dims))}
        for n, v in zip(self.names, values):
            self.arrays[n][b0:b1] = v
        for a in self.arrays.values():
            a.flush()
        self.rows_done = b1
        self._commit()

    def _commit(self):
        atomic_write_json(self.dir / PROGRESS, {"rows": self.rows, "rows_done": self.rows_done, "dims": self.dims,
                                                "shapes": [list(self.shapes.get(n, ())) for n in self.names]})

    def result(self, pool, paths, class_names, has_labels) -> Features:
        if self.arrays is None:  # an empty shard (fewer images than ranks)
            self.dims = [0] * len(self.names)
            self.arrays = {n: np.zeros((0, 0), np.float32) for n in self.names}
            for i, a in enumerate(self.arrays.values()):
                _save_npy(self.dir / _layer_file(i), a)
            self._commit()
        return super().result(pool, paths, class_names, has_labels)


def _shard_dir(folder: Path, rank: int, world_size: int) -> Path:
    return Path(folder) / f"shard-{rank:05d}-of-{int(world_size):05d}"


def _layer_file(i: int) -> str:
    return f"layer-{i:03d}.npy"


def _save_npy(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, arr)
    os.replace(tmp, path)


def _write_manifest(folder: Path, *, key, names, paths, pool, n, world_size, class_names, has_labels=True) -> None:
    man = {"format": FORMAT, "version": 1, "key": key, "layers": list(names), "paths": dict(paths), "pool": pool,
           "n": int(n), "world_size": int(world_size), "class_names": class_names, "has_labels": bool(has_labels)}
    path = Path(folder) / MANIFEST
    if key is not None and path.exists():
        old = read_json(path)
        if old.get("key") != key or old.get("world_size") != world_size or old.get("layers") != man["layers"]:
            raise InputError(f"out must be a new folder or one holding these same features; got {str(folder)!r}, "
                             "which holds features of other arguments (model weights, data, layers, pool or "
                             "world_size differ). Delete it or choose another folder")
        return
    atomic_write_json(path, man)
