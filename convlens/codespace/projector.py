"""Export codes to TensorBoard's Embedding Projector: ``export_projector(codes, out_dir, ...)``.

The Projector (Smilkov et al., "Embedding Projector: Interactive Visualization and Interpretation of
Embeddings", NIPS 2016 workshop; https://www.tensorflow.org/tensorboard/tensorboard_projector_plugin)
explores codes interactively with PCA, t-SNE and UMAP, nearest neighbours and thumbnails. The folder
written here is what its TensorBoard plugin reads (``tensorboard --logdir OUT_DIR``, "Projector" tab):

* ``tensors.tsv`` -- one line per code, D tab-separated values, no header (``tensor_format="tsv"``);
  or ``tensors.bytes`` -- raw little-endian float32, row-major, shape given by ``tensor_shape`` in the
  config (``"binary"``: ~4x smaller and fast; the plugin reads it when the file is not UTF-8 text);
* ``metadata.tsv`` -- the plugin treats the first line as a header exactly when it holds a tab:
  with labels, columns ``index`` (the row of the source data: ``Codes.indices``, else 0..N-1),
  ``label`` (class name) and ``class`` (class number) under a header row; without, one ``index``
  column and no header. Tabs and newlines in names become spaces;
* ``sprite.png`` -- the thumbnails in a square grid of ``ceil(sqrt(N))`` tiles per row and column,
  row-major, unused tiles white; at most 8192 x 8192 px (the Projector's limit), so tiles shrink
  for large N; each tile ``single_image_dim`` = [width, height] px;
* ``projector_config.pbtxt`` -- a ``ProjectorConfig`` in protobuf text format: ``embeddings { tensor_name
  tensor_path tensor_shape metadata_path sprite { image_path single_image_dim } }``, paths relative to
  the folder.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import InputError, expect

MAX_SPRITE = 8192
FORMATS = ("tsv", "binary")
CONFIG = "projector_config.pbtxt"

__all__ = ["ProjectorExport", "export_projector", "sprite_layout"]


@dataclass(frozen=True)
class ProjectorExport:
    """What was written: ``files`` maps role ("tensors", "metadata", "sprite", "config") to path."""

    folder: Path
    n: int
    dims: int
    files: dict = field(default_factory=dict)
    tile: tuple[int, int] | None = None  # (width, height) px of one sprite tile
    per_row: int = 0                    # sprite tiles per row (and per column)

    def __repr__(self) -> str:
        sprite = f", sprite {self.per_row}x{self.per_row} tiles of {self.tile[0]}x{self.tile[1]} px" if self.tile else ""
        return (f"ProjectorExport({self.n} codes x {self.dims} dims in {self.folder}{sprite}; "
                f"view with: tensorboard --logdir {self.folder})")


def sprite_layout(n: int, image_hw: tuple[int, int], tile: int | None = None) -> tuple[int, tuple[int, int]]:
    """(tiles per row, (tile width, tile height)) of the sprite of ``n`` images of size (H, W): a square
    grid; the tile height is ``tile`` or the image height, shrunk to keep the sprite <= 8192 px."""
    per_row = max(1, math.ceil(math.sqrt(n)))
    h, w = image_hw
    th = min(int(tile) if tile is not None else int(h), MAX_SPRITE // per_row)
    while th >= 1 and per_row * max(1, round(th * w / h)) > MAX_SPRITE:  # wide images: the width binds
        th -= 1
    if th < 1:
        raise InputError(f"images must number at most {MAX_SPRITE ** 2:,} (1 px tiles in a {MAX_SPRITE} x "
                         f"{MAX_SPRITE} px sprite); got {n:,}")
    tw = max(1, round(th * w / h))  # as convlens.codespace.codes.thumbnails resizes
    return per_row, (tw, th)


def export_projector(codes, out_dir: str | os.PathLike, *, labels: Sequence[int] | np.ndarray | None = None,
                     images=None, class_names: Sequence[str] | None = None, tensor_format: str = "tsv",
                     tile: int | None = None, name: str | None = None) -> ProjectorExport:
    """Write ``codes`` ((N, D) array/tensor or Codes) as a Projector folder (module docstring).

    ``labels`` (N,) ints and ``class_names`` default to the Codes' own; ``images``: (N, C, H, W) in
    [0, 1], uint8 (N, H, W, C), or True to take a Codes' source images (``Codes.images()``); None
    writes no sprite. ``tile``: sprite tile height in px (default: the image height, as large as fits).
    """
    from ..io import atomic_write_text

    if tensor_format not in FORMATS:
        raise expect("tensor_format", "'tsv' or 'binary'", tensor_format)
    arr = getattr(codes, "vectors", codes)
    arr = arr.detach().cpu().numpy() if hasattr(arr, "detach") else np.asarray(arr)
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.floating) or 0 in arr.shape:
        raise expect("codes", "a non-empty float (N, D) array or Codes", f"{arr.dtype} {tuple(arr.shape)}")
    n, d = arr.shape
    if labels is None:
        labels = getattr(codes, "labels", None)
    if class_names is None:
        class_names = getattr(codes, "class_names", None)
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != n or labels.dtype.kind not in "iu":
            raise expect("labels", f"{n} integer labels (one per code)", f"{labels.dtype} ({len(labels)})")
    if images is True:
        if not hasattr(codes, "images"):
            raise InputError("images=True needs Codes (which know their source images); got an array")
        images = codes.images()
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    if tensor_format == "tsv":
        fmt = "\t".join(["%.9g"] * d)  # 9 significant digits: float32 values read back exactly
        files["tensors"] = _write_lines(folder / "tensors.tsv", (fmt % tuple(row) for i in range(0, n, 4096)
                                                                     for row in np.asarray(arr[i:i + 4096]).tolist()))
    else:
        files["tensors"] = _write_chunks(folder / "tensors.bytes",
                                         (np.ascontiguousarray(arr[i:i + 4096], dtype="<f4").tobytes()
                                          for i in range(0, n, 4096)))
    rows = getattr(codes, "indices", None)
    rows = np.arange(n) if rows is None else np.asarray(rows).reshape(-1)
    files["metadata"] = _write_lines(folder / "metadata.tsv", _metadata_lines(rows, labels, class_names))
    tile_wh, per_row = None, 0
    if images is not None:
        files["sprite"], per_row, tile_wh = _write_sprite(folder / "sprite.png", images, n, tile)
    title = name or (f"{getattr(codes, 'layer', '')} codes".strip() if getattr(codes, "layer", "") else "codes")
    config = _config(title, files, (n, d), tile_wh)
    files["config"] = atomic_write_text(folder / CONFIG, config)
    return ProjectorExport(folder, n, d, {k: Path(v) for k, v in files.items()}, tile_wh, per_row)


# ---- pieces -----------------------------------------------------------------------------------------------

def _clean(text) -> str:
    return str(text).replace("\t", " ").replace("\r", " ").replace("\n", " ")


def _metadata_lines(rows, labels, class_names):
    if labels is None:
        yield from (str(int(i)) for i in rows)  # one column: no header row
        return
    yield "index\tlabel\tclass"
    for i, k in zip(rows.tolist(), labels):
        k = int(k)
        name = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
        yield f"{i}\t{_clean(name)}\t{k}"


def _write_sprite(path: Path, images, n: int, tile: int | None):
    import io

    from PIL import Image

    from ..io import atomic_write_bytes
    from .codes import thumbnails

    first = thumbnails(images[:1])  # (1, H, W, 3): the size before resizing
    if len(images) != n:
        raise expect("images", f"one image per code ({n})", len(images))
    per_row, (tw, th) = sprite_layout(n, first.shape[1:3], tile)
    sheet = np.full((per_row * th, per_row * tw, 3), 255, dtype=np.uint8)
    for s in range(0, n, 1024):
        thumbs = thumbnails(images[s:s + 1024], th)  # (B, th, tw, 3)
        if thumbs.shape[2] != tw:
            raise expect("images", f"images of one size ({tuple(first.shape[1:3])})", tuple(thumbs.shape[1:3]))
        for j, img in enumerate(thumbs, start=s):
            r, c = divmod(j, per_row)
            sheet[r * th:(r + 1) * th, c * tw:(c + 1) * tw] = img
    buf = io.BytesIO()
    Image.fromarray(sheet).save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue()), per_row, (tw, th)


def _config(name: str, files: dict, shape: tuple[int, int], tile: tuple[int, int] | None) -> str:
    q = lambda s: '"' + str(s).replace("\\", "\\\\").replace('"', '\\"') + '"'  # noqa: E731 protobuf string
    lines = ["embeddings {", f"  tensor_name: {q(name)}", f"  tensor_path: {q(Path(files['tensors']).name)}"]
    lines += [f"  tensor_shape: {int(v)}" for v in shape]
    lines.append(f"  metadata_path: {q(Path(files['metadata']).name)}")
    if tile is not None:
        lines += ["  sprite {", f"    image_path: {q(Path(files['sprite']).name)}",
                  f"    single_image_dim: {tile[0]}", f"    single_image_dim: {tile[1]}", "  }"]
    return "\n".join(lines + ["}"]) + "\n"


def _write_lines(path: Path, lines) -> Path:
    def chunks():
        buf = []
        for line in lines:
            buf.append(line)
            if len(buf) >= 2048:
                yield ("\n".join(buf) + "\n").encode("utf-8")
                buf = []
        if buf:
            yield ("\n".join(buf) + "\n").encode("utf-8")
    return _write_chunks(path, chunks())


def _write_chunks(path: Path, chunks) -> Path:
    """Stream ``chunks`` (bytes) to a temporary file beside ``path``, then replace ``path`` with it."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
