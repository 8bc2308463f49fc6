"""SSIM of two 2-D maps (Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to
structural similarity", IEEE TIP 2004, https://doi.org/10.1109/TIP.2003.819861), in numpy.

The choices are Wang et al.'s, as ``skimage.metrics.structural_similarity(a, b, gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=..., win_size=...)`` computes them (the tests use it as the
oracle): local means, variances and covariance under a Gaussian window (sigma 1.5, truncated at 3.5 sigma:
11 taps), the map's edges mirrored (``d c b a | a b c d``), K1 = 0.01, K2 = 0.03, and the mean of the SSIM
map without the ``(win - 1) // 2`` positions along each edge, where ``win`` = 11, or the largest odd size that
fits the map (a map of a few positions keeps its centre; one narrower than 3 keeps everything).

``data_range`` (L in the paper) is the dynamic range of the values: 1 for P(target), a probability (the default
:func:`convlens.occlusion` uses). Differences far below it count for little, as a difference of one grey level
does in an image.
"""
from __future__ import annotations

import numpy as np

SIGMA, TRUNCATE, K1, K2 = 1.5, 3.5, 0.01, 0.03


def ssim(a, b, *, data_range: float = 1.0, win_size: int | None = None) -> float:
    """The mean SSIM of maps ``a`` and ``b`` (R, Q) (module docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"ssim needs two 2-D maps of one shape; got {a.shape} and {b.shape}")
    win = window_size(a.shape) if win_size is None else win_size
    mu_a, mu_b = _blur(a), _blur(b)
    var_a, var_b = _blur(a * a) - mu_a ** 2, _blur(b * b) - mu_b ** 2
    cov = _blur(a * b) - mu_a * mu_b
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    s = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))  # (R, Q)
    pad = (win - 1) // 2
    return float(s[pad:s.shape[0] - pad, pad:s.shape[1] - pad].mean())


def window_size(shape) -> int:
    """11, or the largest odd size that fits the smaller side (at least 1)."""
    side = min(shape)
    return max(1, min(2 * int(TRUNCATE * SIGMA + 0.5) + 1, side if side % 2 else side - 1))


def _blur(x: np.ndarray) -> np.ndarray:
    """Separable Gaussian filter (sigma 1.5, 11 taps), edges mirrored as scipy's mode='reflect'."""
    radius = int(TRUNCATE * SIGMA + 0.5)
    t = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (t / SIGMA) ** 2)
    k /= k.sum()
    for axis in (0, 1):
        x = np.moveaxis(x, axis, -1)
        padded = _mirror(x, radius)                                                # (..., n + 2 radius)
        x = sum(k[i] * padded[..., i:i + x.shape[-1]] for i in range(len(k)))
        x = np.moveaxis(x, -1, axis)
    return x


def _mirror(x: np.ndarray, radius: int) -> np.ndarray:
    """``x`` extended by ``radius`` along its last axis, mirrored at the edges (repeatedly, for a short axis)."""
    n = x.shape[-1]
    idx = np.arange(-radius, n + radius) % (2 * n)
    idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
    return x[..., idx]
