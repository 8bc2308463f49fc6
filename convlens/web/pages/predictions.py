"""What the model predicts, for every page that shows it (no routes here): one image's class probabilities
(a forward under the model lock, kept per image), the top-1 prediction of every image of the data (a
background job, one forward per batch, kept in memory: the images list, the code space and the confusion
cells share it), the data's labels as the model's class indices, the class names, and the target class a
request names (``?target=``).
"""
from __future__ import annotations

import difflib
import re

import numpy as np
import torch

from .. import uploads as up
from ..errors import WebError

BATCH_PIXELS = 1_000_000  # input values per forward of the predictions job (the lock is held per forward)
SCORES_KEPT = 256         # images whose probabilities stay in memory


def class_names(ex) -> list[str]:
    """The model's class names."""
    return list(ex.run.class_names or [])


def class_name(ex, k) -> str:
    names = class_names(ex)
    return names[k] if k is not None and 0 <= k < len(names) else str(k)


def data_names(ex) -> list[str]:
    """The class names of the explorer's data (its labels index them)."""
    return list(getattr(ex.data, "class_names", None) or [])


def label_of(ex, row: int) -> dict:
    lab = int(ex.data.labels[row])
    names = data_names(ex)
    return {"index": lab, "name": names[lab] if 0 <= lab < len(names) else str(lab)}


def model_labels(ex) -> np.ndarray:
    """(N,) the model's class index of each data label (by name when the data names its classes differently
    from the model, -1 where the model has no such class)."""
    def make():
        labels = np.asarray(torch.as_tensor(ex.data.labels).reshape(-1).cpu(), dtype=np.int64)
        names, ours = data_names(ex), class_names(ex)
        if names and ours and names != ours:
            return np.array([ours.index(c) if c in ours else -1 for c in names], dtype=np.int64)[labels]
        return labels
    return ex.memo.once("model labels", make)


def probabilities(ex, x: torch.Tensor) -> torch.Tensor:
    """(B, K) float64 on the CPU: the softmax of the model's scores for the images ``x`` (B, C, H, W), one
    forward in eval mode under the model lock."""
    from ...taps import eval_mode, model_device

    with ex.lock:
        net = ex.run.pixel_model()
        device, dtype = model_device(net)
        with torch.no_grad(), eval_mode(net):
            return torch.softmax(net(x.to(device, dtype)).double(), 1).cpu()


def scores(ex, image_id: str) -> np.ndarray:
    """Softmax of the model's scores for the image (K,) float64, kept per image."""
    return ex.memo.lru("scores", SCORES_KEPT).get_or_make(
        image_id, lambda: probabilities(ex, up.image(ex, image_id)[None])[0].numpy())


def predictions(ex):
    """((N,) top-1 class, (N,) its probability) of the data, or (None, the job computing them)."""
    def compute(progress):
        images = ex.data.images
        n = len(images)
        batch = max(1, min(256, BATCH_PIXELS // max(1, images[0].numel())))
        top, prob = np.zeros(n, np.int64), np.zeros(n, np.float64)
        for lo in range(0, n, batch):  # the lock per batch: an image page asked meanwhile waits for one batch
            best = probabilities(ex, images[lo:lo + batch]).max(1)
            top[lo:lo + batch], prob[lo:lo + batch] = best.indices.numpy(), best.values.numpy()
            progress(min(n, lo + batch) / n, f"{min(n, lo + batch)} of {n} images")
        return top, prob
    return ex.kept(ex.memo.lru("predictions", 1), "data", f"predictions of {ex.name}'s data",
                   "Predictions of the data", compute)


def target(ex, request, probs: np.ndarray) -> int:
    """The class ``?target=`` names (an index or a class name), else the top-1 class of ``probs``."""
    given = request.query_params.get("target")
    if given is None or given == "":
        return int(np.argmax(probs))
    k = len(probs)
    if re.fullmatch(r"[0-9]{1,9}", given) and int(given) < k:
        return int(given)
    names = class_names(ex)
    if given in names:
        return names.index(given)
    raise WebError(f"target must be a class index in [0, {k - 1}] or a class name; got {given[:60]!r}",
                   difflib.get_close_matches(given, names, n=3) if names else [])
