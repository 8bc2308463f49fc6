"""The Hessian of one activation on the tangent space of a sphere, as a linear operator for Lanczos.

``hessian_operator(model, objective, x, sphere)`` builds the graph of the gradient ∇f(x) once (double
backprop: each Hessian-vector product H v is one more backward through it) and returns A = P H P - μ P
(P = I - d̂ d̂ᵀ, μ = d̂ · ∇f / r) acting on an orthonormal basis of the tangent space at x, a
``scipy.sparse.linalg.LinearOperator`` of size D - 1: nothing D x D is ever formed.
``extreme_eigenpairs`` runs ``scipy.sparse.linalg.eigsh`` on it. See :mod:`convlens.synthesis.invariances`.
"""
from __future__ import annotations

import numpy as np
import torch

from ..taps import eval_mode
from .optimize import _Forward, _frozen
from .sphere import Sphere

__all__ = ["hessian_operator", "extreme_eigenpairs", "TangentBasis"]


class TangentBasis:
    """An orthonormal basis of the tangent space {v : v · n = 0} (n a unit vector of R^D) as the first D - 1
    columns of the Householder reflection Q = I - 2 u uᵀ that sends the last axis to ±n: ``up(y)`` maps
    R^(D-1) -> R^D (y -> Q [y; 0]), ``down(w)`` maps back ((Q w)[:D-1]). O(D) each, nothing D x D."""

    def __init__(self, n: np.ndarray):
        n = np.asarray(n, dtype=np.float64).reshape(-1)
        s = 1.0 if n[-1] >= 0 else -1.0
        u = n.copy()
        u[-1] += s                                                                 # u = n + s e_D
        self.u = u / np.linalg.norm(u)
        self.dim = len(n) - 1

    def up(self, y: np.ndarray) -> np.ndarray:
        w = np.append(np.asarray(y, dtype=np.float64), 0.0)
        return w - 2.0 * self.u * (self.u @ w)

    def down(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64)
        return (w - 2.0 * self.u * (self.u @ w))[:-1]


def hessian_operator(model, objective, x: torch.Tensor, sphere: Sphere):
    """(LinearOperator of A on the tangent space at x (size D - 1), TangentBasis, the gradient ∇f(x) (D,) as
    float64 numpy, a counter {"hvps": n}) for f = ``objective`` (one value) at x (1, C, H, W); see the module
    docstring. The graph of ∇f is built once; each product is one backward through it. The model is left
    as found (its modes, hooks and requires_grad are restored as soon as the graph is built)."""
    from scipy.sparse.linalg import LinearOperator

    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), eval_mode(model), _frozen(model), _Forward(model, objective) as forward:
        value = objective(forward(z, z))                                           # (1,)
        (g,) = torch.autograd.grad(value.sum(), z, create_graph=True)              # (1, C, H, W), with graph
    n = sphere.normal(z.detach()).reshape(-1).double().cpu().numpy()               # d̂ (D,)
    g_np = g.detach().reshape(-1).double().cpu().numpy()
    mu = float(n @ g_np) / sphere.radius                                           # d̂ · ∇f / r
    basis = TangentBasis(n)
    count = {"hvps": 0}
    curved = g.requires_grad

    def hvp(v: np.ndarray) -> np.ndarray:                                          # H v, (D,)
        count["hvps"] += 1
        if not curved:                                                             # ∇f constant: H = 0
            return np.zeros_like(v)
        t = torch.from_numpy(v).to(device=z.device, dtype=z.dtype).reshape(z.shape)
        (hv,) = torch.autograd.grad(g, z, grad_outputs=t, retain_graph=True, allow_unused=True)
        return np.zeros_like(v) if hv is None else hv.reshape(-1).double().cpu().numpy()

    def matvec(y):
        v = basis.up(np.asarray(y).reshape(-1))                                    # tangent, (D,)
        hv = hvp(v)
        return basis.down(hv - n * (n @ hv) - mu * v)                              # P H v - μ v, (D - 1,)

    op = LinearOperator((basis.dim, basis.dim), matvec=matvec, rmatvec=matvec, dtype=np.float64)
    return op, basis, g_np, count


def extreme_eigenpairs(op, n: int, which: str, tol: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """(eigenvalues ascending, eigenvectors (dim, n)) of the n extreme eigenpairs of ``op``."""
    from scipy.sparse.linalg import eigsh

    if n == 0:
        return np.zeros(0), np.zeros((op.shape[0], 0))
    ncv = min(op.shape[0], max(2 * n + 1, 20))
    vals, vecs = eigsh(op, k=n, which=which, tol=tol, ncv=ncv, v0=rng.standard_normal(op.shape[0]))
    order = np.argsort(vals)
    return vals[order], vecs[:, order]
