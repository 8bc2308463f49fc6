"""Single-pass CPU kernels (numba) for the per-step image work of ``optimize``: priors and blur.

Written with torch operations, TV with β = 2 and an α-norm are about 20 small tensor operations per
step, each a pass over the image; on inversion's images (a few 64x64 images, a forward cut at an
early layer) that was 8% of a step. Each kernel reads the image once and adds its gradient into the
gradient tensor in the same pass. :class:`~convlens.synthesis.image_priors.PriorsStep` uses them for
contiguous float32/float64 CPU tensors when numba is installed, and torch operations otherwise
(other devices and dtypes, no numba). The blur regularizer uses ``blur_`` the same way.

``priors(x, grad, g, tv_w, weights, powers, refs, out)`` computes them all in one call (no Python
between the terms): out[n] = -(tv_w x_n·Lx_n + Σ_k weights[k] Σ |x_n - refs[k, c]|^powers[k]), and adds
into ``grad`` the gradient of Σ_n g_n out[n]. The kernels for single terms, accumulating in float64:
    ``tv2(x, grad, coef, out)``        out[n] = x_n·Lx_n;  grad_n += coef[n] Lx_n
    ``pow_int(x, grad, ref, p, coef, out)``  out[n] = Σ |x_n - ref_c|^p;  grad_n += coef[n] |d|^(p-1) sign(d)
with L the Laplacian of the pixel grid with replicated borders (see ``image_priors``), ``ref`` (C,)
and ``p`` an int >= 1.
"""
from __future__ import annotations

import numpy as np
import torch

try:
    import numba
except ImportError:                       # optional: image_priors falls back to torch operations
    numba = None

__all__ = ["usable", "priors", "tv2", "pow_int", "blur_"]

# reassociation lets the per-image sums vectorize; NaN and inf keep their IEEE meaning
_FLAGS = {"reassoc", "contract", "nsz"}
_CHUNK = 1024                             # pow_int works on rows of this many values (in L1 cache)


def usable(t: torch.Tensor) -> bool:
    """Whether these kernels can work on ``t`` in place through ``t.numpy()``: numba is installed and
    ``t`` is a contiguous float32 or float64 CPU tensor."""
    return (numba is not None and t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64)
            and t.is_contiguous())


def _jit(fn):
    return numba.njit(cache=True, nogil=True, fastmath=_FLAGS)(fn) if numba is not None else None


@_jit
def priors(x, grad, g, tv_w, weights, powers, refs, out):         # x, grad (N, C, H, W); g, out (N,)
    n_img, n_ch = x.shape[:2]
    part = np.empty(n_img)
    coef = np.empty_like(g)                                       # in x's dtype: float32 loops stay float32
    out[:] = 0
    if tv_w != 0:
        for n in range(n_img):
            coef[n] = -2 * tv_w * g[n]                            # d(x·Lx)/dx = 2Lx
        tv2(x, grad, coef, part)
        out -= tv_w * part
    flat_x, flat_grad = x.reshape(n_img, n_ch, -1), grad.reshape(n_img, n_ch, -1)
    for k in range(len(weights)):
        w, p = weights[k], powers[k]
        for n in range(n_img):
            coef[n] = -w * p * g[n]
        pow_int(flat_x, flat_grad, refs[k], p, coef, part)
        out -= w * part


@_jit
def _tv_at(row, up, down, g, j, left, right, k):
    """x·Lx at pixel j of a row (neighbours up[j], down[j], row[left], row[right]); adds k Lx into g[j]."""
    v = row[j]
    lap = 4 * v - up[j] - down[j] - row[left] - row[right]
    g[j] += k * lap
    return v * lap


@_jit
def tv2(x, grad, coef, out):                                      # x, grad (N, C, H, W)
    n_img, n_ch, h, w = x.shape
    for n in range(n_img):
        acc = 0.0
        k = coef[n]
        for c in range(n_ch):
            for i in range(h):
                row, g = x[n, c, i], grad[n, c, i]
                up, down = x[n, c, max(i - 1, 0)], x[n, c, min(i + 1, h - 1)]
                acc += _tv_at(row, up, down, g, 0, 0, min(1, w - 1), k)      # borders: replicated neighbours
                if w > 1:
                    acc += _tv_at(row, up, down, g, w - 1, w - 2, w - 1, k)
                for j in range(1, w - 1):                                   # interior: vectorizes
                    v = row[j]
                    lap = 4 * v - up[j] - down[j] - row[j - 1] - row[j + 1]
                    acc += v * lap
                    g[j] += k * lap
        out[n] = acc


@_jit
def pow_int(x, grad, ref, p, coef, out):                          # x, grad (N, C, S) with S = H * W
    if p == 2:                                                    # l2 and distance: one vectorized loop
        _square(x, grad, ref, coef, out)
        return
    n_img, n_ch, size = x.shape
    d = np.empty(_CHUNK, x.dtype)
    a = np.empty(_CHUNK, x.dtype)
    t = np.empty(_CHUNK, x.dtype)                                 # |d|^(p-1)
    for n in range(n_img):
        acc = 0.0
        k = coef[n]
        for c in range(n_ch):
            r = ref[c]
            for s in range(0, size, _CHUNK):
                m = min(_CHUNK, size - s)
                row, g = x[n, c, s:s + m], grad[n, c, s:s + m]
                for j in range(m):
                    d[j] = row[j] - r
                    a[j] = abs(d[j])
                    t[j] = 1
                for _ in range(p - 1):
                    for j in range(m):
                        t[j] *= a[j]
                for j in range(m):
                    acc += t[j] * a[j]
                    g[j] += k * (t[j] if d[j] > 0 else -t[j] if d[j] < 0 else 0)
        out[n] = acc


@_jit
def _square(x, grad, ref, coef, out):
    n_img, n_ch, size = x.shape
    for n in range(n_img):
        acc = 0.0
        k = coef[n]
        for c in range(n_ch):
            r = ref[c]
            row, g = x[n, c], grad[n, c]
            for j in range(size):
                d = row[j] - r
                acc += d * d
                g[j] += k * d
        out[n] = acc


@_jit
def blur_(x, k):
    """Filter each (H, W) plane of x (N, C, H, W) in place with the odd-length 1-D kernel ``k`` along
    rows, then columns; borders reflected without repeating the edge (``F.pad(mode="reflect")``)."""
    n_img, n_ch, h, w = x.shape
    r = (len(k) - 1) // 2
    rows = np.empty((h, w), x.dtype)                              # the plane filtered along its rows
    pad = np.empty(w + 2 * r, x.dtype)                            # one row with its reflected borders
    for n in range(n_img):
        for c in range(n_ch):
            plane = x[n, c]
            for i in range(h):
                src = plane[i]
                for j in range(w):
                    pad[r + j] = src[j]
                for j in range(r):
                    pad[r - 1 - j] = src[_reflect(-1 - j, w)]
                    pad[r + w + j] = src[_reflect(w + j, w)]
                dst = rows[i]
                for j in range(w):
                    dst[j] = k[0] * pad[j]
                for q in range(1, len(k)):
                    for j in range(w):
                        dst[j] += k[q] * pad[j + q]
            for i in range(h):
                dst = plane[i]
                for j in range(w):
                    dst[j] = 0
                for q in range(len(k)):
                    src = rows[_reflect(i + q - r, h)]
                    for j in range(w):
                        dst[j] += k[q] * src[j]


@_jit
def _reflect(i, n):
    """Index i of a length-n axis reflected about its ends without repeating them (|i| < n)."""
    return -i if i < 0 else 2 * (n - 1) - i if i > n - 1 else i
