"""The result of :func:`convlens.occlusion`: maps per occluder position, saved as JSON + ``.npz``.

``OcclusionMap.save(path)`` writes ``path`` (JSON: the maps and what produced them) and ``path`` with
suffix ``.npz`` (the maps and the image, read back without pickle). ``save_maps``/``load_maps`` do the
same for several maps in one file pair (what ``convlens occlusion`` writes for the report).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError

SCHEMA = "convlens.occlusion/1"


@dataclass(frozen=True, repr=False)
class OcclusionMap:
    """Per occluder position (``rows`` x ``cols`` top-left corners): P(target), the top class, its
    probability and (with a layer) the total activation of one feature map."""

    p_target: np.ndarray            # (R, Q) float
    top_class: np.ndarray           # (R, Q) int
    top_prob: np.ndarray            # (R, Q) float
    activation: np.ndarray | None   # (R, Q) float or None
    rows: np.ndarray                # (R,) top-left row of each position
    cols: np.ndarray                # (Q,) top-left column
    window: int
    stride: int
    baseline: tuple[float, ...]
    target: int
    p_clean: float                  # P(target) on the unoccluded image
    clean_class: int                # the class predicted for the unoccluded image
    class_names: tuple[str, ...] = ()
    layer: str | None = None
    unit: int | None = None
    activation_clean: float | None = None
    method: str = "incremental"
    note: str = ""
    approx_error: float | None = None  # approximate: bound on |delta P(target)| over the map (see ``bound``)
    tau: float | None = None
    image: np.ndarray | None = field(default=None, compare=False)  # (C, H, W) as given to the model
    label: int | None = None        # the image's true class, when known
    index: int | None = None        # its row in a dataset, when it came from one
    model: str = ""
    bound: str | None = None        # approximate: "guaranteed" or "sampled" (what approx_error means)
    verified_error: float | None = None  # approximate: the largest |delta P(target)| at the verified positions
    verified: np.ndarray | None = None   # (R, Q) bool: positions recomputed exactly to measure the error
    truncated: np.ndarray | None = None  # (R, Q) bool: positions where some layer's patch was cut short
    interpolated: np.ndarray | None = None  # drill-down: (R, Q) bool, interpolated from the coarse map
    ssim: float | None = None       # drill-down: estimated SSIM of p_target against the exact map (data range 1)
    drill_down: float | None = None  # drill-down: the fraction of coarse positions drilled into (after widening)
    coarse_stride: int | None = None  # drill-down: the coarse map's stride

    @property
    def positions(self) -> np.ndarray:
        """(R * Q, 2) top-left (row, col) of every position, row-major."""
        return np.stack(np.meshgrid(self.rows, self.cols, indexing="ij"), -1).reshape(-1, 2)

    def name(self, k: int) -> str:
        return self.class_names[k] if 0 <= k < len(self.class_names) else str(k)

    def __repr__(self) -> str:
        r, q = self.p_target.shape
        i, j = np.unravel_index(np.argmin(self.p_target), self.p_target.shape)
        lines = [f"OcclusionMap of {self.model or 'model'}: {r}x{q} positions (window {self.window}, stride "
                 f"{self.stride}, baseline {_fmt(self.baseline)}), method {self.method}",
                 f"  target {self.name(self.target)}: P = {self.p_clean:.4f} unoccluded; lowest "
                 f"{self.p_target.min():.4f} with the square at row {self.rows[i]}, col {self.cols[j]}",
                 f"  most probable class: {', '.join(f'{self.name(k)} ({n})' for k, n in _counts(self.top_class))}"]
        if self.activation is not None:
            lines.append(f"  {self.layer} unit {self.unit}: total activation {self.activation_clean:.4g} unoccluded, "
                         f"{self.activation.min():.4g} … {self.activation.max():.4g} occluded")
        if self.approx_error is not None and self.interpolated is None:  # drill-down says its own below
            checked = f"{int(self.verified.sum())} of {int(self.truncated.sum())} truncated positions verified exactly"
            lines.append(f"  approximate (tau={self.tau}): |ΔP(target)| <= {self.approx_error:.2e}, {self.bound} "
                         f"({checked}, largest error there {self.verified_error:.2e}"
                         + ("; extrapolated to the others)" if self.bound == "sampled" else ")"))
        if self.interpolated is not None:
            lines.append(f"  drill-down {self.drill_down:g} (coarse stride {self.coarse_stride}, tau {self.tau:g}): "
                         f"{int(self.interpolated.sum())} of {self.interpolated.size} positions interpolated; "
                         f"estimated SSIM {self.ssim:.4f}, max |ΔP| {self.verified_error:.2e} at "
                         f"{int(self.verified.sum())} verified positions")
        if self.note:
            lines.append(f"  note: {self.note}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "model": self.model, "window": self.window, "stride": self.stride,
                "baseline": list(self.baseline), "target": self.target, "target_name": self.name(self.target),
                "p_clean": self.p_clean, "clean_class": self.clean_class, "label": self.label, "index": self.index,
                "class_names": list(self.class_names), "layer": self.layer, "unit": self.unit,
                "activation_clean": self.activation_clean, "method": self.method, "note": self.note,
                "approx_error": self.approx_error, "tau": self.tau, "rows": self.rows.tolist(),
                "cols": self.cols.tolist(), "p_target": self.p_target.tolist(), "top_class": self.top_class.tolist(),
                "top_prob": self.top_prob.tolist(),
                "activation": None if self.activation is None else self.activation.tolist(),
                "bound": self.bound, "verified_error": self.verified_error,
                "verified": None if self.verified is None else self.verified.tolist(),
                "truncated": None if self.truncated is None else self.truncated.tolist(),
                "interpolated": None if self.interpolated is None else self.interpolated.tolist(),
                "ssim": self.ssim, "drill_down": self.drill_down, "coarse_stride": self.coarse_stride,
                "image_shape": None if self.image is None else list(self.image.shape)}

    @classmethod
    def from_dict(cls, d: dict, image: np.ndarray | None = None) -> "OcclusionMap":
        act, verified, truncated = d.get("activation"), d.get("verified"), d.get("truncated")
        interpolated = d.get("interpolated")  # absent from files written before drill-down
        return cls(np.asarray(d["p_target"], float), np.asarray(d["top_class"], int), np.asarray(d["top_prob"], float),
                   None if act is None else np.asarray(act, float), np.asarray(d["rows"], int),
                   np.asarray(d["cols"], int), int(d["window"]), int(d["stride"]), tuple(d["baseline"]),
                   int(d["target"]), float(d["p_clean"]), int(d["clean_class"]), tuple(d.get("class_names", ())),
                   d.get("layer"), d.get("unit"), d.get("activation_clean"), d.get("method", "incremental"),
                   d.get("note", ""), d.get("approx_error"), d.get("tau"), image, d.get("label"), d.get("index"),
                   d.get("model", ""), d.get("bound"), d.get("verified_error"),
                   None if verified is None else np.asarray(verified, bool),
                   None if truncated is None else np.asarray(truncated, bool),
                   None if interpolated is None else np.asarray(interpolated, bool), d.get("ssim"),
                   d.get("drill_down"), d.get("coarse_stride"))

    def save(self, path: str | Path) -> Path:
        """``path`` (JSON: everything but the image) and ``path`` with suffix ``.npz`` (the maps and image)."""
        return save_maps([self], path)

    @classmethod
    def load(cls, path: str | Path) -> "OcclusionMap":
        maps = load_maps(path)
        if len(maps) != 1:
            raise InputError(f"{path} holds {len(maps)} occlusion maps; use convlens.units.occlusion.load_maps")
        return maps[0]

    def plot(self, **kwargs):
        """The three columns of Zeiler & Fergus Fig. 7: the image under its P(target) map, the most
        probable class per position (with a legend), the feature map's total activation."""
        from ..plots.occlusion import occlusion_figure

        return occlusion_figure([self], **kwargs)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


class OcclusionMaps(list):
    """The occlusion maps of a batch, one ``OcclusionMap`` per image (``maps[i]``), drawn and saved
    together: ``plot()`` stacks each image's three columns, ``save``/``load`` one JSON + one ``.npz``."""

    def plot(self, **kwargs):
        from ..plots.occlusion import occlusion_figure

        return occlusion_figure(list(self), **kwargs)

    def save(self, path: str | Path) -> Path:
        return save_maps(self, path)

    @classmethod
    def load(cls, path: str | Path) -> "OcclusionMaps":
        return cls(load_maps(path))

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())

    def __repr__(self) -> str:
        return f"OcclusionMaps({len(self)} images)\n" + "\n".join(repr(m) for m in self)


def save_maps(maps, path: str | Path) -> Path:
    """Several maps in one JSON (``{"schema", "maps": [...]}``) plus one ``.npz`` (``image_<i>`` ...)."""
    from ..io import atomic_write_json, atomic_write_npz

    path = Path(path)
    arrays = {}
    for i, m in enumerate(maps):
        arrays[f"p_target_{i}"] = m.p_target
        if m.image is not None:
            arrays[f"image_{i}"] = np.asarray(m.image, dtype=np.float32)
    atomic_write_npz(path.with_suffix(".npz"), **arrays)
    return atomic_write_json(path, {"schema": SCHEMA, "maps": [m.to_dict() for m in maps]})


def load_maps(path: str | Path) -> list[OcclusionMap]:
    """The maps ``save_maps`` (or ``OcclusionMap.save``) wrote; images from the ``.npz`` when present."""
    from ..io import read_json, read_npz

    path = Path(path)
    d = read_json(path)
    if not isinstance(d, dict) or d.get("schema") != SCHEMA:
        raise InputError(f"{path} is not an occlusion result (schema {SCHEMA})")
    npz = path.with_suffix(".npz")
    arrays = read_npz(npz) if npz.is_file() else {}
    return [OcclusionMap.from_dict(m, arrays.get(f"image_{i}")) for i, m in enumerate(d["maps"])]


def _fmt(values) -> str:
    return f"{values[0]:g}" if len(set(values)) == 1 else "(" + ", ".join(f"{v:g}" for v in values) + ")"


def _counts(top: np.ndarray) -> list[tuple[int, int]]:
    ks, ns = np.unique(top, return_counts=True)
    return sorted(zip(ks.tolist(), ns.tolist()), key=lambda kn: -kn[1])
