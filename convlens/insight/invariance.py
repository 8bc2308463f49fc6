"""How much do a network's features change when the image is translated, scaled or rotated?

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, Fig. 5
(https://arxiv.org/abs/1311.2901), the lecture's "Vertical translation / Scale changes / Rotation
change" slides: for a few images and a sweep of transform amounts, per layer the normalized
Euclidean distance between the feature vectors of the original and the transformed image, plus
P(true class) and the predicted class. "Small transformations have a dramatic effect in the first
layer of the model, but a lesser impact at the top feature layer."

What is measured (stated in the result):

* **distance** -- ``||phi(x) - phi(T(x))|| / ||phi(x)||``: the layer's whole output flattened into
  one vector, the Euclidean norm of the difference divided by the norm of the *original* image's
  vector (Zeiler & Fergus normalize by the original). 0 means unchanged; NaN where ``phi(x) = 0``.
* **layers** -- by default four from low to high: the first conv, the middle conv, the last conv and
  the last fc (the class scores). A grammar network's conv/fc name stands for its output after its
  ReLU (as in ``convlens.probe``); any other model's layers are read as they output.
* **probabilities** -- ``softmax(model output)`` (an output that already holds probabilities, rows
  >= 0 summing to 1, is taken as it is). The true class is the label; without labels, the class
  predicted for the untransformed image.
* **transforms** -- ``translate``: vertical, in pixels, positive moves the content *down*;
  ``scale``: a linear factor about the centre (2 doubles the width); ``rotate``: degrees,
  counter-clockwise on screen. For the built-in ``shapes`` data the sample is *re-rendered* exactly
  transformed (same background, the shape moved, scaled about or rotated about its own centre;
  ``ShapesGenerator.render``). Any other image is resampled with ``torch.nn.functional.grid_sample``
  (bilinear, ``align_corners=False``) about the image centre, uncovered pixels filled by ``fill``:
  ``"border"`` (repeat the edge pixels, default), ``"zeros"`` (value 0 as the model sees it) or
  ``"reflection"``. The identity amount (0 px, scale 1, 0 degrees) gives the original image itself.
* **amounts** -- defaults after the paper's ranges: translation -H/4 ... +H/4 px (-16 ... 16 by 2
  at 64 px), scale 0.5 ... 1.5 by 0.1, rotation 0 ... 360 degrees by 15.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError, expect
from ..layers import model_label
from ..inputs import as_images

TRANSFORMS = ("translate", "scale", "rotate")
UNITS = {"translate": "px", "scale": "×", "rotate": "°"}
AXIS_LABELS = {"translate": "vertical translation (px)", "scale": "scale (linear factor)",
               "rotate": "rotation (degrees)"}
FILLS = ("border", "zeros", "reflection")
NORMALIZATION = "||phi(x) - phi(T(x))|| / ||phi(x)||"


def default_amounts(transform: str, size: tuple[int, int] = (64, 64)) -> np.ndarray:
    """The paper-like sweep for an image of ``size`` (H, W); see the module docstring."""
    if transform == "translate":
        reach = max(1, round(size[0] / 4))
        step = max(1, round(reach / 8))
        k = reach // step
        return step * np.arange(-k, k + 1, dtype=float)
    if transform == "scale":
        return np.round(np.linspace(0.5, 1.5, 11), 10)
    if transform == "rotate":
        return np.arange(0.0, 361.0, 15.0)
    raise expect("transform", f"one of {TRANSFORMS}", transform)


def is_identity(transform: str, amount: float) -> bool:
    return (amount == 1.0) if transform == "scale" else (amount % 360.0 == 0.0 if transform == "rotate"
                                                         else amount == 0.0)


def resample(images: torch.Tensor, transform: str, amount: float, *, fill: str = "border") -> torch.Tensor:
    """(N, C, H, W) -> (N, C, H, W): the content moved ``amount`` px down (``translate``), scaled by
    ``amount`` about the image centre (``scale``) or rotated ``amount`` degrees counter-clockwise on
    screen (``rotate``); bilinear, ``fill`` for pixels that come from outside the image."""
    if fill not in FILLS:
        raise expect("fill", f"one of {FILLS}", fill)
    if is_identity(transform, amount):
        return images
    _, _, h, w = images.shape
    if transform == "translate":  # output pixel p shows input pixel A p + t (pixel units, about the centre)
        a, t = np.eye(2), np.array([0.0, -amount])
    elif transform == "scale":
        if not amount > 0:
            raise expect("scale amount", "a positive factor", amount)
        a, t = np.eye(2) / amount, np.zeros(2)
    elif transform == "rotate":  # screen y points down: this turns the content counter-clockwise
        c, s = math.cos(math.radians(amount)), math.sin(math.radians(amount))
        a, t = np.array([[c, -s], [s, c]]), np.zeros(2)
    else:
        raise expect("transform", f"one of {TRANSFORMS}", transform)
    d = np.diag([w / 2.0, h / 2.0])  # normalized grid coordinates -> pixels from the centre
    d_inv = np.diag([2.0 / w, 2.0 / h])
    theta = np.concatenate([d_inv @ a @ d, (d_inv @ t)[:, None]], axis=1)  # (2, 3)
    theta = torch.as_tensor(theta, dtype=images.dtype, device=images.device).expand(len(images), 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (N, H, W, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode=fill, align_corners=False)


# ---- the result ------------------------------------------------------------------------------------------

@dataclass(frozen=True, repr=False)
class InvarianceResult:
    """``distance[layer, amount, image]``, ``p_true[amount, image]``, ``predicted[amount, image]``."""

    transform: str
    amounts: np.ndarray          # (A,)
    layers: tuple[str, ...]      # names shown
    tapped: tuple[str, ...]      # the layer read for each (e.g. relu1 for conv1)
    distance: np.ndarray         # (L, A, N) normalized Euclidean distance
    p_true: np.ndarray           # (A, N) P(true class)
    predicted: np.ndarray        # (A, N) int, predicted class
    labels: np.ndarray           # (N,) int, the true class (or the untransformed prediction)
    class_names: tuple[str, ...]
    indices: tuple[int, ...]     # rows of the source data (empty for tensors given directly)
    method: str                  # "render" (shapes re-rendered) or "resample" (grid_sample)
    fill: str
    model: str = ""
    data: str = ""
    label_source: str = "labels"  # or "predicted"
    images: torch.Tensor | None = field(default=None, compare=False)  # (N, C, H, W) originals (not saved)
    schema: str = "convlens.invariance/1"

    @property
    def unit(self) -> str:
        return UNITS[self.transform]

    @property
    def mean_distance(self) -> np.ndarray:
        return np.nanmean(self.distance, axis=2)  # (L, A)

    def distance_at(self, layer: str, amount: float) -> np.ndarray:
        """(N,) distances of one layer at one amount."""
        if layer not in self.layers:
            raise expect("layer", f"one of {self.layers}", layer)
        hit = np.flatnonzero(np.isclose(self.amounts, amount))
        if not len(hit):
            raise expect("amount", f"one of the amounts {self.amounts.tolist()}", amount)
        return self.distance[self.layers.index(layer), hit[0]]

    @property
    def correct(self) -> np.ndarray:
        return self.predicted == self.labels[None, :]  # (A, N)

    def names(self) -> list[str]:
        """'class' of each image (its true class name)."""
        return [self.class_names[k] if 0 <= k < len(self.class_names) else str(k) for k in self.labels]

    def __repr__(self) -> str:
        how = "re-rendered" if self.method == "render" else f"resampled (fill={self.fill})"
        head = (f"Invariance to {self.transform} ({how}) of {self.model or 'model'} on {len(self.labels)} images "
                f"of {self.data or 'data'}: {', '.join(self.names())}")
        cols = list(self.layers) + ["P(true)", "correct"]
        width = max(9, *(len(c) for c in cols))
        lines = [head, f"mean normalized distance {NORMALIZATION} per layer, mean P(true class), images still "
                       "correctly classified:",
                 f"{'amount':>9}" + "".join(f"{c:>{width + 2}}" for c in cols)]
        md = self.mean_distance
        for a, amount in enumerate(self.amounts):
            cells = [f"{md[li, a]:.3f}" for li in range(len(self.layers))]
            cells += [f"{self.p_true[a].mean():.3f}", f"{int(self.correct[a].sum())}/{len(self.labels)}"]
            lines.append(f"{amount:>8g}{self.unit}" + "".join(f"{c:>{width + 2}}" for c in cells))
        tapped = [f"{s}={t}" for s, t in zip(self.layers, self.tapped) if s != t]
        if tapped:
            lines.append("read after the ReLU: " + ", ".join(tapped))
        if self.label_source != "labels":
            lines.append("no labels given: the 'true' class is the prediction for the untransformed image")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        nan = lambda a: [[None if v != v else float(v) for v in row] for row in a]  # noqa: E731  NaN -> null
        return {"schema": self.schema, "transform": self.transform, "unit": self.unit,
                "amounts": self.amounts.tolist(), "layers": list(self.layers), "tapped": list(self.tapped),
                "normalization": NORMALIZATION, "distance": [nan(d) for d in self.distance],
                "mean_distance": nan(self.mean_distance), "p_true": self.p_true.tolist(),
                "predicted": self.predicted.tolist(), "labels": self.labels.tolist(),
                "class_names": list(self.class_names), "image_names": self.names(), "indices": list(self.indices),
                "method": self.method, "fill": self.fill, "model": self.model, "data": self.data,
                "label_source": self.label_source}

    @classmethod
    def from_dict(cls, d: dict) -> "InvarianceResult":
        dist = np.array([[[np.nan if v is None else v for v in row] for row in layer] for layer in d["distance"]],
                        dtype=float)
        return cls(d["transform"], np.asarray(d["amounts"], dtype=float), tuple(d["layers"]), tuple(d["tapped"]),
                   dist, np.asarray(d["p_true"], dtype=float), np.asarray(d["predicted"], dtype=int),
                   np.asarray(d["labels"], dtype=int), tuple(d["class_names"]), tuple(d.get("indices", ())),
                   d["method"], d["fill"], d.get("model", ""), d.get("data", ""), d.get("label_source", "labels"))

    def save(self, path: str | Path) -> Path:
        from ..io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    def plot(self, *, layers: Sequence[str] | None = None):
        """Zeiler & Fergus Fig. 5 for this transform: distance of a low and a high layer, and P(true class),
        vs the amount, one line per image."""
        from ..plots.invariance import invariance_figure

        return invariance_figure([self.to_dict()], layers=layers)


# ---- the experiment --------------------------------------------------------------------------------------

def invariance(model_or_run, images_or_data=None, *, transform: str = "translate",
               amounts: Sequence[float] | None = None, layers: Sequence[str] | None = None, n_images: int = 5,
               labels: Sequence[int] | None = None, fill: str = "border", batch_size: int = 64) -> InvarianceResult:
    """Feature distances, P(true class) and predictions vs a sweep of one transform (module docstring).

    ``model_or_run``: a Run or run directory (images in [0, 1] through its normalization) or an
    ``nn.Module`` (images as they are). ``images_or_data``: an (N, C, H, W) or (C, H, W) tensor (the
    first ``n_images`` are used; ``labels`` gives their classes), an ImageDataset, a dataset name or
    path (its test split), an ``(images, labels)`` pair, or None for a run's test split. From a
    dataset, ``n_images`` images of different classes are taken (correctly classified ones first,
    from the first max(256, 20 * n_images) images).
    """
    from ..training.runs import model_and_run
    from ..taps import capture

    if transform not in TRANSFORMS:
        raise expect("transform", f"one of {TRANSFORMS}", transform)
    if fill not in FILLS:
        raise expect("fill", f"one of {FILLS}", fill)
    for name, v in (("n_images", n_images), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise expect(name, "a positive int", v)
    model, run = model_and_run(model_or_run)
    shown, tapped = choose_layers(model, layers)
    ref = next(iter(model.parameters()), None)
    device, dtype = (ref.device, ref.dtype) if ref is not None else (torch.device("cpu"), torch.float32)

    images, true, names, data_label, render, indices = _select(model, run, images_or_data, labels, n_images,
                                                               batch_size, device, dtype)
    amounts = default_amounts(transform, tuple(images.shape[2:])) if amounts is None else _amounts(amounts)
    if transform == "scale" and (amounts <= 0).any():
        raise expect("amounts", "positive scale factors", amounts.tolist())
    originals = as_images(images, model, name="images_or_data")  # (N, C, H, W), checked, on the model's device
    keys = {"translate": "dy", "scale": "scale", "rotate": "angle"}

    def transformed(amount: float) -> torch.Tensor:
        if is_identity(transform, amount):
            return originals
        if render is not None:
            gen, params = render
            return gen.render_batch(params, **{keys[transform]: float(amount)})[0].to(device, dtype)
        return resample(originals, transform, float(amount), fill=fill)

    taps = list(dict.fromkeys(tapped))
    with torch.no_grad(), capture(model, taps) as acts:  # hooks removed and modes restored on exit
        model.eval()

        def forward(x):  # -> ({tap: (N, D) float64}, (N, K) float64 probabilities)
            feats, outs = {t: [] for t in taps}, []
            for i in range(0, len(x), batch_size):
                out = model(x[i:i + batch_size])
                for t in taps:
                    a = acts[t]
                    if not isinstance(a, torch.Tensor):
                        raise InputError(f"layers must output a tensor; {t!r} outputs {type(a).__name__}")
                    feats[t].append(a.flatten(1).to("cpu", torch.float64))  # (B, D)
                outs.append(out)
            return {t: torch.cat(v) for t, v in feats.items()}, _probabilities(torch.cat(outs))

        base, p0 = forward(originals)
        label_source = "labels" if true is not None else "predicted"
        true = true if true is not None else p0.argmax(1)
        if len(true) and not 0 <= int(true.min()) <= int(true.max()) < p0.shape[1]:
            raise expect("labels", f"classes in [0, {p0.shape[1] - 1}] (the model's outputs)", true.tolist())
        norm0 = {t: base[t].norm(dim=1) for t in taps}  # (N,)
        dist = np.zeros((len(shown), len(amounts), len(images)))
        p_true = np.zeros((len(amounts), len(images)))
        pred = np.zeros((len(amounts), len(images)), dtype=int)
        for a, amount in enumerate(amounts):
            feats, p = (base, p0) if is_identity(transform, amount) else forward(transformed(amount))
            for li, t in enumerate(tapped):
                diff = (feats[t] - base[t]).norm(dim=1)  # (N,)
                dist[li, a] = torch.where(norm0[t] > 0, diff / norm0[t], torch.nan).numpy()
            p_true[a] = p[torch.arange(len(true)), true].numpy()
            pred[a] = p.argmax(1).numpy()
    label = ((run.manifest.get("arch") or {}).get("name") or str(run.dir or "run")) if run else model_label(model)
    return InvarianceResult(transform, amounts, tuple(shown), tuple(tapped), dist, p_true, pred, true.numpy(),
                            tuple(names), tuple(indices), "render" if render is not None else "resample", fill,
                            label, data_label, label_source, images.cpu())


def choose_layers(model: nn.Module, layers: Sequence[str] | None) -> tuple[list[str], list[str]]:
    """(names shown, names tapped): the given layers, or the first, middle and last conv and the last fc."""
    from ..layers import resolve
    from .probes import choose_layers as probe_layers

    shown, tapped = probe_layers(model, layers)
    if layers is not None:
        return shown, tapped
    kinds = [type(resolve(model, name)[1]) for name in shown]
    convs = [i for i, k in enumerate(kinds) if issubclass(k, nn.Conv2d)]
    fcs = [i for i, k in enumerate(kinds) if issubclass(k, nn.Linear)]
    keep = sorted({*(convs[:1] + convs[len(convs) // 2:len(convs) // 2 + 1] + convs[-1:]), *fcs[-1:]})
    return [shown[i] for i in keep], [tapped[i] for i in keep]


def _amounts(amounts) -> np.ndarray:
    try:
        arr = np.asarray(amounts, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise expect("amounts", "a sequence of numbers", amounts) from None
    if not len(arr) or not np.isfinite(arr).all():
        raise expect("amounts", "a non-empty sequence of finite numbers", amounts)
    return arr


def _probabilities(out: torch.Tensor) -> torch.Tensor:
    """(N, K) float64 class probabilities from a model output (scores, or probabilities already)."""
    if out.dim() != 2:
        raise InputError(f"the model must output class scores (N, K); got shape {tuple(out.shape)}")
    out = out.to("cpu", torch.float64)
    if (out >= 0).all() and torch.allclose(out.sum(1), torch.ones(len(out), dtype=out.dtype), atol=1e-5):
        return out
    return torch.softmax(out, dim=1)


def _select(model, run, data, labels, n, batch_size, device, dtype):
    """(images (n, C, H, W) cpu, labels (n,) int64 or None, class names, data label, (generator, params) or
    None, source rows) of the images to transform."""
    from .. import datasets
    from ..training.evaluate import _match_labels, run_test_data

    if data is None:
        if run is None:
            raise InputError("images_or_data must be given for a bare model (images, an ImageDataset or a dataset "
                             "name); got None")
        data = run_test_data(run)
    elif isinstance(data, (str, Path)):
        data = datasets.load(str(data), split="test")
    model_names = list(run.class_names) if run is not None and run.class_names else None
    if isinstance(data, torch.Tensor):
        images = data[None] if data.dim() == 3 else data
        if images.dim() != 4 or not images.is_floating_point():
            raise expect("images_or_data", "a float tensor (N, C, H, W) or (C, H, W)", tuple(data.shape))
        images = images[:n].detach().cpu()
        true = None
        if labels is not None:
            true = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)[:n]
            if len(true) != len(images):
                raise expect("labels", f"one class per image ({len(images)})", len(true))
        names = model_names or [str(k) for k in range(int(true.max()) + 1 if true is not None else 0)]
        return images, true, names, "images", None, []
    if labels is not None:
        raise InputError("labels must be None when the data carries its own labels; got labels")
    if isinstance(data, (tuple, list)) and len(data) == 2:
        pool, pool_labels, data_names, data_label = data[0], torch.as_tensor(data[1]), None, "images"
    elif hasattr(data, "images") and hasattr(data, "labels"):
        pool, pool_labels = data.images, data.labels
        data_names, data_label = getattr(data, "class_names", None), getattr(data, "name", "") or "data"
    else:
        raise expect("images_or_data", "images, an ImageDataset, a dataset name or an (images, labels) pair",
                     type(data).__name__)
    pool_labels = pool_labels.to("cpu", torch.int64).reshape(-1)
    names = model_names or (list(data_names) if data_names is not None else None)
    if names is not None:
        pool_labels = _match_labels(pool_labels, data_names, names)
    else:
        names = [str(k) for k in range(int(pool_labels.max()) + 1)]
    m = min(len(pool_labels), max(256, 20 * n))  # candidates: the first m images
    cand = pool[:m]
    correct = (_predict(model, cand, batch_size, device, dtype) == pool_labels[:m]).tolist()
    chosen: list[int] = []
    new_class = lambda i: int(pool_labels[i]) not in {int(pool_labels[j]) for j in chosen}  # noqa: E731
    for test in (lambda i: correct[i] and new_class(i), new_class, lambda i: correct[i], lambda i: True):
        for i in range(m):
            if len(chosen) < n and i not in chosen and test(i):
                chosen.append(i)
    images, true = cand[chosen].float().cpu(), pool_labels[chosen]
    render = None
    gen, params = getattr(data, "generator", None), getattr(data, "params", None)
    if gen is not None and params is not None:
        ps = [params[i] for i in chosen]
        again = gen.render_batch(ps)[0]  # re-render only if it reproduces the images exactly
        if again.shape == images.shape and torch.equal(again, images):
            render = (gen, ps)
    return images, true, names, data_label, render, chosen


def _predict(model, images, batch_size, device, dtype) -> torch.Tensor:
    """(N,) int64 top-1 classes, in eval mode (each module's mode restored after)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            out = [model(images[i:i + batch_size].to(device, dtype)).argmax(1).cpu()
                   for i in range(0, len(images), batch_size)]
    finally:
        for m, mode in modes:
            m.training = mode
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)
