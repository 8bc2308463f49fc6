"""Adaptive drill-down for approximate occlusion, and the quality bound it measures (Krypton, Nakandala et al.,
SIGMOD 2019, section 4.2, https://arxiv.org/abs/1905.00125): a coarse map first, the fine stride only where
the coarse map shows that the prediction is sensitive, the rest interpolated.

``occlusion(..., method="approximate", drill_down=r)``; positions are counted on the fine grid (``stride``),
``step`` = ``coarse_stride // stride`` of them make one coarse stride.

1. **Coarse map**: the fine positions whose row and column index are multiples of ``step``, plus the last fine
   row and column (so that nothing is extrapolated), computed by the approximate replay (``tau``).
2. **Drill-down**: the ceil(r x coarse positions) coarse positions where P(target) moves most from the clean image
   (|delta P|; ties: the first in row-major order) are chosen, and every fine position less than one coarse
   stride from a chosen one in rows and in columns is computed (approximate replay).
3. **Interpolation**: every other position is interpolated bilinearly between the four coarse positions around it
   (the whole probability vector, so the top class and its probability follow; the activation too), and marked
   ``interpolated``.

**Quality, measured**: positions are recomputed exactly (exact incremental replay) -- the ``TOP`` positions where
the map moves most (until they are all exact), and in each of ``check`` blocks tiling the map one position
that is neither computed exactly nor verified: in even blocks the interpolated one whose four coarse corners
spread most in P(target) (else the truncated one), in odd blocks the truncated one whose patches dropped the
largest share (else the interpolated one). A position is *exact* when the approximate replay cut none of its
patches. There the error of P(target) is measured before the exact value replaces it: ``verified_error`` is the
largest |delta P|.

The **SSIM** reported (:mod:`.occlusion_ssim`, ``data_range`` 1) is that of the result against an estimate of the
exact map: the result where it is exact or verified; elsewhere the result plus the measured errors of the
verified positions of the same kind (interpolated, or truncated), averaged with Gaussian weights over the grid
(sigma: one coarse stride, in positions). It is an estimate from a sample, not a proof; on the fixture models of
the tests it is within ``SSIM_TOL`` of the SSIM of the whole exact map against the result.

**Feedback** (each round, at most ``ROUNDS``): while ``verified_error`` > ``max_error`` or the SSIM <
``min_ssim``: a failing interpolated position has the fine positions within one coarse stride of it computed; a
failing truncated position raises ``tau`` by ``TAU_STEP`` for what is computed from then on and has the truncated
positions within one coarse stride of it recomputed exactly; an SSIM below the bound doubles r. When the bound is
still missed after the last round, or the exact replays would pass ``EXACT_SHARE`` of the map, the caller
recomputes the whole map exactly (and says so).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .occlusion_bound import blocks, verify
from .occlusion_ssim import ssim

TOP = 5             # the most sensitive positions, always made exact
ROUNDS = 4
TAU_STEP = 0.15
EXACT_SHARE = 0.5   # more exact replays than this share of the map: the exact map is cheaper
SSIM_TOL = 0.05     # the tests' tolerance between the reported SSIM and the SSIM of the whole exact map


@dataclass(frozen=True)
class Drill:
    """What drill-down computed, interpolated and verified (all (P,) row-major)."""

    probs: torch.Tensor        # (P, K) float64 probabilities
    act: torch.Tensor | None   # (P,) float64 or None
    interpolated: np.ndarray   # bool: interpolated from the coarse map
    verified: np.ndarray       # bool: recomputed exactly to measure the error (its value is the exact one)
    truncated: np.ndarray      # bool: computed by the approximate replay with a patch cut short
    error: float               # largest |delta P(target)| measured at the verified positions
    ssim: float                # estimated SSIM of P(target) against the exact map
    r: float                   # the drill-down fraction finally used
    tau: float                 # the largest tau used
    rounds: int


def default_coarse_stride(window: int, stride: int) -> int:
    """The largest multiple of ``stride`` up to min(4 x stride, window) (at least ``stride``)."""
    return stride * max(1, min(4, window // stride))


def coarse_axis(n: int, step: int) -> np.ndarray:
    """Indices of the coarse positions along an axis of ``n`` fine ones: multiples of ``step``, and the last."""
    idx = np.arange(0, n, step)
    return idx if idx[-1] == n - 1 else np.append(idx, n - 1)


def interpolation(n: int, coarse: np.ndarray) -> np.ndarray:
    """(n, len(coarse)): linear interpolation weights of each fine index between its two coarse neighbours."""
    w = np.zeros((n, len(coarse)))
    if len(coarse) == 1:
        w[:, 0] = 1.0
        return w
    k = np.clip(np.searchsorted(coarse, np.arange(n), side="right") - 1, 0, len(coarse) - 2)
    t = (np.arange(n) - coarse[k]) / (coarse[k + 1] - coarse[k])
    w[np.arange(n), k] += 1 - t
    w[np.arange(n), k + 1] += t
    return w


def near(grid, centres: np.ndarray, step: int) -> np.ndarray:
    """(P,) bool: positions less than ``step`` positions from one of ``centres`` (flat indices) in rows and cols."""
    r, q = grid
    i, j = np.divmod(np.arange(r * q), q)
    ci, cj = np.divmod(np.asarray(centres, dtype=np.int64), q)
    if len(ci) == 0:
        return np.zeros(r * q, dtype=bool)
    return ((np.abs(i[:, None] - ci) < step) & (np.abs(j[:, None] - cj) < step)).any(1)


def drill_down(engine_for, exact, grid, step, r, tau, target, p_clean, check, max_error, min_ssim) -> Drill | str:
    """The drilled-down map, or why the bound cannot be met (a phrase for the note).

    ``engine_for(tau)``: (replay(idx) -> (probs (B, K), act (B,) or None), kept (P,)), the approximate replay;
    ``exact(idx)``: the exact (probs, act). ``grid``: (R, Q) fine positions; ``step``: fine positions per coarse
    stride."""
    n = grid[0] * grid[1]
    ci, cj = coarse_axis(grid[0], step), coarse_axis(grid[1], step)
    coarse = np.zeros(grid, dtype=bool)
    coarse[np.ix_(ci, cj)] = True
    coarse_idx = np.flatnonzero(coarse)
    wr, wc = interpolation(grid[0], ci), interpolation(grid[1], cj)
    s = _State(n)
    replay, kept = engine_for(tau)
    s.compute(coarse_idx, replay, kept)
    block = blocks(grid, check) if check else np.zeros(n, dtype=np.int64)
    forced = np.zeros(n, dtype=bool)
    rounds, why = 0, ""
    for rounds in range(1, ROUNDS + 1):
        moved = np.abs(s.probs[coarse_idx, target].numpy() - p_clean)
        chosen = coarse_idx[np.argsort(-moved, kind="stable")[:math.ceil(r * len(coarse_idx))]]
        s.compute(np.flatnonzero((near(grid, chosen, step) | forced) & ~s.computed), replay, kept)
        s.interpolate(wr, wc, coarse)
        bound = s.bound_truncated(exact, target, p_clean, grid, check, max_error)
        if isinstance(bound, str):  # tau cut too much: raise it and recompute what it cut
            why = f"its truncated positions (tau={tau:g}) {bound}"
            if tau >= 1.0 or s.exact_replays > EXACT_SHARE * n:
                break
            tau = min(1.0, tau + TAU_STEP)
            replay, kept = engine_for(tau)
            s.compute(np.flatnonzero(s.computed & ~s.exact), replay, kept)
            continue
        new = s.verify(_sample(s, block, check, wr, wc, coarse, grid, target), exact, target)
        while True:  # the TOP positions that move most are exact
            top = np.argsort(-np.abs(s.probs[:, target].numpy() - p_clean), kind="stable")[:TOP]
            todo = top[~s.exact[top]]
            if not len(todo):
                break
            new = np.concatenate([new, s.verify(todo, exact, target)])
        s.interpolate(wr, wc, coarse)
        error, estimate = s.error(), s.ssim(grid, step, target)
        why = f"SSIM {estimate:.3f} (>= {min_ssim:g} wanted), max |dP| {error:.3g} (<= {max_error:g} wanted)"
        if error <= max_error and estimate >= min_ssim:
            return Drill(s.probs, s.act, s.interpolated.copy(), s.verified.copy(), s.computed & (s.kept_seen < 1),
                         error, estimate, r, tau, rounds)
        if s.exact_replays > EXACT_SHARE * n:
            break
        failing = new[np.abs(s.err[new]) > max_error]
        forced |= near(grid, failing[s.kind[failing] == 1], step)
        if estimate < min_ssim or not forced.any():
            r = min(1.0, 2 * r)
    return f"drill-down could not meet its bound after {rounds} rounds: {why}"


class _State:
    """The map being assembled: probabilities, activations, and what each position is."""

    def __init__(self, n: int):
        self.n, self.probs, self.act = n, None, None
        self.computed = np.zeros(n, dtype=bool)      # by a replay (approximate, exact where kept == 1)
        self.exact = np.zeros(n, dtype=bool)         # its value is exact (nothing cut, or verified)
        self.verified = np.zeros(n, dtype=bool)
        self.interpolated = np.zeros(n, dtype=bool)
        self.err = np.full(n, np.nan)                # exact - result P(target) where verified, before the fix
        self.kind = np.zeros(n, dtype=np.int8)       # at verification: 1 interpolated, 2 truncated
        self.exact_replays = 0
        self.kept_seen = np.ones(n)                   # the share kept by the replay that computed each position

    def _store(self, idx, probs, act):
        if self.probs is None:
            self.probs = torch.zeros(self.n, probs.shape[1], dtype=torch.float64)
            self.act = None if act is None else torch.zeros(self.n, dtype=torch.float64)
        self.probs[idx] = probs
        if act is not None:
            self.act[idx] = act

    def compute(self, idx, replay, kept):
        if len(idx):
            self._store(idx, *replay(idx))
            self.computed[idx], self.interpolated[idx] = True, False
            self.exact[idx] = kept[idx] >= 1.0
            self.kept_seen[idx] = kept[idx]

    def interpolate(self, wr, wc, coarse):
        """Every position not computed, bilinearly between the coarse positions."""
        todo = ~self.computed & ~self.verified
        self.interpolated = todo
        if not todo.any():
            return
        r, q = wr.shape[0], wc.shape[0]
        grid = self.probs.reshape(r, q, -1)[np.ix_(coarse.any(1), coarse.any(0))]           # (Rc, Qc, K)
        w_r, w_c = torch.from_numpy(wr), torch.from_numpy(wc)
        full = torch.einsum("ra,abk,qb->rqk", w_r, grid, w_c).reshape(self.n, -1)            # (P, K)
        self.probs[todo] = full[todo]
        if self.act is not None:
            a = self.act.reshape(r, q)[np.ix_(coarse.any(1), coarse.any(0))]
            self.act[todo] = (w_r @ a @ w_c.T).reshape(-1)[todo]

    def verify(self, idx, exact, target) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        idx = idx[~self.exact[idx]]
        if not len(idx):
            return idx
        probs, act = exact(idx)
        self.err[idx] = (probs[:, target] - self.probs[idx, target]).numpy()
        self.kind[idx] = np.where(self.interpolated[idx], 1, 2)
        self._store(idx, probs, act)
        self.verified[idx] = self.exact[idx] = True
        self.interpolated[idx] = False
        self.exact_replays += len(idx)
        return idx

    def bound_truncated(self, exact, target, p_clean, grid, check, max_error):
        """The computed positions whose patches were cut, bounded as plain approximate mode bounds them
        (:func:`.occlusion_bound.verify`: a sample verified exactly, the rest extrapolated from what they drop);
        the verified ones take their exact values. Interpolated positions count as exact there."""
        dropped = np.where(self.computed & ~self.exact, 1.0 - self.kept_seen, 0.0)
        if not (dropped > 0).any():
            return None

        def replay(idx):
            probs, act = exact(idx)
            self.exact_replays += len(idx)
            return probs, act

        bound = verify(replay, dropped, self.probs, self.act, True, target, p_clean, grid, check, max_error)
        if isinstance(bound, str):
            return bound
        idx = np.flatnonzero(bound.verified & ~self.exact)
        ref_out, ref_act = bound.reference
        self.err[idx] = (ref_out[idx, target] - self.probs[idx, target]).numpy()
        self.kind[idx] = 2
        self._store(idx, ref_out[idx], None if ref_act is None else ref_act[idx])
        self.verified[idx] = self.exact[idx] = True
        return bound

    def error(self) -> float:
        return float(np.nanmax(np.abs(self.err))) if self.verified.any() else 0.0

    def ssim(self, grid, step, target) -> float:
        """SSIM of the result's P(target) against its estimated exact map (module docstring)."""
        p = self.probs[:, target].numpy()                                                  # (P,)
        fix = np.zeros(self.n)
        unknown = ~self.exact
        i, j = np.divmod(np.arange(self.n), grid[1])
        for kind, where in ((1, unknown & self.interpolated), (2, unknown & ~self.interpolated)):
            src = np.flatnonzero(self.verified & (self.kind == kind))
            dst = np.flatnonzero(where)
            if not len(src) or not len(dst):
                continue
            d2 = (i[dst, None] - i[src]) ** 2 + (j[dst, None] - j[src]) ** 2                 # (D, S)
            w = np.exp(-0.5 * d2 / step ** 2) + 1e-12
            fix[dst] = (w * self.err[src]).sum(1) / w.sum(1)
        return ssim((p + fix).reshape(grid), p.reshape(grid))


def _sample(s: _State, block, check, wr, wc, coarse, grid, target) -> np.ndarray:
    """One position per block that is neither exact nor verified (module docstring): even blocks the interpolated
    one whose coarse corners spread most, odd blocks the truncated one that dropped most (else the other kind)."""
    if not check:
        return np.zeros(0, dtype=np.int64)
    p = s.probs[:, target].numpy().reshape(grid)
    cp = p[np.ix_(coarse.any(1), coarse.any(0))]                                            # (Rc, Qc)
    lo_r, lo_c = (wr > 0).argmax(1), (wc > 0).argmax(1)
    hi_r, hi_c = np.minimum(lo_r + 1, cp.shape[0] - 1), np.minimum(lo_c + 1, cp.shape[1] - 1)
    corners = np.stack([cp[np.ix_(a, b)] for a in (lo_r, hi_r) for b in (lo_c, hi_c)])     # (4, R, Q)
    spread = (corners.max(0) - corners.min(0)).reshape(-1)                                  # (P,)
    dropped = 1.0 - s.kept_seen
    interp, trunc = ~s.exact & s.interpolated, ~s.exact & s.computed
    picks = []
    for b in np.unique(block):
        here = block == b
        first, second = ((interp, spread), (trunc, dropped)) if b % 2 == 0 else ((trunc, dropped), (interp, spread))
        for mask, score in (first, second):
            cand = np.flatnonzero(here & mask)
            if len(cand):
                picks.append(cand[np.argmax(score[cand])])
                break
    return np.asarray(picks, dtype=np.int64)
