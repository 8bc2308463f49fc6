"""The invariances of an optimal stimulus, from the Hessian of the unit's activation on the sphere.

Berkes & Wiskott, "On the Analysis and Interpretation of Inhomogeneous Quadratic Forms as Receptive
Fields", Neural Computation 18(8), 2006 (Sec. 4); used for deep networks by Le, Ngiam, Chen, Chia, Koh &
Ng, "Tiled convolutional neural networks", NIPS 2010 (Sec. 5), after Erhan et al. 2009: at an optimal
stimulus x* of a unit f on the sphere ||x - c|| = r, the directions along which f falls *least* are its
invariances. Along the geodesic x(t) = c + cos(t) d + sin(t) r v (d = x* - c, v a unit tangent vector)
the second derivative per unit arc length is

    vᵀ A v,    A = P H P - (d̂ · ∇f / r) P          (H = ∇²f(x*), P = I - d̂ d̂ᵀ, d̂ = d / r)

(the second term: the sphere bends away from the tangent plane). At a maximum every eigenvalue of A on
the tangent space is <= 0; its eigenvectors with the eigenvalues nearest 0 (the largest) are the most
invariant directions, the most negative ones the least invariant. Each is shown as Berkes & Wiskott do:
x* moved along the geodesic in that direction, with the activation under each image.

How (``HessianInvariances.info`` states each):

* **Hessian-vector products** -- H v by double backprop (the gradient's graph kept, one extra backward per
  product, the forward stopped after the unit's layer), never the (D x D) Hessian itself; A acts on an
  orthonormal basis of the tangent space (a Householder reflection sending the last axis to d̂), as a
  ``scipy.sparse.linalg.LinearOperator`` of size D - 1 (:mod:`~convlens.synthesis.hessian`) given to
  Lanczos (``eigsh``): the ``k`` largest
  eigenvalues (``which="LA"``: at a maximum, those of smallest magnitude) and the ``n_least`` smallest
  (``"SA"``). Depthwise convolutions run as sums of shifted products there (``Smoothed(...,
  depthwise_shifts=True)``: the same function; PyTorch's double backward of a grouped convolution loops
  over its groups). ``hvps`` counts the products (``eigen_seconds``: their time with Lanczos'), ``tol``
  is ARPACK's relative accuracy.
* **the piecewise-linear problem** -- a network of ReLUs and max pooling is piecewise linear in its input:
  H = 0 almost everywhere, A = -(d̂ · ∇f / r) P and every direction is equally invariant. ``beta``
  (default :data:`~convlens.synthesis.smooth.BETA`) analyses a smooth copy instead: ReLUs as softplus_β,
  ReLU6 / hardtanh / clamp as the smooth clamp (:class:`~convlens.synthesis.smooth.Smoothed`; max pooling
  kept). ``info["smooth"]`` records what was replaced, β, and the activation of the model and of the copy
  at x* (``activation_gap``). ``beta=None`` analyses the model exactly as it is (then ``degenerate`` says
  when every eigenvalue came out equal).
* **x\\*** -- ``at``: an :class:`~convlens.synthesis.optimal_stimuli.OptimalStimuli` (its best optimum, on its
  sphere), an image (1, C, H, W) (its own norm unless ``norm`` is given), or None (the best of
  ``optimal_stimuli(..., n_inits=n_inits)``). It is then refined for ``refine`` steps of projected ascent
  on the analysed copy (the copy's optimum is not exactly the model's); ``tangential_gradient`` before and
  after: ||P ∇f|| / ||∇f||, 0 at a stationary point. Where it is not small, moving along a direction also
  changes f to first order: ``slope`` per direction is that first-order part (∇f · v, per unit arc length).
* **sequences** -- ``angles``: ``n_frames`` angles from -``max_angle`` to ``max_angle``; by default the
  angle at which the activation along the least invariant direction, measured on the model, has fallen
  by half of |f(x*)| (at most π/2), so that each row shows how much less (or more) it falls at that
  angle. Rows: the ``k`` invariances, the ``n_least`` least invariant directions and one random tangent
  direction (its ``eigenvalues`` entry is its Rayleigh quotient vᵀ A v); ``activation`` (rows, frames)
  measured on the model, ``smooth_activation`` on the analysed copy, ``predicted()`` the quadratic model
  f(x*) + slope·s + ½ λ s² (s = r t) of the copy.
* **goal** -- x* is a maximum of the analysed function on the sphere: no eigenvalue is above
  ``1e-3 · |λ_min|``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError, expect
from ..taps import model_device
from .class_model import _space, image_shape
from .optimal_stimuli import OptimalStimuli, check_differentiable, optimal_stimuli, unit_target
from .hessian import extreme_eigenpairs, hessian_operator
from .optimize import GoalInfo, evaluate, goal_record, gradient, optimize
from .smooth import BETA, Smoothed
from .sphere import Sphere, check_norm, display_images, onto

__all__ = ["hessian_invariances", "HessianInvariances"]

SCHEMA = "convlens.hessian_invariances/1"
MAX_ANGLE = math.pi / 2


@dataclass(eq=False)
class HessianInvariances(GoalInfo):
    """x* (1, C, H, W), the directions (rows, C, H, W) -- ``k`` invariances, ``n_least`` least invariant, one
    random -- with their eigenvalues (the random one's: its Rayleigh quotient), and the activation along each
    geodesic (``activation`` on the model, ``smooth_activation`` on the analysed copy; rows x frames)."""

    x_star: torch.Tensor
    directions: torch.Tensor
    eigenvalues: np.ndarray
    slope: np.ndarray
    angles: np.ndarray
    activation: np.ndarray
    smooth_activation: np.ndarray
    kinds: list
    info: dict = field(default_factory=dict)

    @property
    def sphere(self) -> Sphere:
        return Sphere.of(self.info, self.x_star.dtype)

    def __len__(self) -> int:
        return len(self.directions)

    def predicted(self) -> np.ndarray:
        """(rows, frames): the analysed copy's quadratic model along each geodesic: f + slope s + ½ λ s², s = r t."""
        s = self.info["norm"] * self.angles.reshape(1, -1)
        return (self.info["smooth"]["activation"] + self.slope.reshape(-1, 1) * s
                + 0.5 * self.eigenvalues.reshape(-1, 1) * s ** 2)

    def frames(self, row: int) -> torch.Tensor:
        """(frames, C, H, W): x* moved along direction ``row``'s geodesic by each of ``angles``."""
        return self.sphere.geodesic(self.x_star, self.directions[row:row + 1], self.angles.tolist())

    def display(self, *, mode: str = "joint") -> np.ndarray:
        """(rows, frames, H, W, C) in [0, 1]: every frame, by default all on one range (``"joint"``)."""
        frames = torch.stack([self.frames(i) for i in range(len(self))])          # (R, F, C, H, W)
        shown = display_images(frames.flatten(0, 1), self.info.get("mean"), self.info.get("std"), mode=mode)
        return shown.reshape(*frames.shape[:2], *shown.shape[1:])

    def plot(self, *, rows=None, title: str | None = None):
        """Berkes & Wiskott's figure: one row per direction, x* in the middle, the activation under each image."""
        from ..plots.invariances import invariances_figure

        return invariances_figure(self, rows=rows, title=title)

    def _repr_png_(self):
        from ..plots.common import to_png

        return to_png(self.plot())

    def to_dict(self) -> dict:
        return {"schema": SCHEMA, "eigenvalues": _jsonable(self.eigenvalues), "slope": self.slope.tolist(),
                "angles": self.angles.tolist(), "activation": self.activation.tolist(),
                "smooth_activation": self.smooth_activation.tolist(), "kinds": list(self.kinds), "info": self.info}

    def save(self, path: str | Path) -> Path:
        """``path``.json (numbers, info) + ``path``.npz (x*, directions), atomically."""
        from ..io import write_json_npz

        return write_json_npz(path, self.to_dict(), x_star=self.x_star.detach().float().cpu().numpy(),
                              directions=self.directions.detach().float().cpu().numpy())

    @classmethod
    def load(cls, path: str | Path) -> "HessianInvariances":
        from ..io import read_json_npz

        return cls.from_saved(*read_json_npz(path))

    @classmethod
    def from_saved(cls, d: dict, arrays: dict) -> "HessianInvariances":
        if d.get("schema") != SCHEMA:
            raise expect("a hessian-invariances file's schema", SCHEMA, d.get("schema"))
        return cls(torch.from_numpy(np.asarray(arrays["x_star"])), torch.from_numpy(np.asarray(arrays["directions"])),
                   np.asarray([np.nan if v is None else v for v in d["eigenvalues"]], dtype=float),
                   np.asarray(d["slope"], dtype=float), np.asarray(d["angles"], dtype=float),
                   np.asarray(d["activation"], dtype=float), np.asarray(d["smooth_activation"], dtype=float),
                   list(d["kinds"]), dict(d["info"]))

    def __repr__(self) -> str:
        i, k = self.info, self.info["k"]
        lam = self.eigenvalues
        return (f"HessianInvariances({i['label']} at x* (activation {i['activation']:.4g}; "
                + (f"softplus copy β = {i['smooth']['beta']:g}, {i['smooth']['activation']:.4g}" if i["smooth"]["used"]
                   else "the model as it is") + f"): {k} invariances λ {lam[0]:.3g}..{lam[k - 1]:.3g}, "
                + (f"least invariant λ {lam[k]:.3g}; " if i["n_least"] else "")
                + f"{i['hvps']} Hessian-vector products in {i['eigen_seconds']:.1f} s)")


# ---- the method ---------------------------------------------------------------------------------------

def hessian_invariances(model_or_run, layer: str | None = None, unit: int | None = None, *, at=None, target=None,
                        position=None, k: int = 8, n_least: int = 2, beta: float | None = BETA, refine: int = 50,
                        n_frames: int = 7, max_angle: float | None = None, norm: float | None = None,
                        n_inits: int = 4, steps: int = 200, tol: float = 1e-3, seed: int = 0, input_shape=None,
                        mean=None, std=None, progress: bool = False) -> HessianInvariances:
    """The ``k`` most invariant directions of a unit (or class score) at its optimal stimulus on a sphere
    (Berkes & Wiskott 2006; Le et al. 2010) from Hessian-vector products and Lanczos; see the module docstring."""
    from ..training.runs import model_and_run

    model, run = model_and_run(model_or_run)
    _check(k, n_least, refine, n_frames, max_angle, tol)
    if beta is not None and (isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta > 0):
        raise expect("beta", "a positive number (softplus sharpness) or None (the model as it is)", beta)
    norm = check_norm(norm)
    start = time.perf_counter()
    if at is None:
        at = optimal_stimuli(model_or_run, layer, unit, target=target, position=position, n_inits=n_inits, norm=norm,
                             steps=steps, seed=seed, input_shape=input_shape, mean=mean, std=std, progress=progress)
    if isinstance(at, OptimalStimuli):
        layer, unit, target, position = _same_unit(at.info, layer, unit, target, position)
        sphere, x = at.sphere, at.images[at.best:at.best + 1]
        shape, mean, std = tuple(at.info["input_shape"]), at.info.get("mean"), at.info.get("std")
    else:
        shape = image_shape(model, run, input_shape)
        x = _image(at, shape)
        center, _, mean, std = _space(run, shape, None, mean, std, *model_device(model))
        sphere = Sphere(center, norm if norm is not None else float(torch.linalg.vector_norm(x - center.to(x))))
    device, dtype = model_device(model)
    sphere = Sphere(sphere.center.to(device=device, dtype=dtype), sphere.radius)
    x = sphere.project_(x.detach().to(device=device, dtype=dtype).clone())          # (1, C, H, W)
    objective_of, label, kind = unit_target(model, layer, unit, target, position, x)
    objective = objective_of(1)
    check_differentiable(model, objective, x, label)
    D = int(np.prod(shape))
    if k + n_least > D - 2:
        raise expect("k + n_least", f"at most {D - 2} (the tangent space has {D - 1} dimensions)", k + n_least)

    analysed = Smoothed(model, beta) if beta is not None else model
    before = _tangential(analysed, objective, x, sphere)
    if refine:
        step = 0.01 * sphere.radius / math.sqrt(D)
        x = optimize(analysed, objective, x, steps=refine, lr=step, optimizer="sgd", momentum=0.9, normalize_grad=True,
                     lr_decay=0.1 ** (1 / max(1, refine - 1)), every=[onto(sphere)], seed=seed,
                     desc="refine x*").images
        x = sphere.project_(x.clone())
    after = _tangential(analysed, objective, x, sphere)
    replaced = dict(getattr(analysed, "replaced", {}))
    f_model = float(evaluate(model, objective, x)[0])
    f_analysed = float(evaluate(analysed, objective, x)[0])

    eigen_start = time.perf_counter()
    op, basis, g, count = hessian_operator(Smoothed(model, beta, depthwise_shifts=True), objective, x, sphere)
    rng = np.random.default_rng(seed)
    top = extreme_eigenpairs(op, k, "LA", tol, rng)                               # (k,), (D-1, k): ascending
    low = extreme_eigenpairs(op, n_least, "SA", tol, rng)                         # most negative first
    lam = np.concatenate([top[0][::-1], low[0]])
    vecs = np.concatenate([top[1][:, ::-1], low[1]], axis=1)                      # (D-1, k + m)
    rand = rng.standard_normal(basis.dim)
    rand /= np.linalg.norm(rand)
    eigen_seconds, eigen_hvps = time.perf_counter() - eigen_start, count["hvps"]
    lam = np.append(lam, float(rand @ op.matvec(rand)))                            # the random row: vᵀ A v
    dirs = np.stack([basis.up(vecs[:, i]) for i in range(vecs.shape[1])] + [basis.up(rand)])
    slope = dirs @ g                                                              # ∇f · v per unit arc length
    directions = torch.from_numpy(dirs).to(dtype=dtype).reshape(len(dirs), *shape)  # (R, C, H, W)

    def along(row: int, angles, net=model) -> np.ndarray:                          # activation on the geodesic
        frames = sphere.geodesic(x, directions[row:row + 1].to(device), list(angles))
        return evaluate(net, objective_of(len(frames)), frames).double().cpu().numpy()

    angle = float(max_angle) if max_angle is not None else _half_angle(along, k, f_model)
    angles = np.linspace(-angle, angle, n_frames)
    act = np.stack([along(i, angles) for i in range(len(dirs))])                   # (R, F)
    smooth_act = np.stack([along(i, angles, analysed) for i in range(len(dirs))]) if analysed is not model \
        else act.copy()
    kinds = ["invariance"] * k + ["least invariant"] * n_least + ["random"]
    spread = float(lam[:k + n_least].max() - lam[:k + n_least].min())
    smooth_info = {"used": beta is not None and bool(replaced), "beta": beta, "replaced": replaced,
                   "activation": f_analysed, "activation_gap": f_analysed - f_model,
                   "max_pooling": "kept (a selection: linear between switches of the max)"}
    info = {"kind": kind, "label": label, "layer": layer, "unit": unit, "target": target if kind == "class" else None,
            "position": list(position) if isinstance(position, tuple) else position, "k": k, "n_least": n_least,
            "norm": float(sphere.radius), "center": [float(v) for v in sphere.center.reshape(-1).tolist()],
            "input_shape": list(shape), "dimensions": D, "activation": f_model, "smooth": smooth_info,
            "refine": int(refine), "tangential_gradient_before": before, "tangential_gradient": after,
            "gradient_norm": float(np.linalg.norm(g)), "mu": float(_unit(x, sphere) @ g) / sphere.radius,
            "hvps": eigen_hvps, "eigen_seconds": eigen_seconds, "tol": float(tol),
            "degenerate": bool(k + n_least > 1 and spread <= 1e-6 * max(1.0, abs(float(lam.min())))),
            "max_angle": float(angle), "seed": int(seed),
            "mean": list(mean) if mean is not None else None, "std": list(std) if std is not None else None}
    info["goal"] = _goal(lam[:k + n_least], label)
    info["seconds"] = time.perf_counter() - start
    return HessianInvariances(x.detach().cpu(), directions.cpu(), lam, slope, angles, act, smooth_act, kinds, info)


# ---- helpers --------------------------------------------------------------------------------------------

def _tangential(model, objective, x: torch.Tensor, sphere: Sphere) -> float:
    g = gradient(model, objective, x).double()
    return float(torch.linalg.vector_norm(sphere.tangent(x.double(), g))
                 / torch.linalg.vector_norm(g).clamp_min(1e-300))


def _unit(x: torch.Tensor, sphere: Sphere) -> np.ndarray:
    return sphere.normal(x).reshape(-1).double().cpu().numpy()


def _half_angle(along, row: int, f0: float) -> float:
    """The angle t at which the activation along direction ``row`` (the mean of -t and t, measured) has fallen
    by half of |f(x*)|: doubling from π/64, then 6 bisections; at most π/2."""
    target = f0 - abs(f0) / 2

    def above(t: float) -> bool:
        return float(np.mean(along(row, [-t, t]))) > target
    lo, hi = 0.0, math.pi / 64
    while above(hi):
        if hi >= MAX_ANGLE:
            return MAX_ANGLE
        lo, hi = hi, min(2 * hi, MAX_ANGLE)
    for _ in range(6):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if above(mid) else (lo, mid)
    return hi


def _goal(lam: np.ndarray, label: str) -> dict:
    bound = 1e-3 * abs(float(lam.min()))
    top = float(lam.max())
    ok = top <= bound
    why = (f"the largest eigenvalue found, {top:.4g}, is above 0 (tolerance {bound:.3g}): along its direction the "
           "activation rises, so x* is not a maximum on the sphere; raise steps/refine")
    return goal_record("x* is a maximum on the sphere: every eigenvalue found <= 0", "largest eigenvalue", [top],
                       [ok], [label], [why])


def _same_unit(info: dict, layer, unit, target, position):
    given = {"layer": layer, "unit": unit, "target": target, "position": position}
    saved = {"layer": info.get("layer"), "unit": info.get("unit"), "target": info.get("target"),
             "position": tuple(info["position"]) if isinstance(info.get("position"), list) else info.get("position")}
    for name, v in given.items():
        if v is not None and v != saved[name]:
            raise InputError(f"{name} must match the optimal stimuli given as at= ({name}={saved[name]!r}) or be "
                             f"left out; got {v!r}")
    return saved["layer"], saved["unit"], saved["target"], saved["position"]


def _image(at, shape) -> torch.Tensor:
    if not isinstance(at, torch.Tensor) or not at.is_floating_point() or tuple(at.shape[-3:]) != tuple(shape) \
            or at.ndim not in (3, 4) or (at.ndim == 4 and len(at) != 1):
        got = f"a tensor of shape {tuple(at.shape)}" if isinstance(at, torch.Tensor) else type(at).__name__
        raise expect("at", f"an OptimalStimuli, a float image (1, {', '.join(map(str, shape))}) or None", got)
    return at.reshape(1, *shape)


def _jsonable(a: np.ndarray) -> list:
    return [None if not np.isfinite(v) else float(v) for v in a]


def _check(k, n_least, refine, n_frames, max_angle, tol) -> None:
    for name, v, lo in (("k", k, 1), ("n_least", n_least, 0), ("refine", refine, 0), ("n_frames", n_frames, 2)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise expect(name, f"an int >= {lo}", v)
    if max_angle is not None and (isinstance(max_angle, bool) or not isinstance(max_angle, (int, float))
                                  or not 0 < max_angle <= math.pi):
        raise expect("max_angle", "an angle in (0, π] (radians) or None", max_angle)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not tol >= 0:
        raise expect("tol", "a number >= 0 (ARPACK's relative accuracy; 0: machine precision)", tol)
