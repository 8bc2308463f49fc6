"""Which maps can you trust: Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018
(https://arxiv.org/abs/1810.03292), on your own model.

``sanity_check(model, x, target, methods=METHODS)`` computes each method's map of the images ``x`` from the
trained model and compares it with the map of the same images and classes

* from the model with its layers re-initialized one more at a time from the top (Sec. 3.1, the cascading
  model-parameter randomization test; the layers and how they are re-initialized: ``cascade.py``), and
* with ``random_labels_model``, from a model of the same architecture trained on the same images with
  shuffled labels (Sec. 3.2, the data randomization test; ``convlens.train(..., shuffle_labels=True)``
  makes one).

A map that barely changes when the weights are random cannot be showing what the model learned: guided
backprop, Adebayo et al. found, draws the image's edges whatever the weights (Nie et al., ICML 2018, show
why). Methods: ``"saliency"``, ``"deconvnet"``, ``"guided"`` (backprop), ``"gradcam"``, ``"gradcam++"``,
``"guided-gradcam"``, ``"smoothgrad"`` (of the saliency map, ``samples`` noisy copies), ``"ig"`` (Integrated
Gradients, ``steps`` points, baseline 0), ``"occlusion"`` (the drop of P(target) per position of a square of
a quarter of the image's side, moved by half of it; grey 0.5 for a Run's pixels, else 0), or your own
callable ``fn(model, x, targets) -> (N, H, W) or (N, C, H, W)`` (named by its ``__name__``).

Similarity, per image, as in the paper (Sec. 3): the Spearman rank correlation of the maps' absolute values
and of the signed maps, and the SSIM of the absolute maps each scaled to [0, 1] by its 99th percentile
(clipped). A map with colour channels is summed over them (its absolute values, for the absolute map); a
Grad-CAM map is compared upsampled, an occlusion map at its positions. A constant map of the trained model
gives no rank correlation (NaN, left out of means); a constant map of the randomized one correlates 0.

Verdict, per method, from the similarity averaged over the images and over the cascade's steps (the area
under the paper's curve divided by its length): the rank correlation of the absolute maps below ``MAX_RANK``
= 0.5 and the SSIM below ``MAX_SSIM`` = 0.5, the map "depends on the model's weights"; otherwise it is
"largely independent of them". Averaging over the steps weighs the top layers as much as the bottom ones:
a map that changes only once the first layers are random (guided backprop, which the paper finds unchanged
while the top layers are randomized) does not show what the later layers learned, even if a fully random
network finally changes it. The same thresholds judge the random-labels model's maps ("depends on the
labels it learned" / "largely independent of them"; not measured when every map of that model is constant, as
for a model that collapsed to one prediction). A method passes when its map depends on the weights (and, where
measured, on the labels). An edge filter of the image, which ignores the model, scores 1.0 on
both; the plain gradient of the demo net scores 0.43 and 0.24.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, expect
from ..inputs import as_images
from .attribution import integrated_gradients, resolve_targets, smoothgrad
from .backprop import _label, _model_and_run, deconvnet, guided_backprop, saliency
from .cascade import cascade, cascade_layers, step_label
from .gradcam import default_layer, grad_cam

__all__ = ["sanity_check", "SanityResult", "METHODS", "MAX_RANK", "MAX_SSIM", "rank_correlation", "ssim",
           "DEPENDS", "INDEPENDENT"]

METHODS = ("saliency", "deconvnet", "guided", "gradcam", "guided-gradcam", "smoothgrad", "ig", "occlusion")
KNOWN = METHODS + ("gradcam++",)
MAX_RANK, MAX_SSIM = 0.5, 0.5
DEPENDS, INDEPENDENT = "depends on the model's weights", "largely independent of them"
DATA_DEPENDS, DATA_INDEPENDENT = "depends on the labels it learned", "largely independent of them"
DATA_DEAD = "not measured (the random-labels model's maps are constant: it learned nothing to compare)"


def sanity_check(model, x, target=None, *, methods=METHODS, layers=None, max_steps: int | None = None,
                 random_labels_model=None, cam_layer: str | None = None, samples: int = 50, steps: int = 50,
                 seed: int = 0) -> "SanityResult":
    """Adebayo et al.'s model and data randomization tests of ``methods`` on images ``x`` (module docstring).

    ``model``: an nn.Module, a Run or a run directory (a Run's pixel model takes [0, 1] images); ``target``:
    the class (index or name, or one per image; None: each image's predicted class), kept for every model
    compared. ``layers`` / ``max_steps``: the cascade's steps (``cascade.py``; default: every layer, top
    first). ``random_labels_model``: a model trained on shuffled labels (an nn.Module, Run or run directory).
    ``cam_layer``: Grad-CAM's layer (default: the last conv layer's rectified maps). ``samples``: SmoothGrad's
    noisy copies; ``steps``: Integrated Gradients' points; ``seed``: the randomization's and the noise's.
    """
    net, run = _model_and_run(model)
    images = as_images(x, net)
    chosen = _methods(methods)
    for name, v in (("samples", samples), ("steps", steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise expect(name, "a positive int", v)
    targets = resolve_targets(net, images, target)                         # (N,) kept for every model
    plan = cascade_layers(net, images, layers=layers, max_steps=max_steps)
    options = _options(net, images, samples, steps, seed, cam_layer if cam_layer is not None else
                       default_layer(net, images) if {"gradcam", "gradcam++", "guided-gradcam"} & set(chosen) else None)
    original = _maps(net, images, targets, chosen, options)
    rank_abs, rank, sims, shown = [], [], [], {m: [_display(original[m][1][0])] for m in chosen}
    for randomized in cascade(net, plan, seed=seed):
        found = _maps(randomized, images, targets, chosen, options)
        r_abs, r, s = _compare(original, found, chosen)
        rank_abs.append(r_abs), rank.append(r), sims.append(s)
        for m in chosen:
            shown[m].append(_display(found[m][1][0]))
    data = None
    if random_labels_model is not None:
        other, other_run = _model_and_run(random_labels_model)
        other_options = dict(options, cam_layer=cam_layer if cam_layer is not None or options["cam_layer"] is None
                             else default_layer(other, images))
        found = _maps(other, images, targets, chosen, other_options)
        constant = np.array([np.mean([np.ptp(a) == 0 for a in found[m][1]]) for m in chosen])  # (M,) share of images
        data = (*_compare(original, found, chosen), {m: _display(found[m][1][0]) for m in chosen},
                _label(other, other_run), constant)
    stack = lambda parts: np.stack(parts, 1)  # noqa: E731  S arrays (M, N) -> (M, S, N)
    pixels = images[0].detach().cpu().float().numpy()
    return SanityResult(
        methods=tuple(chosen), steps=tuple(step_label(net, p) for p in plan), spearman_abs=stack(rank_abs),
        spearman=stack(rank), ssim=stack(sims), maps={m: np.stack(v).astype(np.float16) for m, v in shown.items()},
        image=pixels, targets=targets.cpu().numpy().astype(np.int64), class_names=tuple(getattr(net, "class_names", None) or ()),
        model=_label(net, run), options={k: v for k, v in options.items() if k != "window_px"},
        data_spearman_abs=None if data is None else data[0], data_spearman=None if data is None else data[1],
        data_ssim=None if data is None else data[2], data_maps=None if data is None else
        {m: v.astype(np.float16) for m, v in data[3].items()}, random_labels_model=None if data is None else data[4],
        data_constant=None if data is None else data[5])


# ---- the maps -------------------------------------------------------------------------------------------------

def _methods(methods) -> dict[str, Callable | str]:
    items = list(methods.items()) if isinstance(methods, dict) else [
        (m, m) if isinstance(m, str) else (getattr(m, "__name__", "method"), m) for m in (methods or ())]
    if not items:
        raise expect("methods", f"a non-empty list of methods ({', '.join(KNOWN)}) or callables", methods)
    for name, m in items:
        if isinstance(m, str) and m not in KNOWN:
            raise expect("methods", f"names among {', '.join(KNOWN)}, or callables fn(model, x, targets)", m)
        if not isinstance(m, str) and not callable(m):
            raise expect("methods", "names or callables fn(model, x, targets)", m)
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise expect("methods", "distinct names", names)
    return dict(items)


def _options(net, images: torch.Tensor, samples: int, steps: int, seed: int, cam_layer) -> dict:
    from ..training.runs import PixelModel

    h, w = images.shape[2:]
    window = max(1, min(h, w) // 4)
    return {"samples": samples, "steps": steps, "noise": 0.15, "seed": seed, "cam_layer": cam_layer,
            "window": window, "stride": max(1, window // 2),
            "occlusion_baseline": 0.5 if isinstance(net, PixelModel) else 0.0}


def _maps(net, images, targets, chosen: dict, options: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{method: (signed map, absolute map)}, each (N, h, w) float64, of model ``net``."""
    cache: dict[str, torch.Tensor] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = _compute(name, net, images, targets, options, get)
        return cache[name]

    out = {}
    for name, how in chosen.items():
        value = get(how) if isinstance(how, str) else how(net, images, targets)
        out[name] = _planes(value, len(images), name)
    return out


def _compute(name: str, net, images, targets, o: dict, get):
    if name == "saliency":
        return saliency(net, images, targets)
    if name == "deconvnet":
        return deconvnet(net, images, targets)
    if name == "guided":
        return guided_backprop(net, images, targets)
    if name in ("gradcam", "gradcam++"):
        return grad_cam(net, images, targets, layer=o["cam_layer"], plus=name == "gradcam++").upsampled
    if name == "guided-gradcam":
        return get("guided") * get("gradcam")[:, None]                   # (N, C, H, W)
    if name == "smoothgrad":
        return smoothgrad(net, images, targets, n=o["samples"], noise=o["noise"], seed=o["seed"])
    if name == "ig":
        return integrated_gradients(net, images, targets, steps=o["steps"]).attributions
    from .occlusion import occlusion

    found = occlusion(net, images, targets.tolist() if len(images) > 1 else int(targets[0]), o["window"],
                      o["stride"], o["occlusion_baseline"])
    found = found if isinstance(found, list) else [found]
    return np.stack([m.p_clean - m.p_target for m in found])              # (N, R, Q) drop of P(target)


def _planes(value, n: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    a = value.detach().cpu().double().numpy() if isinstance(value, torch.Tensor) else np.asarray(value, np.float64)
    if a.ndim not in (3, 4) or len(a) != n:
        raise InputError(f"method {name!r} must return maps (N, H, W) or (N, C, H, W) for the {n} images; "
                         f"got shape {a.shape}")
    return (a.sum(1), np.abs(a).sum(1)) if a.ndim == 4 else (a, np.abs(a))


def _display(a: np.ndarray) -> np.ndarray:
    """An absolute map scaled to [0, 1] by its 99th percentile (clipped), as compared by SSIM and drawn."""
    top = float(np.percentile(a, 99))
    top = top if top > 0 else float(a.max())
    return np.clip(a / top, 0.0, 1.0) if top > 0 else np.zeros_like(a)


# ---- similarity ----------------------------------------------------------------------------------------------

def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps (ties ranked by their mean rank); NaN when ``a`` (the trained
    model's) is constant, 0 when only ``b`` is."""
    from scipy.stats import rankdata

    a, b = np.ravel(a), np.ravel(b)
    if np.ptp(a) == 0:
        return float("nan")
    if np.ptp(b) == 0:
        return 0.0
    return float(np.corrcoef(rankdata(a), rankdata(b))[0, 1])


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM (Wang et al. 2004, skimage's, 7x7 window or the largest odd one that fits) of two maps in [0, 1];
    NaN for maps under 3 pixels on a side."""
    from skimage.metrics import structural_similarity

    side = min(a.shape)
    if side < 3:
        return float("nan")
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=1.0, win_size=win))


def _compare(original: dict, found: dict, chosen: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rank correlation of the absolute maps, of the signed maps, SSIM), each (M, N)."""
    out = np.full((3, len(chosen), len(next(iter(original.values()))[0])), np.nan)
    for i, m in enumerate(chosen):
        (sa, aa), (sb, ab) = original[m], found[m]
        for j in range(len(sa)):
            out[:, i, j] = (rank_correlation(aa[j], ab[j]), rank_correlation(sa[j], sb[j]),
                            ssim(_display(aa[j]), _display(ab[j])))
    return out[0], out[1], out[2]


def verdict(rank_abs: float, sim: float, *, data: bool = False) -> str:
    """The verdict of one method from mean similarities (module docstring)."""
    if np.isnan(rank_abs):
        return "undetermined (constant map)"
    depends = rank_abs < MAX_RANK and (np.isnan(sim) or sim < MAX_SSIM)
    return (DATA_DEPENDS if depends else DATA_INDEPENDENT) if data else (DEPENDS if depends else INDEPENDENT)


# ---- the result ----------------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class SanityResult:
    """The similarities of each method's maps to the trained model's: ``spearman_abs``, ``spearman`` and
    ``ssim`` (M methods, S cascade steps, N images), step ``k`` with the layers of ``steps[:k + 1]`` random
    (top first); ``data_*`` (M, N) against ``random_labels_model``'s maps, or None. ``maps[method]``
    (S + 1, h, w): the first image's absolute map scaled to [0, 1], trained then after each step;
    ``data_maps[method]`` (h, w) the random-labels model's. ``image`` (C, H, W): that image."""

    methods: tuple[str, ...]
    steps: tuple[str, ...]
    spearman_abs: np.ndarray
    spearman: np.ndarray
    ssim: np.ndarray
    maps: dict
    image: np.ndarray
    targets: np.ndarray
    class_names: tuple[str, ...] = ()
    model: str = ""
    options: dict = field(default_factory=dict)
    data_spearman_abs: np.ndarray | None = None
    data_spearman: np.ndarray | None = None
    data_ssim: np.ndarray | None = None
    data_maps: dict | None = None
    random_labels_model: str | None = None
    data_constant: np.ndarray | None = None      # (M,) share of images whose random-labels map is constant
    thresholds: tuple[float, float] = (MAX_RANK, MAX_SSIM)

    def means(self, which: str = "spearman_abs") -> np.ndarray:
        """(M, S) the mean over images of ``which`` ("spearman_abs", "spearman", "ssim") at every step (NaN where
        no image has a value)."""
        with _quiet():
            return np.nanmean(getattr(self, which), axis=2)

    def verdicts(self) -> dict[str, dict]:
        """{method: the mean similarities over the cascade (``rank_abs``, ``ssim``) and with every layer random
        (``final_rank_abs``, ``final_ssim``), for the random-labels model (``data_*``), the verdicts and
        ``passes``} (module docstring)."""
        out = {}
        with _quiet():
            curve_rank, curve_sim = self.means("spearman_abs"), self.means("ssim")   # (M, S)
            rank, sim = np.nanmean(curve_rank, 1), np.nanmean(curve_sim, 1)
        for i, m in enumerate(self.methods):
            row = {"rank_abs": float(rank[i]), "ssim": float(sim[i]), "final_rank_abs": float(curve_rank[i, -1]),
                   "final_ssim": float(curve_sim[i, -1]), "model": verdict(rank[i], sim[i])}
            passes = row["model"] == DEPENDS
            if self.data_spearman_abs is not None:
                with _quiet():
                    dr, ds = np.nanmean(self.data_spearman_abs[i]), np.nanmean(self.data_ssim[i])
                dead = self.data_constant is not None and self.data_constant[i] == 1
                row.update(data_rank_abs=float(dr), data_ssim=float(ds),
                           data=DATA_DEAD if dead else verdict(dr, ds, data=True))
                passes = passes and row["data"] in (DATA_DEPENDS, DATA_DEAD)
            row["passes"] = passes
            out[m] = row
        return out

    def __repr__(self) -> str:
        data = self.data_spearman_abs is not None
        head = ["method", "rank |.|", "SSIM", "all random: rank |.|", "SSIM"] + \
            (["labels: rank |.|", "SSIM"] if data else []) + ["verdict", "passes"]
        rows = []
        for m, v in self.verdicts().items():
            rows.append([m, f"{v['rank_abs']:.2f}", f"{v['ssim']:.2f}", f"{v['final_rank_abs']:.2f}",
                         f"{v['final_ssim']:.2f}"]
                        + ([f"{v['data_rank_abs']:.2f}", f"{v['data_ssim']:.2f}"] if data else [])
                        + [v["model"] + (f"; labels: {v['data']}" if data else ""), "yes" if v["passes"] else "NO"])
        widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
        lines = ["  " + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head, *rows]]
        n = self.spearman_abs.shape[2]
        return "\n".join([
            f"Sanity checks (Adebayo et al. 2018) of {self.model or 'model'} on {n} image(s): {len(self.steps)} "
            f"cascade steps, top first ({', '.join(self.steps)})"
            + (f", and the random-labels model {self.random_labels_model}" if data else ""),
            f"similarity to the trained model's maps, mean over the cascade (rank |.|: Spearman of absolute values) "
            f"and with every layer random; a map depends on the weights below {self.thresholds[0]:g} and "
            f"{self.thresholds[1]:g}",
            *lines])

    def to_dict(self) -> dict:
        d = {"schema": "convlens.sanity/1", "model": self.model, "methods": list(self.methods), "steps": list(self.steps),
             "targets": self.targets.tolist(), "class_names": list(self.class_names), "options": dict(self.options),
             "thresholds": {"rank_abs": self.thresholds[0], "ssim": self.thresholds[1]},
             "random_labels_model": self.random_labels_model, "verdicts": self.verdicts(),
             "data_constant": None if self.data_constant is None else self.data_constant.tolist()}
        for k in _METRICS:
            v = getattr(self, k)
            d[k] = None if v is None else np.where(np.isnan(v), None, v).tolist()
        return d

    def save(self, path) -> Path:
        """``path`` (.json: metrics, verdicts) and .npz (the maps and the image), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        arrays = {"image": self.image, **{f"map_{i}": self.maps[m] for i, m in enumerate(self.methods)}}
        if self.data_maps is not None:
            arrays.update({f"data_map_{i}": self.data_maps[m] for i, m in enumerate(self.methods)})
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        return atomic_write_json(path.with_suffix(".json"), self.to_dict())

    @classmethod
    def from_parts(cls, d: dict, arrays: dict) -> "SanityResult":
        def arr(v):
            return None if v is None else np.array(v, dtype=np.float64)  # None cells -> NaN

        methods = tuple(d["methods"])
        data = d.get("data_spearman_abs") is not None
        return cls(methods=methods, steps=tuple(d["steps"]),
                   **{k: arr(d.get(k)) for k in _METRICS},
                   maps={m: arrays[f"map_{i}"] for i, m in enumerate(methods)}, image=arrays["image"],
                   targets=np.asarray(d["targets"], np.int64), class_names=tuple(d.get("class_names", ())),
                   model=d.get("model", ""), options=dict(d.get("options", {})),
                   data_maps={m: arrays[f"data_map_{i}"] for i, m in enumerate(methods)} if data else None,
                   random_labels_model=d.get("random_labels_model"), data_constant=arr(d.get("data_constant")),
                   thresholds=(d["thresholds"]["rank_abs"], d["thresholds"]["ssim"]))

    @classmethod
    def load(cls, path) -> "SanityResult":
        from ..io import read_json, read_npz

        path = Path(path)
        return cls.from_parts(read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz")))

    def plot(self):
        """Adebayo et al.'s Fig. 4: the similarity to the trained model's map after each cascade step, per method."""
        from ..plots.sanity import sanity_curves

        return sanity_curves(self)

    def plot_maps(self):
        """Adebayo et al.'s Fig. 2: each method's map of the first image, trained then after each step."""
        from ..plots.sanity import sanity_maps

        return sanity_maps(self)

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


_METRICS = ("spearman_abs", "spearman", "ssim", "data_spearman_abs", "data_spearman", "data_ssim")


@contextmanager
def _quiet():
    """Means over images where some are NaN (a constant map), or all: numpy's "Mean of empty slice" unsaid."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        yield
