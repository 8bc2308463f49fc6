"""Top-k patches: for every unit of a layer, the dataset images that excite it most, and where.

The lecture's "Top-9 patches" (Zeiler & Fergus, "Visualizing and Understanding Convolutional
Networks", ECCV 2014, Fig. 2, https://arxiv.org/abs/1311.2901: "the top 9 activations in a random
subset of feature maps across the validation data", shown as the image patches that caused them)
and R-CNN's "top regions" (Girshick et al., "Rich feature hierarchies for accurate object detection
and semantic segmentation", CVPR 2014, Fig. 4, https://arxiv.org/abs/1311.2524: the receptive field
and activation value drawn on the image).

**What is ranked.** A unit is one channel ``u`` of the layer's output ``A`` (N, C, H, W). Each image
counts once per unit, at its maximal position: ``a[n, u] = max_(i, j) A[n, u, i, j]``, at the first
position in row-major order that attains it. Per unit the k images with the largest ``a`` are kept,
ties broken by the lower image index. An (N, D) output (a fc layer) is ranked the same way with
position (0, 0). The box is the unit's receptive field on the input (half-open, clipped to the
image, :func:`convlens.arch.geometry.receptive_boxes`): from the op-by-op geometry of a meta-device
trace (as ``convlens.summary`` computes it, non-leaf modules such as residual blocks included),
checked against the gradient probe of :func:`convlens.receptive_field` at the centre unit; where
the geometry is unknown or disagrees, from the probe at every position used (``box_method``).
A NaN activation raises DataError; a layer that runs twice per forward (shared weights) raises
InputError, except when mined alone (the forward stops after its first call).

**Which tensor.** ``layers`` default to every conv layer. A grammar network's conv names (``conv3``)
stand for the layer's rectified output (after its BN and ReLU, as in ``convlens.probe``): the
feature maps Zeiler & Fergus rank. Any other name or module path is read as that module outputs.
``paths`` says which module was read.

**Streaming.** One pass over the data in batches under ``torch.no_grad()`` in eval mode (modes
restored after), every layer at once; the forward stops after the last of them. Inside the capture
hook, without copying the map, each batch is merged into a running per-unit top-k: the per-channel
maxima are ranked together with the running entries (value descending, image index ascending), and
the first argmax is found only for the few maps that enter. Memory is O(units x k) per layer
plus one batch. Resume (``out=``), sharding (``rank``/``world_size``, with
``torch.distributed`` every rank returns the whole) and exactness follow ``convlens.features``:
every image meets the same batch as in one uninterrupted process, and partial top-k lists are merged
by the same rule (value descending, image index ascending), on the values at the model's own
precision, so the result is identical to one process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..errors import DataError, InputError, expect
from ..layers import model_label
from ..inputs import as_images, forward_errors

__all__ = ["top_patches", "TopPatches"]

SCHEMA = "convlens.top-patches/1"


@dataclass(eq=False, repr=False)
class TopPatches:
    """Per layer and unit, the k strongest images: ``values[layer]`` (U, k) float32 (NaN where fewer
    than k images), ``indices`` (U, k) int64 rows of the data (-1 where none), ``positions``
    (U, k, 2) int64 (row, col) in the feature map, ``boxes`` (U, k, 4) int64 ``[top, left, bottom,
    right]`` receptive-field boxes on the input, half-open and clipped to the image (0 where none),
    ``units`` (U,) int64 channel indices. ``paths``: the module read per layer; ``map_hw`` its
    feature-map size ((1, 1) for fc); ``fields``: its receptive field ``{"rf", "jump", "start"}``
    (per axis, pixels) or None; ``box_method``: "analytic" or "probe". ``exact_values`` (U, k)
    float64 are the activations at the model's precision, which order :meth:`merge` exactly.
    """

    layers: list[str]
    k: int
    values: dict[str, np.ndarray]
    indices: dict[str, np.ndarray]
    positions: dict[str, np.ndarray]
    boxes: dict[str, np.ndarray]
    units: dict[str, np.ndarray]
    paths: dict[str, str]
    image_hw: tuple[int, int]
    map_hw: dict[str, tuple[int, int]] = field(default_factory=dict)
    fields: dict[str, dict | None] = field(default_factory=dict)
    box_method: dict[str, str] = field(default_factory=dict)
    exact_values: dict[str, np.ndarray] = field(default_factory=dict)
    n_images: int = 0            # images in the data
    rows_mined: int = 0          # images ranked (fewer in one shard)
    model: str = ""
    data: str = ""               # what the data was (its source)
    data_key: str = ""           # a fingerprint of the data (BatchSource.key), checked by crops()
    data_spec: dict | None = None  # datasets.load(**data_spec) rebuilds the data, when known
    world_size: int = 1          # processes whose shards made it (merged)

    # ---- lookup ----------------------------------------------------------------------------------
    def row(self, layer: str, unit: int) -> int:
        """The row of channel ``unit`` in this layer's arrays."""
        if layer not in self.units:
            raise expect("layer", "one of the mined layers " + ", ".join(map(repr, self.layers)), layer)
        hit = np.flatnonzero(self.units[layer] == unit) if isinstance(unit, (int, np.integer)) else []
        if isinstance(unit, bool) or not len(hit):
            shown = self.units[layer]
            listing = f"0-{len(shown) - 1}" if np.array_equal(shown, np.arange(len(shown))) else \
                ", ".join(map(str, shown[:20])) + (" …" if len(shown) > 20 else "")
            raise expect("unit", f"a mined channel of {layer} ({listing})", unit)
        return int(hit[0])

    def top(self, layer: str, unit: int) -> list[dict]:
        """The found entries of one unit, best first: dicts of image, value, position, box."""
        r = self.row(layer, unit)
        keep = self.indices[layer][r] >= 0
        return [{"image": int(i), "value": float(v), "position": tuple(map(int, p)), "box": tuple(map(int, b))}
                for i, v, p, b in zip(self.indices[layer][r][keep], self.values[layer][r][keep],
                                      self.positions[layer][r][keep], self.boxes[layer][r][keep])]

    # ---- images ----------------------------------------------------------------------------------
    def source(self, data):
        """A ``BatchSource`` over ``data``, refused (DataError) unless it is the data these were mined on."""
        from ..taps import BatchSource

        src = BatchSource(data)
        if src.n != self.n_images or (self.data_key and src.key() != self.data_key):
            raise DataError(f"data must be the images these patches were mined on ({self.data or 'data'}, "
                            f"{self.n_images} images); got other data ({src.n} images)")
        return src

    def crops(self, layer: str, unit: int, data, *, pad: bool = False, fill: float = 0.5) -> list[torch.Tensor]:
        """The receptive-field crops (C, h, w) of one unit's top images from ``data``, best first.

        A crop is the box: smaller than the receptive field where the field runs off the image.
        ``pad=True`` places it in a canvas of the full field size (``fields[layer]["rf"]``), filled
        with ``fill`` where the field lies outside the image (or outside what the layer sees), so that
        every crop of a layer has one size and shows where the field sits; along an axis where the field
        is larger than the image (deep layers of an ImageNet net: 851 px on a 224 image) the canvas is the
        image's extent instead, the crop at its place in the image. Without known geometry
        (``fields[layer]`` None) crops stay unpadded.
        """
        r = self.row(layer, unit)
        src = self.source(data)
        keep = self.indices[layer][r] >= 0
        images = src.take(self.indices[layer][r][keep])                    # (m, C, H, W)
        out = []
        for img, box, pos in zip(images, self.boxes[layer][r][keep], self.positions[layer][r][keep]):
            t, l, b, rr = box
            crop = img[:, t:b, l:rr]                                        # (C, h, w)
            if pad and self.fields.get(layer) is not None:
                crop = self.padded(layer, crop, box, pos, img.shape[1:], fill)
            out.append(crop)
        return out

    def padded(self, layer: str, crop: torch.Tensor, box, pos, image_hw, fill: float) -> torch.Tensor:
        """``crop`` (C, h, w), cut at ``box`` (top, left, bottom, right) for the unit at map position ``pos``,
        in its canvas: the receptive field's size, or the image's extent along an axis where the field is
        larger (see :meth:`crops`)."""
        geo = self.fields[layer]
        size, offset = [], []
        for axis, lo in ((0, box[0]), (1, box[1])):
            rf, extent = int(geo["rf"][axis]), int(image_hw[axis])
            start = geo["start"][axis] + int(pos[axis]) * geo["jump"][axis]
            size.append(rf if rf <= extent else extent)
            offset.append(int(lo) - start if rf <= extent else int(lo))
        canvas = torch.full((crop.shape[0], *size), float(fill), dtype=crop.dtype)
        canvas[:, offset[0]:offset[0] + crop.shape[1], offset[1]:offset[1] + crop.shape[2]] = crop
        return canvas

    # ---- figures ---------------------------------------------------------------------------------
    def plot(self, layer: str | Sequence[str], data, units: Sequence[int] | dict | None = None, *,
             pad: bool = True, max_units: int = 8):
        """The lecture's "Top-9 patches": per unit a mosaic of its top crops (3x3 for k=9, padded to the
        receptive field; a light checkerboard where it lies outside the image), units side by side, one row per layer (``layer`` may be a list). ``units``: channels
        (a dict: per layer); default the first ``max_units``."""
        from ..plots.patches import mosaic, patches_figure

        rows = []
        for name in [layer] if isinstance(layer, str) else list(layer):
            chosen = units.get(name) if isinstance(units, dict) else units
            chosen = list(self.units.get(name, []))[:max_units] if chosen is None else list(chosen)
            cells = []
            for u in chosen:
                vals = self.values[name][self.row(name, u)]
                cells.append((f"unit {u}\nmax {np.nanmax(vals):.3g}" if np.isfinite(vals).any() else f"unit {u}",
                              mosaic(self.crops(name, u, data, pad=pad, fill=float("nan")), self.k)))
            rows.append((name, cells))
        return patches_figure(rows, title=f"Top-{self.k} patches over {self.rows_mined} images")

    def plot_regions(self, layer: str, unit: int, data, *, ncols: int | None = None):
        """R-CNN's "top regions": the unit's top images whole, its receptive field drawn in white with
        the activation value."""
        from ..plots.patches import regions_figure

        r = self.row(layer, unit)
        src = self.source(data)
        keep = self.indices[layer][r] >= 0
        idx = self.indices[layer][r][keep]
        names = [f"#{i}" for i in idx]  # the image's row in the data, and its class where known
        if src.labels is not None and src.class_names:
            names = [f"{n} {src.class_names[int(src.labels[i])]}" for n, i in zip(names, idx)]
        return regions_figure(src.take(idx), self.boxes[layer][r][keep], self.values[layer][r][keep],
                              titles=names, suptitle=f"{layer} unit {unit}: top regions", ncols=ncols)

    # ---- persistence -----------------------------------------------------------------------------
    def to_dict(self, *, arrays: bool = False) -> dict:
        """Description and per-layer summary (JSON-able); ``arrays=True`` adds every array as lists."""
        d = {"schema": SCHEMA, "layers": list(self.layers), "k": self.k, "paths": dict(self.paths),
             "image_hw": list(self.image_hw), "n_images": self.n_images, "rows_mined": self.rows_mined,
             "model": self.model, "data": self.data, "data_key": self.data_key, "data_spec": self.data_spec,
             "world_size": self.world_size, "per_layer": {}}
        for n in self.layers:
            best = self.values[n][:, 0] if self.k else np.zeros(0)
            d["per_layer"][n] = {"units": len(self.units[n]), "map_hw": list(self.map_hw.get(n, (1, 1))),
                                 "field": self.fields.get(n), "box_method": self.box_method.get(n, ""),
                                 "silent_units": int(np.sum(~(best > 0))),
                                 "median_top1": float(np.nanmedian(best)) if np.isfinite(best).any() else None}
            if arrays:
                d["per_layer"][n].update({key: _jsonable(getattr(self, key)[n]) for key in _ARRAYS})
        return d

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, keyed ``<field>_<layer number>`` (for an .npz)."""
        return {f"{key}_{i}": getattr(self, key)[n] for i, n in enumerate(self.layers) for key in _ARRAYS}

    def save(self, path: str | os.PathLike) -> Path:
        """``path`` (.json: the description) and the same name with .npz (the arrays), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        atomic_write_npz(path.with_suffix(".npz"), **self.arrays())
        return atomic_write_json(path.with_suffix(".json"), self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TopPatches":
        from ..io import read_json, read_npz

        path = Path(path)
        for p in (path.with_suffix(".json"), path.with_suffix(".npz")):
            if not p.is_file():
                raise DataError(f"{p}: no such file; expected top patches written by TopPatches.save")
        return cls.from_parts(read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz")))

    @classmethod
    def from_parts(cls, d: dict, arrays: dict) -> "TopPatches":
        """From ``to_dict()`` and ``arrays()`` (what a report section reads back)."""
        if d.get("schema") != SCHEMA:
            raise DataError(f"top patches must have schema {SCHEMA!r}; got {d.get('schema')!r}")
        names = list(d["layers"])
        per = {key: {n: arrays[f"{key}_{i}"] for i, n in enumerate(names)} for key in _ARRAYS}
        info = d["per_layer"]
        return cls(names, int(d["k"]), per["values"], per["indices"], per["positions"], per["boxes"], per["units"],
                   dict(d["paths"]), tuple(d["image_hw"]), {n: tuple(info[n]["map_hw"]) for n in names},
                   {n: info[n]["field"] for n in names}, {n: info[n]["box_method"] for n in names},
                   per["exact_values"], int(d["n_images"]), int(d["rows_mined"]), d.get("model", ""),
                   d.get("data", ""), d.get("data_key", ""), d.get("data_spec"), int(d.get("world_size", 1)))

    @classmethod
    def merge(cls, parts: Sequence["TopPatches"]) -> "TopPatches":
        """Shards of the same mining -> the top-k over all of them (value descending, index ascending)."""
        parts = list(parts)
        if not parts or not all(isinstance(p, cls) for p in parts):
            raise expect("parts", "a non-empty list of TopPatches", parts)
        first = parts[0]
        for p in parts[1:]:
            if p.layers != first.layers or p.k != first.k or p.n_images != first.n_images or \
                    any(not np.array_equal(p.units[n], first.units[n]) for n in first.layers):
                raise expect("parts", "shards of one mining (same layers, units, k and data)",
                             f"layers {p.layers}, k={p.k}, {p.n_images} images")
        from ._topk import merge_topk

        merged = {key: {} for key in _ARRAYS if key != "units"}
        for n in first.layers:
            got = merge_topk([tuple(getattr(p, key)[n] for key in _MERGED) for p in parts], first.k)
            for key, arr in zip(_MERGED, got):
                merged[key][n] = arr
            merged["values"][n] = _as_values(merged["exact_values"][n], merged["indices"][n])
        return cls(list(first.layers), first.k, merged["values"], merged["indices"], merged["positions"],
                   merged["boxes"], dict(first.units), dict(first.paths), first.image_hw, dict(first.map_hw),
                   dict(first.fields), dict(first.box_method), merged["exact_values"], first.n_images,
                   sum(p.rows_mined for p in parts), first.model, first.data, first.data_key, first.data_spec,
                   sum(p.world_size for p in parts))

    def __repr__(self) -> str:
        head = (f"TopPatches(k={self.k}, {self.rows_mined} of {self.n_images} images"
                f"{' of ' + self.data if self.data else ''}{', model ' + self.model if self.model else ''})")
        lines = [head, f"  {'layer':<12} {'path':<24} {'units':>5} {'map':>7} {'field':>7} {'boxes':>8} "
                       f"{'median top-1':>12} {'silent':>6}"]
        for n, info in self.to_dict()["per_layer"].items():
            rf = info["field"]["rf"] if info["field"] else None
            med = info["median_top1"]
            lines.append(f"  {n:<12} {self.paths.get(n, n):<24} {info['units']:>5} "
                         f"{'x'.join(map(str, info['map_hw'])):>7} {'x'.join(map(str, rf)) if rf else '?':>7} "
                         f"{info['box_method']:>8} {'-' if med is None else f'{med:.4g}':>12} "
                         f"{info['silent_units']:>6}")
        lines.append("  silent: units whose best image does not exceed 0")
        return "\n".join(lines)


_ARRAYS = ("values", "indices", "positions", "boxes", "units", "exact_values")
_MERGED = ("exact_values", "indices", "positions", "boxes")


def _jsonable(a: np.ndarray):
    return [None if v != v else v for v in a.tolist()] if a.ndim == 1 else [_jsonable(r) for r in a]


def _as_values(exact: np.ndarray, indices: np.ndarray) -> np.ndarray:
    return np.where(indices >= 0, exact, np.nan).astype(np.float32)


# ---- mining -----------------------------------------------------------------------------------------------

def top_patches(model_or_run, data=None, layers: str | Sequence[str] | None = None, *, k: int = 9,
                units: int | Sequence[int] | None = None, batch_size: int = 128,
                preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None, progress: bool = True,
                out: str | os.PathLike | None = None, rank: int = 0, world_size: int = 1) -> TopPatches:
    """The k images (and positions, and receptive-field boxes) that excite each unit most (module docstring).

    ``model_or_run``: a Run or run directory (fed [0, 1] pixels through its normalization; ``data``
    defaults to its test split) or an nn.Module (fed ``data`` as it is, after ``preprocess``).
    ``data``: an ImageDataset, an (N, C, H, W) tensor, an ``(images, labels)`` pair or a dataset name
    or path (its test split). ``preprocess`` maps each batch (on the model's device) before the
    forward; crops are cut from ``data`` as given. ``layers``: a
    name, a comma-separated string or a list (default: every conv layer), mined in one pass.
    ``units``: channel indices to rank in every layer (default: all). ``out``: a folder to resume
    from after an interruption. ``rank``/``world_size``: this process's shard.
    """
    from tqdm.auto import tqdm

    from ..insight.features import _callable_name, _model_key, shard_bounds
    from ..taps import BatchSource, capture, eval_mode, model_device
    from ..training.evaluate import run_test_data
    from ..training.runs import model_and_run
    from ._topk import (Progress, RunningTopK, boxes_for, check_units, choose_layers, gather, layer_fields,
                        reducer)

    model, run = model_and_run(model_or_run)
    for name, v in (("k", k), ("batch_size", batch_size), ("world_size", world_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise expect(name, "a positive int", v)
    if not isinstance(rank, int) or isinstance(rank, bool) or not 0 <= rank < world_size:
        raise expect("rank", f"an int in [0, {world_size - 1}]", rank)
    want = check_units(units)
    if data is None:
        if run is None:
            raise expect("data", "an ImageDataset, an (N, C, H, W) tensor or an (images, labels) pair for a bare "
                                 "model", None)
        data = run_test_data(run)
    elif isinstance(data, (str, Path)):
        from .. import datasets

        data = datasets.load(str(data), split="test")
    names, tapped = choose_layers(model, layers)
    src = BatchSource(data)
    input_size = tuple(src.batch(0, 1).shape[1:])                          # (C, H, W)
    if len(input_size) != 3:
        raise expect("data", "images (N, C, H, W)", input_size)
    running = {n: RunningTopK(n, k, want) for n in names}
    taps = list(dict.fromkeys(tapped))
    calls: dict[str, int] = {}
    tap = capture(model, taps, stop_at_last=True, transform={
        t: reducer(t, calls, [running[n] for n, tt in zip(names, tapped) if tt == t]) for t in taps})
    paths = {n: tap.acts.paths[t] for n, t in zip(names, tapped)}
    lo, hi = shard_bounds(src.n, batch_size, rank, world_size)
    device, dtype = model_device(model)
    store = None
    if out is not None:
        key = {"layers": [paths[n] for n in names], "units": want, "k": k, "n": src.n, "batch_size": batch_size,
               "model": _model_key(model), "data": src.key(), "preprocess": _callable_name(preprocess)}
        store = Progress(Path(out), key, names, rank, world_size, hi - lo)
        store.restore(running, device)
    start = store.rows_done if store is not None else 0
    with eval_mode(model), torch.no_grad(), tap as acts, \
            tqdm(total=hi - lo, initial=start, disable=not progress, desc="top patches", unit="img",
                 leave=False) as bar:
        for b0 in range(lo + start, hi, batch_size):
            b1 = min(b0 + batch_size, hi)
            x = src.batch(b0, b1).to(device=device, dtype=dtype)          # (B, C, H, W)
            if preprocess is not None:
                x = preprocess(x)
            if b0 == lo + start:
                as_images(x, model, name="data")  # the one image check, on the first batch the model takes
            calls.clear()
            for r in running.values():
                r.first = b0
            with forward_errors(model, x):
                acts.forward(x)  # the hooks merge each layer's output into its running top-k
            for n, t in zip(names, tapped):
                if t not in acts:
                    raise InputError(f"layer {n!r} ({paths[n]}) must run during the model's forward; got a "
                                     "forward that never called it")
                if acts[t] is not True:
                    raise InputError(f"layer {n!r} ({paths[n]}) must output a tensor to be ranked; got "
                                     f"{type(acts[t]).__name__}")
            if store is not None:
                store.commit(b1 - lo, running)
            bar.update(b1 - b0)
        if any(running[n].channels is None for n in names):  # an empty shard: learn the shapes from one image
            calls.clear()
            for r in running.values():
                r.first = None
            x = src.batch(0, 1).to(device=device, dtype=dtype)             # (1, C, H, W)
            acts.forward(preprocess(x) if preprocess is not None else x)
    found = {n: running[n].finish() for n in names}  # (values float64, indices, flat positions), (U, k) each
    fields = layer_fields(model, [paths[n] for n in names], input_size, [running[n].map_hw for n in names])
    result = TopPatches(
        names, k, {}, {}, {}, {}, {n: running[n].unit_array() for n in names}, paths, tuple(input_size[1:]),
        {n: running[n].map_hw for n in names}, {n: fields[paths[n]][0] for n in names},
        {n: fields[paths[n]][1] for n in names}, {}, src.n, hi - lo, _model_label(model, run),
        str(getattr(data, "source", "") or getattr(data, "name", "") or "images"), src.key(),
        dict(data.spec) if isinstance(getattr(data, "spec", None), dict) and data.spec else None)
    for n in names:
        exact, idx, flat = found[n]
        w = running[n].map_hw[1]
        pos = np.stack([np.where(idx >= 0, flat // w, -1), np.where(idx >= 0, flat % w, -1)], axis=-1)  # (U, k, 2)
        result.exact_values[n], result.indices[n], result.positions[n] = exact, idx, pos
        result.values[n] = _as_values(exact, idx)
        result.boxes[n] = boxes_for(fields[paths[n]][2], model, paths[n], pos, idx, input_size)
    return gather(result, world_size)


def _model_label(model, run) -> str:
    if run is not None:
        return str((run.manifest.get("arch") or {}).get("name") or run.dir or run.path or "run")
    return model_label(model)

