"""Adaptive drill-down for approximate occlusion, and the quality bound it measures (Krypton, Nakandala et al.,
SIGMOD 2019, section 4.2, https://arxiv.org/abs/1905.00125): a coarse map first, the fine stride only where
the coarse map shows that the prediction is sensitive, the rest interpolated.

``occlusion(..., method="approximate", drill_down=r)``; positions are counted on the fine grid (``stride``),
``step`` = ``coarse_stride // stride`` of them make one coarse stride.

1. **Coarse map**: the fine positions whose row and column index are multiples of ``step``, plus the last fine
   row and column (so that nothing is extrapolated), computed by the approximate replay (``tau``).
2. **Drill-down**, level by level, the spacing halving from ``step`` down to 1 (``step // 2``, ``step // 4``, ...,
   at least 1): at each level the m = ceil(r x coarse positions) positions computed so far where P(target) moves
   most from the clean image (|delta P|; ties: the first in row-major order) are chosen, and around each, the
   positions less than the current spacing away in rows and in columns that lie on its lattice of the next
   spacing are computed (approximate replay): with ``step`` 4, a 3 x 3 block at spacing 2, then a 3 x 3 block
   at spacing 1 around the m most sensitive positions known by then. A coarse-to-fine search, after Krypton's
   rule (the top-r coarse positions, drilled into), that spends the fine stride on the peaks of the map.
3. **Interpolation**: every other position is interpolated linearly between the computed positions around it
   (the triangle of their Delaunay triangulation that holds it; along the one axis of a one-row or one-column
   map): the whole probability vector, so the top class and its probability follow, and the activation too.
   Such positions are marked ``interpolated``.

**Quality, measured**: positions are recomputed exactly (exact incremental replay) -- the ``TOP`` positions where
the map moves most (until they are all exact), and in each of ``check`` blocks tiling the map one position
that is neither computed exactly nor verified: in even blocks the interpolated one whose triangle's corners
spread most in P(target) (else the truncated one), in odd blocks the truncated one whose patches dropped the
largest share (else the interpolated one); ties go to the position farthest from every computed one. A position
is *exact* when the approximate replay cut none of its patches. There the error of P(target) is measured before
the exact value replaces it: ``verified_error`` is the largest |delta P| of the last round's sample (an earlier
round's failures were replaced by exact values and refined around, feedback below).

The **SSIM** reported (:mod:`.occlusion_ssim`, ``data_range`` 1) is that of the result against an estimate of the
exact map: the result where it is exact or verified; elsewhere the result plus an error field of random signs
(the mean over ``DRAWS`` fields of a fixed seed) whose size at a position is the root mean square of the last
round's verified errors of the same kind (interpolated, or truncated) nearby (Gaussian weights over the grid,
sigma one coarse stride, in positions), and for an interpolated position also sqrt(a + b x spread^2), where
spread is the range of P(target) over its triangle's corners and a, b >= 0 fit error^2 = a + b spread^2 over
every measured interpolation error: the verified ones, and every position drill-down computed, whose value
was first predicted linearly from those known before it (``holdout``, free). It is an estimate from a sample,
not a proof: on the fixture models of the tests it is within ``SSIM_TOL`` of the SSIM of the whole exact map
against the result; a spot of a position or two that neither the coarse map nor the sample touches (saturated
nets) is missed.

**Feedback** (each round, at most ``ROUNDS``): while ``verified_error`` > ``max_error`` or the SSIM <
``min_ssim``: a failing interpolated position has the fine positions less than ``max(2, step // 2)`` from it
computed; a truncated position off by more than ``max_error`` turns the projective-field threshold off (``tau``
1) for the rest and has every truncated position recomputed; an SSIM below the bound doubles r. When the bound
is still missed after the last round, or the positions replayed (approximate or exact, repeats counted) pass
``EXACT_SHARE`` of the map, the caller computes the map exactly (and says so), replaying only the positions
not yet computed by the exact replay.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from .occlusion_bound import blocks, verify
from .occlusion_ssim import ssim

TOP = 5             # the most sensitive positions, always made exact
ROUNDS = 4
EXACT_SHARE = 0.5   # more replays than this share of the map: the exact map is cheaper
DRAWS = 8          # error fields drawn to estimate the SSIM
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


def spacings(step: int) -> list[int]:
    """The drill-down's spacings, coarse to fine: ``step``, ``step // 2``, ..., 1."""
    out = [step]
    while out[-1] > 1:
        out.append(max(1, out[-1] // 2))
    return out


def near(grid, centres: np.ndarray, step: int, spacing: int = 1) -> np.ndarray:
    """(P,) bool: positions less than ``step`` positions from one of ``centres`` (flat indices) in rows and cols,
    on the centre's lattice of ``spacing`` (row and column offsets multiples of it)."""
    r, q = grid
    i, j = np.divmod(np.arange(r * q), q)
    ci, cj = np.divmod(np.asarray(centres, dtype=np.int64), q)
    if len(ci) == 0:
        return np.zeros(r * q, dtype=bool)
    di, dj = i[:, None] - ci, j[:, None] - cj
    return ((np.abs(di) < step) & (di % spacing == 0) & (np.abs(dj) < step) & (dj % spacing == 0)).any(1)


def linear_weights(grid, known: np.ndarray, todo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vertices (M, 3) flat indices among ``known``, weights (M, 3)): each of the ``todo`` positions as a
    convex combination of the corners of the Delaunay triangle of the ``known`` positions that holds it (on a
    one-row or one-column map: of its two neighbours). ``known`` must hold the map's corners."""
    from scipy.spatial import Delaunay

    q = grid[1]
    pk, pt = np.stack(np.divmod(known, q), 1).astype(float), np.stack(np.divmod(todo, q), 1).astype(float)
    if min(grid) == 1:  # one axis: linear between the two known neighbours along it
        axis = 1 if grid[0] == 1 else 0
        a, b = pk[:, axis], pt[:, axis]
        k = np.clip(np.searchsorted(a, b, side="right") - 1, 0, len(a) - 2)
        t = (b - a[k]) / (a[k + 1] - a[k])
        return known[np.stack([k, k + 1, k], 1)], np.stack([1 - t, t, np.zeros_like(t)], 1)
    tri = Delaunay(pk)
    simplex = tri.find_simplex(pt)
    outside = simplex < 0
    if outside.any():  # on the hull's edge within rounding: a search with a tolerance (slow, so only for these)
        simplex[outside] = tri.find_simplex(pt[outside], tol=1e-9)
    if (simplex < 0).any():
        raise RuntimeError("drill-down: a position lies outside the computed ones (the map's corners are computed)")
    t = tri.transform[simplex]                                                               # (M, 3, 2)
    b = np.einsum("mij,mj->mi", t[:, :2], pt - t[:, 2])
    w = np.clip(np.concatenate([b, 1 - b.sum(1, keepdims=True)], 1), 0.0, None)
    return known[tri.simplices[simplex]], w / w.sum(1, keepdims=True)


def drill_down(engine_for, exact, grid, step, r, tau, target, p_clean, check, max_error, min_ssim) -> Drill | str:
    """The drilled-down map, or why the bound cannot be met (a phrase for the note).

    ``engine_for(tau)``: (replay(idx) -> (probs (B, K), act (B,) or None), kept (P,)), the approximate replay;
    ``exact(idx)``: the exact (probs, act). ``grid``: (R, Q) fine positions; ``step``: fine positions per coarse
    stride."""
    n = grid[0] * grid[1]
    coarse = np.zeros(grid, dtype=bool)
    coarse[np.ix_(coarse_axis(grid[0], step), coarse_axis(grid[1], step))] = True
    coarse_idx = np.flatnonzero(coarse)
    s = _State(n, target)
    replay, kept = engine_for(tau)
    s.compute(coarse_idx, replay, kept)
    block = blocks(grid, check) if check else np.zeros(n, dtype=np.int64)
    forced = np.zeros(n, dtype=bool)
    levels = spacings(step)
    rounds, why = 0, ""
    for rounds in range(1, ROUNDS + 1):
        s.sampled[:] = False  # this round's sample: earlier rounds' failures were made exact, and refined around
        m = math.ceil(r * len(coarse_idx))
        for spacing, finer in zip(levels[:-1], levels[1:]):
            known = np.flatnonzero(s.known)
            moved = np.abs(s.probs[known, target].numpy() - p_clean)
            hot = known[np.argsort(-moved, kind="stable")[:m]]
            s.compute(np.flatnonzero(near(grid, hot, spacing, finer) & ~s.known), replay, kept, grid)
        s.compute(np.flatnonzero(forced & ~s.known), replay, kept)
        s.interpolate(grid)
        bound = s.bound_truncated(exact, target, p_clean, grid, check, max_error)
        if isinstance(bound, str):  # tau cut too much: raise it and recompute what it cut
            why = f"its truncated positions (tau={tau:g}) {bound}"
            if tau >= 1.0 or s.replays > EXACT_SHARE * n:
                break
            tau = 1.0
            replay, kept = engine_for(tau)
            s.compute(np.flatnonzero(s.computed & ~s.exact), replay, kept)
            continue
        new = s.verify(_sample(s, block, check, grid), exact, target)
        while True:  # the TOP positions that move most are exact, and so are their neighbours' values known
            top = np.argsort(-np.abs(s.probs[:, target].numpy() - p_clean), kind="stable")[:TOP]
            todo, around = top[~s.exact[top]], np.flatnonzero(near(grid, top, 2) & ~s.known)
            if not len(todo) and not len(around):
                break
            s.compute(around, replay, kept, grid)
            s.interpolate(grid)
            new = np.concatenate([new, s.verify(todo, exact, target)])
        s.interpolate(grid)
        error, estimate = s.error(), s.ssim(grid, step, target)
        why = f"SSIM {estimate:.3f} (>= {min_ssim:g} wanted), max |dP| {error:.3g} (<= {max_error:g} wanted)"
        if error <= max_error and estimate >= min_ssim:
            return Drill(s.probs, s.act, s.interpolated.copy(), s.verified.copy(), s.computed & (s.kept_seen < 1),
                         error, estimate, r, tau, rounds)
        if s.replays > EXACT_SHARE * n:
            break
        failing = new[np.abs(s.err[new]) > max_error]
        forced |= near(grid, failing[s.kind[failing] == 1], max(2, step // 2))
        if estimate < min_ssim or not forced.any():
            r = min(1.0, 2 * r)
    return f"drill-down could not meet its bound after {rounds} rounds: {why}"


class _State:
    """The map being assembled: probabilities, activations, and what each position is."""

    def __init__(self, n: int, target: int):
        self.n, self.target, self.probs, self.act = n, target, None, None
        self.spread = np.zeros(n)                    # interpolated: spread of P(target) over its triangle's corners
        self.computed = np.zeros(n, dtype=bool)      # by a replay (approximate, exact where kept == 1)
        self.exact = np.zeros(n, dtype=bool)         # its value is exact (nothing cut, or verified)
        self.verified = np.zeros(n, dtype=bool)
        self.sampled = np.zeros(n, dtype=bool)       # verified in this round (the error measured now)
        self.holdout = np.full(n, np.nan)            # computed in drill-down: result - its linear prediction
        self.holdout_spread = np.full(n, np.nan)     # ... and the spread of P(target) over the prediction's corners
        self.sample_spread = np.full(n, np.nan)      # verified interpolated positions: their corners' spread then
        self.interpolated = np.zeros(n, dtype=bool)
        self.err = np.full(n, np.nan)                # exact - result P(target) where verified, before the fix
        self.kind = np.zeros(n, dtype=np.int8)       # at verification: 1 interpolated, 2 truncated
        self.replays = 0                             # positions replayed (approximate or exact), with repeats
        self.kept_seen = np.ones(n)                   # the share kept by the replay that computed each position

    def _store(self, idx, probs, act):
        if self.probs is None:
            self.probs = torch.zeros(self.n, probs.shape[1], dtype=torch.float64)
            self.act = None if act is None else torch.zeros(self.n, dtype=torch.float64)
        self.probs[idx] = probs
        if act is not None:
            self.act[idx] = act

    def compute(self, idx, replay, kept, grid=None):
        """Positions ``idx`` by ``replay``; with ``grid``, each one's P(target) is first predicted linearly from
        the positions known so far, and the prediction's error kept (``holdout``: a free sample of what
        interpolation misses)."""
        if len(idx):
            guess = None
            if grid is not None and self.probs is not None:
                verts, w = linear_weights(grid, np.flatnonzero(self.known), idx)
                corners = self.probs[verts, self.target].numpy()
                guess = (w * corners).sum(1)
                self.holdout_spread[idx] = _spread(corners, w)
            self._store(idx, *replay(idx))
            self.replays += len(idx)
            if guess is not None:
                self.holdout[idx] = self.probs[idx, self.target].numpy() - guess
            self.computed[idx], self.interpolated[idx] = True, False
            self.exact[idx] = kept[idx] >= 1.0
            self.kept_seen[idx] = kept[idx]

    @property
    def known(self) -> np.ndarray:
        return self.computed | self.verified

    def interpolate(self, grid):
        """Every position not computed, linearly between the computed ones (module docstring)."""
        todo = ~self.known
        self.interpolated, self.spread = todo, np.zeros(self.n)
        if not todo.any():
            return
        idx = np.flatnonzero(todo)
        verts, w = linear_weights(grid, np.flatnonzero(self.known), idx)                   # (M, 3) each
        w = torch.from_numpy(w)
        self.probs[idx] = (w[..., None] * self.probs[verts]).sum(1)
        if self.act is not None:
            self.act[idx] = (w * self.act[verts]).sum(1)
        self.spread[idx] = _spread(self.probs[verts, self.target].numpy(), w.numpy())

    def verify(self, idx, exact, target) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.int64)
        idx = idx[~self.exact[idx]]
        if not len(idx):
            return idx
        probs, act = exact(idx)
        self.err[idx] = (probs[:, target] - self.probs[idx, target]).numpy()
        self.kind[idx] = np.where(self.interpolated[idx], 1, 2)
        self.sample_spread[idx] = np.where(self.interpolated[idx], self.spread[idx], np.nan)
        self._store(idx, probs, act)
        self.verified[idx] = self.exact[idx] = self.sampled[idx] = True
        self.interpolated[idx] = False
        self.replays += len(idx)
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
            self.replays += len(idx)
            return probs, act

        bound = verify(replay, dropped, self.probs, self.act, True, target, p_clean, grid, check, max_error)
        if isinstance(bound, str):
            return bound
        idx = np.flatnonzero(bound.verified & ~self.exact)
        ref_out, ref_act = bound.reference
        self.err[idx] = (ref_out[idx, target] - self.probs[idx, target]).numpy()
        self.kind[idx] = 2
        self._store(idx, ref_out[idx], None if ref_act is None else ref_act[idx])
        self.verified[idx] = self.exact[idx] = self.sampled[idx] = True
        return bound

    def error(self) -> float:
        """The largest |delta P(target)| measured at this round's verified positions."""
        return float(np.nanmax(np.abs(self.err[self.sampled]))) if self.sampled.any() else 0.0

    def ssim(self, grid, step, target) -> float:
        """SSIM of the result's P(target) against its estimated exact map (module docstring)."""
        p = self.probs[:, target].numpy()                                                  # (P,)
        size = np.zeros(self.n)
        unknown = ~self.exact
        i, j = np.divmod(np.arange(self.n), grid[1])
        for kind, where in ((1, unknown & self.interpolated), (2, unknown & ~self.interpolated)):
            src = np.flatnonzero(self.sampled & (self.kind == kind))
            dst = np.flatnonzero(where)
            if not len(dst):
                continue
            if len(src):  # the measured errors nearby (root mean square, Gaussian weights)
                d2 = (i[dst, None] - i[src]) ** 2 + (j[dst, None] - j[src]) ** 2             # (D, S)
                w = np.exp(-0.5 * d2 / step ** 2) + 1e-12
                size[dst] = np.sqrt((w * self.err[src] ** 2).sum(1) / w.sum(1))
            if kind == 1:  # and error^2 = a + b spread^2 fitted over every sample (a, b >= 0), at this spread
                held = np.isfinite(self.holdout)
                errors = np.concatenate([self.holdout[held], self.err[src]])
                spreads = np.concatenate([self.holdout_spread[held], self.sample_spread[src]])
                if len(errors):
                    (a, b), _ = nnls(np.stack([np.ones_like(spreads), spreads ** 2], 1), errors ** 2)
                    size[dst] = np.sqrt(size[dst] ** 2 + a + b * self.spread[dst] ** 2)
        rng = np.random.default_rng(0)
        draws = [ssim((p + size * rng.standard_normal(self.n)).reshape(grid), p.reshape(grid)) for _ in range(DRAWS)]
        return float(np.mean(draws))


def _spread(corners: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(M,) max - min of the (M, 3) corner values that carry weight."""
    return np.where(w > 0, corners, -np.inf).max(1) - np.where(w > 0, corners, np.inf).min(1)


def _sample(s: _State, block, check, grid) -> np.ndarray:
    """One position per block that is neither exact nor verified (module docstring): even blocks the interpolated
    one whose triangle's corners spread most, odd blocks the truncated one that dropped most (else the other kind);
    ties: the one farthest from every computed position (where a spot the computed ones missed is likeliest)."""
    from scipy.ndimage import distance_transform_edt

    if not check:
        return np.zeros(0, dtype=np.int64)
    dropped = 1.0 - s.kept_seen
    far = distance_transform_edt(~s.known.reshape(grid)).reshape(-1)
    far = far / (far.max() + 1.0)                                                           # in [0, 1)
    interp, trunc = ~s.exact & s.interpolated, ~s.exact & s.computed
    picks = []
    for b in np.unique(block):
        here = block == b
        first, second = ((interp, s.spread), (trunc, dropped)) if b % 2 == 0 else \
            ((trunc, dropped), (interp, s.spread))
        for mask, score in (first, second):
            cand = np.flatnonzero(here & mask)
            if len(cand):
                picks.append(cand[np.lexsort((-far[cand], -score[cand]))[0]])
                break
    return np.asarray(picks, dtype=np.int64)
