"""The per-step terms of image optimization written as autograd functions with closed-form gradients:
the image priors (``l2``, ``alpha_norm``, ``tv``, ``distance``) summed in one function, and the
feature-matching error of representation inversion.

They run on every step next to the model's forward and backward. On small images their cost is the
number of tensor operations, not their size: autograd spends 5 to 12 operations and a graph node on
each term; written out, a prior takes 2 to 4 operations each way and all of them one Python call.
``optimize`` on pixels calls :class:`PriorsStep`, which computes value and gradient together, on CPU
as single-pass kernels (:mod:`~convlens.synthesis.cpu_kernels`) for the terms that have one.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["priors_value", "priors_grad", "PriorsStep", "ImagePriors", "FeatureError", "as_ref", "scaled"]


def as_ref(center):
    """A prior's reference as stored: a float, or a tensor shaped to broadcast against (N, C, H, W)
    (a (C,) tensor, e.g. the mean pixel, becomes (1, C, 1, 1))."""
    if isinstance(center, (int, float)) and not isinstance(center, bool):
        return float(center)
    t = torch.as_tensor(center).detach()
    return t.reshape(1, -1, 1, 1) if t.ndim == 1 else t


def scaled(priors: tuple, k: float) -> tuple:
    """The prior terms with their weights multiplied by ``k``."""
    return tuple((kind, k * w, *rest) for kind, w, *rest in priors)


def priors_value(x: torch.Tensor, priors: tuple) -> tuple[torch.Tensor, list]:
    """Per image -Σ_i w_i P_i(x) (N,) for terms ("pow", w, ref, p): P = Σ |x - ref|^p, and ("tv", w, β):
    P = Σ (dh² + dw²)^(β/2) with dh, dw the forward differences (0 past the last row and column); and
    what :func:`priors_grad` needs. No autograd: call it on a tensor that needs no grad, or under no_grad."""
    value, saved = None, []
    for kind, w, *args in priors:
        if kind == "pow":
            ref = args[0] if isinstance(args[0], float) else args[0].to(device=x.device, dtype=x.dtype)
            v, keep = _pow_forward(x, ref, args[1])
        else:
            v, keep = _tv_forward(x, args[0])
        value = v * -w if value is None else value.sub_(v, alpha=w)
        saved.append(keep)
    return value, saved


def priors_grad(priors: tuple, saved: list, g: torch.Tensor, into: torch.Tensor | None = None) -> torch.Tensor:
    """The gradient of Σ_n g_n value_n for ``g`` (N,), added in place into ``into`` when given.

    pow: p |d|^(p-1) sign(d) with d = x - ref (even p: products, as torch.pow with an integer exponent
    is ~10x slower on CPU). tv with β = 2 is the quadratic form x·Lx with L the Laplacian of the
    4-neighbour pixel grid, gradient 2Lx; other β, at pixel (i, j): a[i-1, j] - a[i, j] + b[i, j-1] - b[i, j]
    with a = β w dh, b = β w dw, w = (dh² + dw²)^(β/2 - 1).
    """
    grad, g = into, g.reshape(-1, 1, 1, 1)
    for (kind, w, *args), keep in zip(priors, saved):
        if kind == "pow":
            grad = _pow_backward(grad, keep, args[1], g * (-w * args[1]))
        else:
            grad = _tv_backward(grad, keep, args[0], g * (-w * args[0]))
    return grad


class PriorsStep:
    """:func:`priors_value` and :func:`priors_grad` in one call, for every step of a loop over images
    shaped and typed like ``like``: ``step(x, g, into) -> (value (N,), gradient)``, the gradient added
    into ``into`` when given.

    On contiguous float32/float64 CPU images, the terms that have a single-pass kernel
    (:mod:`~convlens.synthesis.cpu_kernels`: TV with β = 2, integer powers about a number or a
    per-channel reference) run as kernels, all in one call, when numba is installed; the others as
    torch operations."""

    def __init__(self, priors: tuple, like: torch.Tensor):
        from ..synthesis import cpu_kernels as K

        self.kernel = K.priors
        fast = [_kernel_args(t, like) for t in priors] if K.usable(like) and like.ndim == 4 else [None] * len(priors)
        self.rest = tuple(t for t, f in zip(priors, fast) if f is None)
        tv = [t[1] for t, f in zip(priors, fast) if f is not None and t[0] == "tv"]
        pows = [f for t, f in zip(priors, fast) if f is not None and t[0] == "pow"]
        # the kernel's arguments after (x, grad, g): TV's total weight, and per power term w, p, ref (C,)
        self.fast = (sum(tv), np.array([w for w, _, _ in pows], dtype=np.float64),
                     np.array([p for _, p, _ in pows], dtype=np.int64),
                     np.array([r for _, _, r in pows], dtype=_NUMPY[like.dtype]).reshape(len(pows), like.shape[1])
                     ) if tv or pows else None

    def __call__(self, x: torch.Tensor, g: torch.Tensor, into: torch.Tensor | None = None):
        value, grad = None, into
        if self.rest:
            value, saved = priors_value(x, self.rest)
            grad = priors_grad(self.rest, saved, g, into=grad)
        if self.fast:
            grad = torch.zeros_like(x) if grad is None else grad if grad.is_contiguous() else grad.contiguous()
            out = torch.empty(len(x), dtype=torch.float64)
            self.kernel(x.detach().contiguous().numpy(), grad.numpy(), g.detach().to(x.dtype).numpy(), *self.fast,
                        out.numpy())
            out = out.to(x.dtype)
            value = out if value is None else value.add_(out)
        return value, grad


def _kernel_args(term: tuple, like: torch.Tensor) -> tuple | None:
    """What :func:`~convlens.synthesis.cpu_kernels.priors` needs of a term it computes: () for TV with
    β = 2, (w, p, reference per channel (C,)) for an integer power; None for a term it does not."""
    kind, w, *args = term
    if kind == "tv":
        return () if args[0] == 2 else None
    ref = _channel_ref(args[0], like)
    return (w, int(args[1]), ref) if float(args[1]).is_integer() and args[1] >= 1 and ref is not None else None


def _channel_ref(ref, x: torch.Tensor) -> np.ndarray | None:
    """A pow term's reference as one value per channel (C,) in x's dtype; None when it varies by pixel."""
    c = x.shape[1]
    if isinstance(ref, torch.Tensor):
        if not (ref.numel() == 1 or tuple(ref.shape) == (1, c, 1, 1)):
            return None
        ref = ref.detach().reshape(-1).to("cpu", x.dtype).numpy()
    return np.ascontiguousarray(np.broadcast_to(np.asarray(ref, dtype=_NUMPY[x.dtype]), (c,)))


_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class ImagePriors(torch.autograd.Function):
    """:func:`priors_value` as an autograd function, its gradient by :func:`priors_grad`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, priors: tuple) -> torch.Tensor:
        value, ctx.saved = priors_value(x, priors)
        ctx.priors = priors
        return value

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return priors_grad(ctx.priors, ctx.saved, g), None


class FeatureError(torch.autograd.Function):
    """-||a - target||² / n per image (N,) for a layer's output ``a`` (N, ...), given ``inv`` = -1/n and
    ``inv2`` = -2/n ((N,) or (1,)); gradient -2 (a - target) / n."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, target: torch.Tensor, inv: torch.Tensor, inv2: torch.Tensor) -> torch.Tensor:
        d = a - target
        ctx.d, ctx.inv2 = d, inv2
        return _sqnorm(d).mul_(inv)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        d = ctx.d
        return d * (g * ctx.inv2).reshape(-1, *[1] * (d.ndim - 1)), None, None, None


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.mul(a, b).flatten(1).sum(dim=1)                              # (N,) per-image sums of a * b


def _sqnorm(a: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a.flatten(1), dim=1).square_()            # (N,): one pass, no product tensor


def _pow_forward(x, ref, p):
    d = x - ref                                                   # (N, C, H, W)
    if p == 2:
        return _sqnorm(d), (d, None)
    if p.is_integer() and p % 2 == 0:
        sq = d * d
        below = _int_power(sq, int(p) // 2 - 1)                   # d^(p-2)
        return _dot(sq, below), (d, below)
    return (d.abs() ** p).flatten(1).sum(dim=1), (d, None)


def _pow_backward(grad, keep, p, coef):
    d, below = keep
    if p == 2:
        part = d                                                  # d^(p-1)
    elif p.is_integer() and p % 2 == 0:
        part = d * below
    else:
        part = (d.abs() ** (p - 1)).mul_(d.sign())
    return part * coef if grad is None else grad.addcmul_(part, coef)


def _tv_forward(x, beta):
    if beta == 2:
        # Σ over grid edges (x_i - x_j)² = x·Lx, (Lx)_i = Σ_neighbours (x_i - x_j); a replicated border
        # pixel is its own neighbour, so the differences past the last row and column count as 0
        xp = F.pad(x, (1, 1, 1, 1), mode="replicate")                          # (N, C, H+2, W+2)
        lap = torch.mul(x, 4.0)
        lap.sub_(xp[:, :, :-2, 1:-1]).sub_(xp[:, :, 2:, 1:-1]).sub_(xp[:, :, 1:-1, :-2]).sub_(xp[:, :, 1:-1, 2:])
        return _dot(x, lap), lap
    dh = torch.zeros_like(x)                                      # (N, C, H, W), 0 past the last row
    torch.sub(x[:, :, 1:, :], x[:, :, :-1, :], out=dh[:, :, :-1, :])
    dw = torch.zeros_like(x)
    torch.sub(x[:, :, :, 1:], x[:, :, :, :-1], out=dw[:, :, :, :-1])
    sq = torch.addcmul(dh * dh, dw, dw).add_(1e-12)
    w = sq ** (beta / 2 - 1)
    return _dot(w, sq), (dh.mul_(w)[:, :, :-1, :], dw.mul_(w)[:, :, :, :-1])


def _tv_backward(grad, keep, beta, coef):
    if beta == 2:                                                 # keep: Lx; d(x·Lx)/dx = 2Lx, and coef has β = 2
        return keep * coef if grad is None else grad.addcmul_(keep, coef)
    a, b = keep                                                   # w dh (N, C, H-1, W), w dw (N, C, H, W-1)
    n, c, h1, wd = a.shape
    lap = a.new_empty(n, c, h1 + 1, wd)                           # a[i-1] - a[i] + b[j-1] - b[j]
    if h1:
        torch.sub(a[:, :, :-1], a[:, :, 1:], out=lap[:, :, 1:-1])
        torch.neg(a[:, :, 0], out=lap[:, :, 0])
        lap[:, :, -1].copy_(a[:, :, -1])
    else:
        lap.zero_()
    lap[:, :, :, 1:].add_(b)
    lap[:, :, :, :-1].sub_(b)
    return lap.mul_(coef) if grad is None else grad.addcmul_(lap, coef)


def _int_power(sq: torch.Tensor, k: int) -> torch.Tensor:
    """sq^k for k >= 1 by repeated squaring."""
    out, base = None, sq
    while k:
        if k & 1:
            out = base if out is None else out * base
        k >>= 1
        if k:
            base = base * base
    return out
