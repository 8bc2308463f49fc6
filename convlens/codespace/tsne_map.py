"""The t-SNE map of a set of CNN codes as ``convlens tsne`` saves it (the ``codes-tsne`` result) and the
explorer's code space shows it: ``tsne_map(codes) -> TSNEMap``.

A seeded subset of at most ``n`` codes (all of them when there are fewer), :func:`~convlens.codespace.tsne.tsne`
of it, the map snapped onto a grid (:func:`~convlens.codespace.tsne_grid.tsne_grid`; ``grid="auto"``: the
squarest grid for up to 4,096 points, :func:`auto_grid`), a thumbnail per point and, when ``projector``
names a folder, the TensorBoard projector export. ``TSNEMap.meta`` and ``.arrays`` are the saved result.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .projector import ProjectorExport
    from .tsne import TSNEResult
    from .tsne_grid import TSNEGrid

GRID_MAX = 4096  # points at most on the auto grid

__all__ = ["TSNEMap", "tsne_map", "auto_grid"]


@dataclass(frozen=True, repr=False)
class TSNEMap:
    result: TSNEResult                # of the subset
    cells: TSNEGrid | None            # None without a grid
    exported: ProjectorExport | None  # None without ``projector``
    meta: dict                        # the saved result's JSON
    arrays: dict                      # its arrays: embedding, indices, thumbs, labels, grid_cells


def auto_grid(n: int) -> tuple[int, int]:
    """(rows, cols) of the squarest grid for ``min(n, 4096)`` points."""
    m = min(n, GRID_MAX)
    side = int(np.ceil(np.sqrt(m)))
    return -(-m // side), side


def tsne_map(codes, *, n: int = 5000, perplexity: float | None = None, seed: int = 0,
             grid: str | tuple[int, int] | None = "auto", thumb: int = 32, n_jobs: int = 1,
             projector: Path | None = None) -> TSNEMap:
    """The t-SNE map of (a seeded subset of ``n`` of) ``codes`` (a Codes), see the module docstring.
    ``grid``: "auto", (rows, cols) or None; ``thumb``: the thumbnails' height in px."""
    from .codes import thumbnails
    from .projector import export_projector
    from .tsne import tsne
    from .tsne_grid import tsne_grid

    rows = np.arange(len(codes))
    if len(codes) > n:
        rows = np.sort(np.random.default_rng(seed).choice(len(codes), n, replace=False))
    sub = codes.subset(rows)
    result = tsne(sub, perplexity=perplexity, seed=seed, n_jobs=n_jobs)
    shape = auto_grid(len(sub)) if isinstance(grid, str) and grid == "auto" else grid
    cells = None
    if shape is not None:
        cells = tsne_grid(result.embedding[:min(len(sub), shape[0] * shape[1])], *shape)
    images = sub.images()  # (n, C, H, W)
    exported = export_projector(sub, projector, images=images) if projector is not None else None
    arrays = {"embedding": result.embedding, "indices": sub.indices, "thumbs": thumbnails(images, thumb)}
    if sub.labels is not None:
        arrays["labels"] = sub.labels
    if cells is not None:
        arrays["grid_cells"] = cells.cells
    meta = result.to_dict()
    meta["grid"] = None if cells is None else {"rows": cells.rows, "cols": cells.cols, "points": len(cells),
                                               "cost": cells.cost}
    meta["projector"] = None if exported is None else str(exported.folder)
    return TSNEMap(result, cells, exported, meta, arrays)
