"""The sphere ||x - c|| = r on which fixed-norm activation maximization runs (Erhan et al. 2009) and on which
the invariances of its optimum are measured (Berkes & Wiskott 2006; Le et al. 2010).

``c`` is the model's "zero" image (a Run's mean pixel; 0 for a bare model taking normalized input) and
``r`` the norm of the deviation ``x - c``. Default ``r`` (:func:`default_norm`): the norm a data image
has on average under the normalization's statistics, E||x - c||² = H W Σ_c σ_c² (a Run's per-channel
``std``; σ = 1 for a bare model), i.e. ``r = sqrt(H W Σ σ_c²)``: the optima have the contrast of a
typical image, not more (a larger sphere only scales a ReLU net's optimum up).

Geodesics: from x* = c + d (||d|| = r) in the unit tangent direction v (v ⊥ d),
``x(t) = c + cos(t) d + sin(t) r v``: the image turns by the angle t towards v keeping its norm; its
arc length is r t. The second derivative of f along it, per unit arc length, is
``vᵀ H v - (d̂ · ∇f) / r`` (H the Hessian of f, d̂ = d / r): the sphere's curvature adds the last term.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..errors import expect

__all__ = ["Sphere", "default_norm", "check_norm", "display_images", "onto"]


@dataclass(frozen=True)
class Sphere:
    """||x - center|| = radius; ``center`` broadcasts against (N, C, H, W) images ((1, C, 1, 1) or scalar)."""

    center: torch.Tensor
    radius: float

    @classmethod
    def of(cls, info: dict, dtype: torch.dtype = torch.float32) -> "Sphere":
        """The sphere a result recorded in its ``info`` (``center``: per channel, ``norm``: the radius)."""
        return cls(torch.tensor(info["center"], dtype=dtype).reshape(1, -1, 1, 1), float(info["norm"]))

    def offset(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.center.to(device=x.device, dtype=x.dtype)                 # (N, C, H, W)

    def project_(self, x: torch.Tensor) -> torch.Tensor:
        """Each image of ``x`` moved radially onto the sphere, in place."""
        c = self.center.to(device=x.device, dtype=x.dtype)
        x.sub_(c)
        norm = torch.linalg.vector_norm(x, dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)
        return x.mul_(self.radius / norm).add_(c)

    def random(self, n: int, shape: Sequence[int], seed: int, *, device=None, dtype=None) -> torch.Tensor:
        """(n, C, H, W) points drawn uniformly on the sphere (Gaussian directions), image i from seed + i."""
        z = torch.cat([torch.randn(1, *shape, generator=torch.Generator().manual_seed(int(seed) + i),
                                   dtype=torch.float64) for i in range(n)])
        x = z.to(device=device, dtype=dtype or torch.float32)
        return self.project_(x + self.center.to(device=x.device, dtype=x.dtype))

    def normal(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) unit normals d̂ = (x - c) / ||x - c||."""
        d = self.offset(x)
        return d / torch.linalg.vector_norm(d, dim=(1, 2, 3), keepdim=True).clamp_min(1e-30)

    def tangent(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``v`` (N, C, H, W) without its component along the normal at ``x``."""
        n = self.normal(x)
        return v - n * (v * n).sum(dim=(1, 2, 3), keepdim=True)

    def geodesic(self, x: torch.Tensor, v: torch.Tensor, angles: Sequence[float]) -> torch.Tensor:
        """(F, C, H, W) images c + cos(t) d + sin(t) r v̂ for each angle t (radians); x (1, C, H, W), v a
        tangent direction at x (normalized here)."""
        d = self.offset(x)[0]                                                      # (C, H, W)
        v = self.tangent(x, v)[0]
        v = v / torch.linalg.vector_norm(v).clamp_min(1e-30)
        t = torch.as_tensor(list(angles), dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
        return self.center.to(x) + torch.cos(t) * d + torch.sin(t) * self.radius * v


def default_norm(shape: Sequence[int], std: Sequence[float] | None) -> float:
    """sqrt(H W Σ_c σ_c²): the root-mean-square norm of x - mean for data with per-channel std σ (None: 1)."""
    c, h, w = shape
    s = np.ones(c) if std is None else np.broadcast_to(np.asarray(std, dtype=float).reshape(-1), (c,))
    return float(math.sqrt(h * w * float(np.sum(s ** 2))))


def check_norm(norm) -> float | None:
    if norm is None:
        return None
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not math.isfinite(norm) or not norm > 0:
        raise expect("norm", "a positive number (the fixed norm ||x - mean|| of the images) or None", norm)
    return float(norm)


def onto(sphere: Sphere):
    """A between-steps regularizer of :func:`~convlens.synthesis.optimize.optimize`: back onto the sphere."""
    def apply(x: torch.Tensor, step: int, grad) -> None:
        sphere.project_(x)
    apply.__name__ = f"onto sphere (r = {sphere.radius:.4g})"
    return apply


def display_images(images: torch.Tensor, mean=None, std=None, *, mode: str = "stretch") -> np.ndarray:
    """(N, H, W, C) in [0, 1]: un-normalized with ``mean``/``std`` when given, then each image stretched to
    its own range (``"stretch"``: the optima of a sphere leave the pixel box), all to one range (``"joint"``:
    their 0.5-99.5 percentiles, for a sequence whose contrast is compared), or clipped (``"clip"``)."""
    x = images.detach().float().cpu()
    if mean is not None:
        x = x * torch.tensor(std).reshape(1, -1, 1, 1) + torch.tensor(mean).reshape(1, -1, 1, 1)
    x = x.numpy().transpose(0, 2, 3, 1)                                            # (N, H, W, C)
    if mode == "clip":
        return np.clip(x, 0.0, 1.0)
    if mode == "joint":            # one range for all images: their 0.5-99.5 percentiles (a spike saturates)
        lo, hi = np.percentile(x, [0.5, 99.5])
        return np.clip((x - lo) / max(float(hi - lo), 1e-12), 0.0, 1.0)
    if mode != "stretch":
        raise expect("mode", "'stretch', 'joint' or 'clip'", mode)
    lo = x.reshape(len(x), -1).min(1).reshape(-1, 1, 1, 1)
    hi = x.reshape(len(x), -1).max(1).reshape(-1, 1, 1, 1)
    return (x - lo) / np.maximum(hi - lo, 1e-12)
