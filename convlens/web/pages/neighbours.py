"""An image's nearest neighbours among the data, on its page (no routes here): in code space (cosine, over
the CNN codes of the data: the codes cache ``convlens codes`` keeps in ``RUN/codes``, computed by a job
when missing: :mod:`.code_cache`) and in pixel space (Euclidean, over the data's pixels); kept in memory.
"""
from __future__ import annotations

import numpy as np

from .. import uploads as up
from .code_cache import code_of, codes_or_job
from .predictions import label_of

NEIGHBORS = 8
NEIGHBOURS_KEPT = 128  # (image, space) lists kept in memory


def neighbours(ex, image_id: str) -> dict:
    """The image's nearest neighbours among the data: in code space (cosine) and in pixels (Euclidean)."""
    from ...codespace.neighbors import neighbors

    out = {"k": NEIGHBORS, "pixels": _pixel_neighbours(ex, image_id), "code": None, "job": None,
           "layer": None, "metric": "cosine"}
    code, job = codes_or_job(ex)
    if code is None:
        out["job"] = job.to_dict()
        return out
    out["layer"] = code.layer

    def make():
        row = up.row_of(image_id)
        k = min(NEIGHBORS, len(code) - 1)
        pos = None if row is None else np.flatnonzero(np.asarray(code.indices) == row)
        if pos is not None and len(pos):
            nb = neighbors(code, [int(pos[0])], k, "cosine", exclude_self=True)
        else:
            nb = neighbors(code, code_of(ex, code, up.image(ex, image_id)), min(NEIGHBORS, len(code)), "cosine")
        return _near_list(ex, np.asarray(code.indices)[nb.indices[0]], nb.distances[0])
    out["code"] = ex.memo.lru("neighbours", NEIGHBOURS_KEPT).get_or_make((image_id, "code"), make)
    return out


def _pixel_neighbours(ex, image_id: str) -> list[dict]:
    from ...codespace.neighbors import neighbors

    def make():
        images = ex.data.images
        flat = images.reshape(len(images), -1)
        row = up.row_of(image_id)
        if row is not None:
            nb = neighbors(flat, [row], min(NEIGHBORS, len(images) - 1), "l2", exclude_self=True)
        else:
            nb = neighbors(flat, up.image(ex, image_id).reshape(1, -1), min(NEIGHBORS, len(images)), "l2")
        return _near_list(ex, nb.indices[0], nb.distances[0])
    return ex.memo.lru("neighbours", NEIGHBOURS_KEPT).get_or_make((image_id, "pixels"), make)


def _near_list(ex, rows, distances) -> list[dict]:
    return [{"id": f"t{int(r)}", "row": int(r), "label": label_of(ex, int(r)), "distance": float(d),
             "thumb": up.thumb_url(f"t{int(r)}")} for r, d in zip(rows, distances)]
