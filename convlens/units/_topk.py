"""The streaming machinery behind ``convlens.top_patches`` (see :mod:`convlens.units.patches`).

- ``reducer``: the capture transform: merges each batch into the running top-k inside the hook;
- ``RunningTopK``: one layer's running per-unit top-k, merged batch by batch on the model's device
  (per-channel maxima sorted, then the first argmax of the few maps that enter, no copy of a map);
- ``Progress``: the resumable state of one shard in ``out`` (``state.npz`` then ``progress.json``,
  each replaced atomically after every batch);
- ``layer_fields`` / ``boxes_for``: receptive-field boxes of the positions found;
- ``choose_layers`` / ``check_units``: the arguments;
- ``gather``: with ``torch.distributed`` running, every rank gets the merged whole.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..errors import DataError, InputError, ShapeError, expect
from ..layers import model_label
from ..io import atomic_write_json, atomic_write_npz, read_json, read_npz

FORMAT = "convlens-top-patches-progress"
MANIFEST = "manifest.json"
STATE = "state.npz"
PROGRESS = "progress.json"


def reducer(tap: str, calls: dict, consumers: list["RunningTopK"]):
    """The capture transform of module ``tap``: merges its output into each consumer's top-k inside the
    hook (no copy of the map) and returns True; ``calls`` counts its calls in the current forward."""
    def reduce(t: torch.Tensor) -> bool:
        calls[tap] = calls.get(tap, 0) + 1
        if calls[tap] > 1:
            raise InputError(f"layers must output one tensor, once per forward, for top_patches; got {tap!r}, which "
                             "runs again (shared weights) or outputs several tensors, so its units have no one "
                             "output to rank. Mine a layer that runs once (a shared module mined alone stops the "
                             "forward after its first call)")
        if t.ndim not in (2, 4):
            raise ShapeError(f"layer {consumers[0].name!r} outputs {tuple(t.shape)}; top_patches ranks (N, C, H, W) "
                             "feature maps or (N, D) vectors")
        for c in consumers:
            c.add(t)
        return True
    return reduce


class RunningTopK:
    """Per unit the k best (value, image, flat position) so far, best first; ties: lower image first.

    Batches arrive in image order, so a stable descending sort of [running; batch] keeps ties in
    image order: the running entries have lower indices than the batch's, which are ascending.
    Only the maxima take part in the sort (``amax``, fast); the first argmax is then found for the
    few (image, unit) pairs of the batch that enter the top-k. ``first`` is the batch's first image
    index (None: learn the layer's shape only).
    """

    def __init__(self, name: str, k: int, want: list[int] | None):
        self.name, self.k, self.want = name, k, want
        self.channels: int | None = None
        self.map_hw: tuple[int, int] = (1, 1)
        self.sel: torch.Tensor | None = None                                # (U,) channels, None: all
        self.values = self.images = self.flat = None                        # (U, m), m <= k
        self.first: int | None = None

    def setup(self, channels: int, hw: tuple[int, int], device) -> None:
        if self.channels is None:
            bad = [u for u in (self.want or []) if u >= channels]
            if bad:
                raise expect("units", f"channel indices of {self.name!r} (0-{channels - 1})", bad)
            self.channels, self.map_hw = channels, hw
            self.sel = None if self.want is None else torch.tensor(self.want, dtype=torch.int64, device=device)
        elif (channels, hw) != (self.channels, self.map_hw):
            raise ShapeError(f"layer {self.name!r} output changed from {self.channels} channels x {self.map_hw} to "
                             f"{channels} x {hw} between batches; images must share one size")

    def add(self, t: torch.Tensor) -> None:
        """Merge one batch's output (B, C, H, W) or (B, D) into the running top-k."""
        hw = (int(t.shape[2]), int(t.shape[3])) if t.ndim == 4 else (1, 1)
        self.setup(int(t.shape[1]), hw, t.device)
        if self.first is None:
            return
        if t.ndim == 4:
            v = t.flatten(2).amax(2) if t.is_contiguous() else t.amax(dim=(2, 3))  # (B, C)
        else:
            v = t
        if self.sel is not None:
            v = v[:, self.sel]                                              # (B, U)
        v = v.T                                                             # (U, B)
        if v.dtype in (torch.float16, torch.bfloat16):
            v = v.float()                                                   # exact
        if bool(torch.isnan(v).any()):
            u, b = (int(i) for i in torch.isnan(v).nonzero()[0])
            raise DataError(f"activations must be finite to be ranked; got NaN in layer {self.name!r}, unit "
                            f"{int(self.unit_array()[u])}, image {self.first + b}")
        m = 0 if self.values is None else self.values.shape[1]
        if m:
            v = torch.cat([self.values.to(v.dtype), v], 1)                  # (U, m + B)
        order = _top_order(v, self.k)                                       # (U, k') positions in [running; batch]
        new = order >= m                                                    # (U, k') entries from this batch
        images = order - m + self.first
        flat = torch.zeros_like(order)
        if m:
            old = order.clamp(max=m - 1)
            images = torch.where(new, images, self.images.gather(1, old))
            flat = torch.where(new, flat, self.flat.gather(1, old))
        if t.ndim == 4 and bool(new.any()):
            unit, slot = new.nonzero(as_tuple=True)                         # (q,), (q,)
            channel = unit if self.sel is None else self.sel[unit]
            rows = t[order[unit, slot] - m, channel]                        # (q, H, W) the maps that entered
            flat[unit, slot] = rows.flatten(1).argmax(dim=1)                # first maximal position
        self.values, self.images, self.flat = v.gather(1, order), images, flat

    def unit_array(self) -> np.ndarray:
        return np.asarray(self.want if self.want is not None else range(self.channels or 0), dtype=np.int64)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(values float64, image indices, flat positions), each (U, k), padded with NaN / -1 / -1."""
        u = len(self.unit_array())
        if self.values is None:
            self.values = torch.zeros(u, 0, dtype=torch.float64)
            self.images = self.flat = torch.zeros(u, 0, dtype=torch.int64)
        values = self.values.to("cpu", torch.float64).numpy()
        images, flat = self.images.cpu().numpy(), self.flat.cpu().numpy()
        bad = np.argwhere(np.isnan(values))
        if len(bad):
            r, c = bad[0]
            raise DataError(f"activations must be finite to be ranked; got NaN in layer {self.name!r}, unit "
                            f"{int(self.unit_array()[r])}, image {int(images[r, c])}")
        pad = self.k - values.shape[1]
        return (np.pad(values, ((0, 0), (0, pad)), constant_values=np.nan),
                np.pad(images, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64),
                np.pad(flat, ((0, 0), (0, pad)), constant_values=-1).astype(np.int64))

    # ---- resumable state -------------------------------------------------------------------------
    def state(self, i: int) -> dict[str, np.ndarray]:
        if self.values is None:
            return {}
        return {f"values_{i}": self.values.to("cpu", torch.float64).numpy(), f"images_{i}": self.images.cpu().numpy(),
                f"flat_{i}": self.flat.cpu().numpy(), f"dtype_{i}": np.array(str(self.values.dtype)),
                f"shape_{i}": np.array([self.channels, *self.map_hw], dtype=np.int64)}

    def restore(self, state: dict, i: int, device) -> None:
        if f"values_{i}" not in state:
            return
        channels, h, w = (int(v) for v in state[f"shape_{i}"])
        self.setup(channels, (h, w), device)
        dtype = getattr(torch, str(state[f"dtype_{i}"]).replace("torch.", ""))
        self.values = torch.as_tensor(state[f"values_{i}"]).to(device=device, dtype=dtype)  # exact: came from dtype
        self.images = torch.as_tensor(state[f"images_{i}"]).to(device)
        self.flat = torch.as_tensor(state[f"flat_{i}"]).to(device)


def _top_order(v: torch.Tensor, k: int) -> torch.Tensor:
    """(U, min(k, M)) column positions of the k largest of each row of ``v`` (U, M), by value descending,
    then position ascending. float32: one ``topk`` on a unique int64 key (the value's order-preserving
    bits, then the position reversed), several times faster than a stable sort; other dtypes: the sort."""
    k = min(k, v.shape[1])
    if v.dtype != torch.float32:
        return torch.sort(v, dim=1, descending=True, stable=True).indices[:, :k]
    bits = (v + 0.0).view(torch.int32).to(torch.int64)                     # + 0.0: -0.0 becomes +0.0
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)                  # signed order == float order
    pos = torch.arange(v.shape[1], device=v.device, dtype=torch.int64)
    return torch.topk((bits << 32) | (0xFFFFFFFF - pos), k, dim=1).indices


class Progress:
    """One shard's resumable state in ``folder`` (``manifest.json`` holds the arguments' key)."""

    def __init__(self, folder: Path, key: dict, names: list[str], rank: int, world_size: int, rows: int):
        from ..insight.features import _shard_dir

        folder.mkdir(parents=True, exist_ok=True)
        man = {"format": FORMAT, "version": 1, "key": key, "layers": list(names), "world_size": world_size}
        if (folder / MANIFEST).exists():
            old = read_json(folder / MANIFEST)
            if old.get("format") != FORMAT or old.get("key") != key or old.get("world_size") != world_size:
                raise InputError(f"out must be a new folder or one holding this same mining; got {str(folder)!r}, "
                                 "which holds other arguments (model weights, data, layers, units, k, batch size "
                                 "or world_size differ). Delete it or choose another folder")
        else:
            atomic_write_json(folder / MANIFEST, man)
        self.dir, self.rows, self.rows_done, self.state = _shard_dir(folder, rank, world_size), rows, 0, {}
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / STATE).exists():
            state = read_npz(self.dir / STATE)
            if int(state.get("rows", -1)) == rows:  # the state file is the truth; progress.json follows it
                self.state, self.rows_done = state, int(state["rows_done"])

    def restore(self, running: dict, device) -> None:
        for i, r in enumerate(running.values()):
            r.restore(self.state, i, device)

    def commit(self, rows_done: int, running: dict) -> None:
        arrays = {"rows": np.array(self.rows), "rows_done": np.array(rows_done)}
        for i, r in enumerate(running.values()):
            arrays.update(r.state(i))
        atomic_write_npz(self.dir / STATE, **arrays)
        atomic_write_json(self.dir / PROGRESS, {"rows": self.rows, "rows_done": rows_done})
        self.rows_done = rows_done


def choose_layers(model: nn.Module, layers) -> tuple[list[str], list[str]]:
    """(names shown, names read): every conv layer by default; a grammar net's conv names read after
    their BN/ReLU."""
    from ..arch.grammar import GrammarNet
    from ..insight.rewiring import layer_groups
    from ..layers import display_names, resolve
    from ..taps import _names, no_layer_error

    net = getattr(model, "net", model)
    groups = layer_groups(net) if isinstance(net, GrammarNet) else []
    if layers is None:
        if groups:
            convs = [g for g in groups if g.kind == "conv"]
            if convs:
                return [g.name for g in convs], [g.output for g in convs]
        shown = display_names(model)
        paths = [shown.get(p, p) for p, m in model.named_modules() if p and isinstance(m, nn.Conv2d)]
        if not paths:
            raise no_layer_error(model, "TorchScript has no forward hooks to mine its layers with",
                                 f"layers must be given: this {model_label(model)} has no nn.Conv2d layer to mine "
                                 "by default; got None")
        return paths, paths
    if isinstance(layers, str):
        layers = [n.strip() for n in layers.split(",") if n.strip()]
    names = _names(layers)
    for n in names:
        resolve(model, n)  # LayerNotFoundError with suggestions, before any work
    outputs = {g.name: g.output for g in groups}
    return names, [outputs.get(n, n) for n in names]


def check_units(units) -> list[int] | None:
    if units is None:
        return None
    items = [units] if isinstance(units, (int, np.integer)) and not isinstance(units, bool) else units
    try:
        items = list(items)
    except TypeError:
        raise expect("units", "None, a channel index or a list of channel indices", units) from None
    if not items or any(isinstance(u, bool) or not isinstance(u, (int, np.integer)) or u < 0 for u in items):
        raise expect("units", "None or a non-empty list of channel indices (ints >= 0)", units)
    return list(dict.fromkeys(int(u) for u in items))


def merge_topk(parts: Sequence[tuple[np.ndarray, ...]], k: int) -> tuple[np.ndarray, ...]:
    """Partial top-k lists -> one, by value descending then image index ascending; missing (-1) last.

    Each part is ``(values (U, k), indices (U, k), *payload (U, k, ...))``, padded where it has fewer
    than k images (index -1); returns the same, (U, k).
    """
    cols = [np.concatenate([p[j] for p in parts], axis=1) for j in range(len(parts[0]))]  # (U, k * parts)
    values, indices = cols[0], cols[1]
    missing = indices < 0
    order = np.lexsort((np.where(missing, 0, indices), np.where(missing, 0.0, -values), missing), axis=-1)[:, :k]
    return tuple(np.take_along_axis(c, order.reshape(order.shape + (1,) * (c.ndim - 2)), axis=1) for c in cols)


# ---- receptive-field boxes ----------------------------------------------------------------------------

def layer_fields(model, paths: list[str], input_size, map_hws: list[tuple[int, int]]):
    """Per path: (field dict or None, "analytic" or "probe", Geometry or None).

    The geometry comes from the meta-device trace of :mod:`convlens.arch.tracing` (op by op, so a
    residual block's output has one too), read by a hook on each layer's first call. It is used where
    it is known and agrees with the gradient probe at the centre unit.
    """
    from ..arch.receptive import receptive_field

    found = _traced_geometries(model, set(paths), input_size)
    out = {}
    for path, hw in zip(paths, map_hws):
        geo, shape = found.get(path, (None, None))
        geo = geo if shape is not None and tuple(shape[2:4] if len(shape) == 4 else (1, 1)) == tuple(hw) else None
        if geo is not None:
            centre = (hw[0] // 2, hw[1] // 2)
            if geo.box(*centre, input_size[1:]) != receptive_field(model, path, centre, input_size, method="probe"):
                geo = None
        field = None if geo is None else {"rf": [geo.h.rf, geo.w.rf], "jump": [geo.h.jump, geo.w.jump],
                                          "start": [geo.h.start, geo.w.start]}
        out[path] = (field, "analytic" if geo is not None else "probe", geo)
    return out


def _traced_geometries(model, paths: set, input_size) -> dict:
    """path -> (Geometry or None, output shape) of each module's first call in a meta trace; {} when the
    trace fails (every box then comes from the probe)."""
    from ..arch.tracing import geometry_of, trace

    found: dict = {}
    from ..layers import user_path

    named = ((p, m) for p, m in model.named_modules() if p)
    modules = {p: m for p, m in named if p in paths or user_path(model, p) in paths}  # either spelling

    def hook_for(path):
        def hook(module, args, output):
            if path not in found and isinstance(output, torch.Tensor):
                found[path] = found[user_path(model, path)] = (geometry_of(output), tuple(output.shape))
        return hook

    handles = [m.register_forward_hook(hook_for(p)) for p, m in modules.items()]
    try:
        trace(model, input_size)
    except Exception:  # noqa: BLE001  a model the meta trace cannot run
        return {}
    finally:
        for h in handles:
            h.remove()
    return found


def boxes_for(geo, model, path: str, positions: np.ndarray, indices: np.ndarray, input_size) -> np.ndarray:
    """(U, k, 4) int64 boxes of ``positions`` (U, k, 2); 0 where ``indices`` is -1."""
    from ..arch.geometry import receptive_boxes
    from ..arch.receptive import receptive_field

    boxes = np.zeros(indices.shape + (4,), dtype=np.int64)
    found = indices >= 0
    if not found.any():
        return boxes
    if geo is not None:
        pos = torch.from_numpy(np.where(found[..., None], positions, 0))
        boxes[found] = receptive_boxes(geo, pos[..., 0], pos[..., 1], input_size[1:]).numpy()[found]
        return boxes
    cache: dict[tuple[int, int], tuple[int, int, int, int]] = {}
    for u, j in zip(*np.nonzero(found)):
        key = (int(positions[u, j, 0]), int(positions[u, j, 1]))
        if key not in cache:
            b = receptive_field(model, path, key, input_size, method="probe")
            cache[key] = (b.top, b.left, b.bottom, b.right)
        boxes[u, j] = cache[key]
    return boxes


def gather(result, world_size: int):
    """The whole when torch.distributed runs ``world_size`` ranks; this shard otherwise."""
    from ..shards import gathered

    parts = gathered(result, world_size)
    return result if parts is None else type(result).merge(parts)
