"""The error bound of approximate occlusion: which positions to verify, and what they say about the rest.

What the bound means is stated in :mod:`.occlusion`'s docstring; this is how it is computed. The
approximate replay (:mod:`.incremental`, ``tau``) says per position which share of the units it may
change its cut patches dropped (0: exact). ``verify`` recomputes a sample of the truncated positions
exactly (``replay``), measures their error in P(target) and in its log-odds, extrapolates the log-odds
error to the unverified positions in proportion to what they drop, turns it into a bound on
|delta P(target)|, and verifies every position whose bound is still above ``max_error``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

SAFETY = 3.0  # margin on the log-odds error assumed where not verified
VERIFY_SHARE = 0.25  # verifying more of the map than this costs more than recomputing it exactly


@dataclass(frozen=True)
class Bound:
    """What approximate mode verified."""

    error: float            # bound on |delta P(target)| at every position, "guaranteed" or "sampled" (kind)
    kind: str
    found: float            # the largest |delta P(target)| at the verified positions
    verified: np.ndarray    # (P,) bool: recomputed exactly
    truncated: np.ndarray   # (P,) bool: some layer's patch was cut short (the others are exact)
    reference: tuple        # (outputs (P, K), activations (P,) or None): exact where verified, else approximate


def verify(replay, dropped, out, act, as_probs, target, p_clean, grid, check, max_error) -> Bound | str:
    """The Bound of the approximate ``out`` (P, K) and ``act`` (P,) or None, or why there is none within
    ``max_error`` (a phrase for the note). ``replay(idx)``: exact (outputs, activations) at positions
    ``idx``, or None when that fails. ``dropped`` (P,): the share each position dropped. ``grid``: the
    positions' (rows, cols); ``check``: the blocks of the first sample."""
    n, truncated = len(out), dropped > 0
    odds = log_odds(out, as_probs, target)                                                  # (P,)
    p = _sigmoid(odds)                                                                      # (P,) P(target)
    todo = sample(grid, dropped, odds, np.abs(p - p_clean), check)
    budget = max(int(todo.sum()), int(VERIFY_SHARE * n))
    if truncated.sum() <= budget:
        todo = truncated  # affordable: verify every truncated position, and the bound is guaranteed
    verified, err, odds_err, bound = np.zeros(n, dtype=bool), np.zeros(n), np.zeros(n), np.zeros(n)
    ref_out, ref_act = out.clone(), None if act is None else act.clone()
    while todo.any():
        idx = np.flatnonzero(todo)
        if verified.sum() + len(idx) > budget:
            return (f"would need more than {budget} of the {n} positions recomputed to bound its error "
                    f"within max_error={max_error:g}")
        found = replay(idx)
        if found is None:
            return "could not be verified"
        ref_out[idx] = found[0]
        if act is not None:
            ref_act[idx] = found[1]
        verified[idx] = True
        exact_odds = log_odds(found[0], as_probs, target)
        err[idx], odds_err[idx] = np.abs(_sigmoid(exact_odds) - p[idx]), np.abs(exact_odds - odds[idx])
        if err.max() > max_error:
            return f"was off by {err.max():.3g} > max_error={max_error:g} at a verified position"
        per_drop = (odds_err[verified] / dropped[verified]).max()  # log-odds error per share dropped
        bound = np.where(verified, err, p_bound(odds, SAFETY * per_drop * dropped))
        todo = bound > max_error
    kind = "sampled" if (truncated & ~verified).any() else "guaranteed"
    return Bound(float(bound.max()), kind, float(err.max()), verified, truncated, (ref_out, ref_act))


def sample(grid, dropped, odds, moved, n) -> np.ndarray:
    """(P,) bool: in each of about ``n`` blocks tiling the ``grid`` (R, Q) of positions, the truncated position
    that drops most (then: nearest the decision boundary, smallest |log-odds|), and the two truncated
    positions whose approximate P(target) ``moved`` most."""
    r, q = grid
    block = blocks(grid, n)                                                                 # (P,)
    order = np.lexsort((np.abs(odds), -dropped, block))
    order = order[dropped[order] > 0]
    pick = np.zeros(r * q, dtype=bool)
    pick[order[np.unique(block[order], return_index=True)[1]]] = True
    candidates = np.flatnonzero(dropped > 0)
    pick[candidates[np.argsort(-moved[candidates])[:2]]] = True
    return pick


def blocks(grid, n) -> np.ndarray:
    """(P,) the block of each position of the ``grid`` (R, Q), row-major, for about ``n`` blocks tiling it."""
    r, q = grid
    rows = min(r, max(1, round(math.sqrt(n * r / q))))
    cols = min(q, math.ceil(n / rows))
    i, j = np.divmod(np.arange(r * q), q)
    return (i * rows // r) * cols + j * cols // q


def log_odds(out: torch.Tensor, as_probs: bool, target: int) -> np.ndarray:
    """(P,) log(P(target) / (1 - P(target))) of outputs (P, K), from log-probabilities so that it does not
    saturate where P does (``as_probs``: the outputs are probabilities already)."""
    out = out.detach().to("cpu", torch.float64)
    logp = out.clamp_min(1e-300).log() if as_probs else torch.log_softmax(out, 1)
    rest = torch.cat([logp[:, :target], logp[:, target + 1:]], 1)
    return (logp[:, target] - torch.logsumexp(rest, 1)).numpy()


def p_bound(odds: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """(P,) the largest |delta P| that log-odds errors of at most ``eps`` (P,) can cause: sigma(|L|) - sigma(|L| - eps),
    written as sigma(eps - |L|) - sigma(-|L|) so that it stays accurate near P = 0 or 1."""
    a = np.abs(odds)
    return np.nan_to_num(_sigmoid(eps - a) - _sigmoid(-a), nan=1.0)


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return torch.sigmoid(torch.from_numpy(np.asarray(v, dtype=np.float64))).numpy()
