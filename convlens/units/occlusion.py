"""Occlusion maps: what happens to the prediction when part of the image is hidden.

Zeiler & Fergus, "Visualizing and Understanding Convolutional Networks", ECCV 2014, section 4.2 and
Fig. 7 (https://arxiv.org/abs/1311.2901): slide a square of ``baseline`` value over the image and, at
every position, record (1) P(target class), (2) the most probable class, and (3) the total activation
of one feature map (``layer``/``unit``). If the model really uses the object, P(target) drops where
the square covers it; the class map shows what the model sees instead.

``occlusion(model, x, target, window, stride)`` returns an :class:`OcclusionMap`:

* positions: the square's top-left corner at rows ``0, stride, 2*stride, ... <= H - window`` (and the
  same for columns; a last position short of the border is not added), so the map has
  ``(H - window) // stride + 1`` rows. ``window`` and ``stride`` are in pixels; images may be
  non-square and have any number of channels.
* ``baseline`` is a pixel value in the units the model takes; one number for every channel, or one
  per channel. All channels of the square are set. The default is Zeiler & Fergus's grey square: 0.5
  for a Run (its pixel model takes images in [0, 1] and normalizes them itself; the CLI's default
  too), 0 for a bare module (the mean of normalized input; give the grey of its input space when it
  takes raw pixels).
* P(target) = softmax(model output)[target] (an output that already holds probabilities, rows >= 0
  summing to 1, is used as it is). ``target`` is a class index or name; by default the class the
  model predicts for the unoccluded image.
* ``layer``/``unit``: the sum over positions of channel ``unit`` of the layer's output (for a vector
  output, its element ``unit``) -- Zeiler & Fergus's "total activation in feature map". ``unit=None``
  picks the strongest unit on the unoccluded image.

The model runs in eval mode (BatchNorm uses its running statistics); every module's mode is restored.

**Speed** (``method``): ``"incremental"`` (default) records the forward once and, for each batch of
positions, re-runs only the patches of each layer the square can change (Krypton, Nakandala et al.,
SIGMOD 2019; :mod:`.incremental`), exact up to float rounding. Where the recording cannot be replayed
(control flow on tensor values, untraceable ops, :mod:`.opgraph`) it falls back to ``"full"``:
batched forwards of the occluded images, and says why in ``OcclusionMap.note``. The position that
changes P(target) most is always re-checked with a full forward; a mismatch also falls back.

``"approximate"`` (Krypton's projective-field threshold) lets no layer's patch grow beyond ``tau`` of
its map per axis: changes outside it are dropped, which is faster and not exact. What its
``approx_error`` means (computed in :mod:`.occlusion_bound`):

* A position none of whose patches was cut short (``OcclusionMap.truncated`` False) is exact up to
  float rounding: everything it changes was recomputed.
* Truncated positions are verified by exact incremental inference: first a sample covering the map
  (in each of ``check`` blocks tiling it, default max(4, sqrt(positions)), the position whose patches
  drop the largest share of the units it changes; ties: the one nearest P = 1/2), plus the two where
  the approximate P(target) moves most. There the error of P(target) is measured, and that of its
  log-odds L = log(P / (1 - P)), which does not vanish where the softmax saturates: it shows how far
  the truncation moves the output even where P did not move. At an unverified truncated position,
  L is taken to be off by at most 3 x (the largest error of L per share dropped at the verified
  positions) x (its own share dropped), which bounds its |delta P(target)| by
  sigma(|L|) - sigma(|L| - that error): positions near P = 1/2, or that drop more, get wider bounds.
  Every position whose bound exceeds ``max_error`` is verified as well, until none is left.
* ``approx_error`` is the largest of these over the map: the measured error where verified, the
  derived bound elsewhere, 0 where exact. ``bound`` says which kind it is. ``"guaranteed"``: every
  truncated position was verified (done whenever they are at most a quarter of the map), so
  ``approx_error`` bounds |delta P(target)| at every position, up to float rounding. ``"sampled"``:
  it is measured at the verified positions (``verified``; ``verified_error`` is the largest error
  found there) and extrapolated to the others; not a proof. On 1,000 random confident conv nets
  (tests/test_occlusion_bound.py's kind), 141 maps were kept with a sampled bound: it was below the
  true error once (0.0038 against 0.0058), and no kept map was off by more than ``max_error``.
* The map is recomputed exactly (``method`` then says ``"incremental"`` and ``note`` why) when a
  verified position is off by more than ``max_error``, or when keeping every bound within
  ``max_error`` would need more than a quarter of the positions verified (exact is cheaper then).
  Positions it already replayed exactly (the verified ones; with drill-down at ``tau`` 1 every computed
  one) are kept, and only the rest replayed (``note`` says how many were kept).
  ``check=0`` verifies nothing: ``approx_error`` is None and ``note`` says the error is unknown.
* The bound is on P(target); the top class, its probability and the activation map are approximate
  too. The exact replay behind the verification is checked with a full forward at one position, as
  in exact mode.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import ConvLensError, InputError, expect
from ..layers import model_label
from ..inputs import as_images, forward_errors
from .occlusion_bound import verify
from .occlusion_drill import Drill, default_coarse_stride, drill_down as _drill_down
from .occlusion_map import OcclusionMap, OcclusionMaps, load_maps, save_maps  # noqa: F401  (the results, re-exported)

METHODS = ("incremental", "full", "approximate")
EXACT_TOL = 1e-4  # |delta probability| above which a re-checked position means the replay is wrong


# ---- the computation ------------------------------------------------------------------------------------

def occlusion(model_or_run, x, target=None, window: int | None = None, stride: int | None = None,
              baseline=None, layer: str | None = None, unit: int | None = None, *, batch_size: int = 32,
              method: str = "incremental", tau: float | None = None, max_error: float = 0.02, rho: float = 0.75,
              check: int | None = None, drill_down: float | None = None, coarse_stride: int | None = None,
              min_ssim: float = 0.9, progress: bool = False):
    """Occlusion maps of one image (see the module docstring); for an (N, C, H, W) batch, ``OcclusionMaps``
    (one map per image, ``maps[i]``, plotted and saved together).

    ``model_or_run``: a Run or run directory (``x`` in [0, 1]) or an ``nn.Module`` (``x`` as it takes
    it). ``x``: (C, H, W) or (N, C, H, W). ``window`` defaults to a quarter of the shorter side, ``stride``
    to a quarter of the window. ``batch_size``: positions per forward. ``rho``: a layer whose patch
    covers this fraction of its map is computed whole (Krypton's threshold; speed only).
    ``check``: positions re-computed with full forwards (default 1); for ``approximate``, the blocks of
    the map sampled for verification (default max(4, sqrt(positions))).
    ``method="approximate"``: ``tau`` is the largest patch per axis, as a fraction of its map (default 0.35; with
    ``drill_down``, 1: drill-down computes its positions whole unless ``tau`` is given); the map is
    recomputed exactly unless its error can be kept within ``max_error`` (module docstring).
    ``drill_down=r`` (approximate only): a coarse map at ``coarse_stride`` (a multiple of ``stride``; default
    the largest up to min(4 x stride, window)), the fine stride only near its top-``r`` fraction of positions,
    the rest interpolated (``OcclusionMap.interpolated``); kept when its measured max |delta P| <= ``max_error``
    and estimated SSIM >= ``min_ssim``, else widened and finally recomputed exactly (:mod:`.occlusion_drill`).
    """
    from ..training.runs import model_and_run
    from ..targets import target_indices

    model, run = model_and_run(model_or_run)
    images = as_images(x, model)
    baseline = (0.5 if run is not None else 0.0) if baseline is None else baseline
    tau = (0.35 if drill_down is None else 1.0) if tau is None else tau
    options = dict(batch_size=batch_size, method=method, tau=tau, max_error=max_error, rho=rho, check=check,
                   drill_down=drill_down, coarse_stride=coarse_stride, min_ssim=min_ssim, progress=progress)
    if len(images) > 1:
        targets = [None] * len(images) if target is None else target_indices(
            target, len(images), class_names=getattr(model, "class_names", None)).tolist()
        return OcclusionMaps(occlusion(model, img, t, window, stride, baseline, layer, unit, **options)
                             for img, t in zip(images, targets))
    c, h, w = images.shape[1:]
    window = max(1, min(h, w) // 4) if window is None else window
    if not _is_int(window) or not 1 <= window <= min(h, w):
        raise expect("window", f"an int in [1, {min(h, w)}] (the image is {h}x{w})", window)
    stride = max(1, window // 4) if stride is None else stride
    if not _is_int(stride) or stride < 1:
        raise expect("stride", "a positive int (pixels between positions)", stride)
    if not _is_int(batch_size) or batch_size < 1:
        raise expect("batch_size", "a positive int", batch_size)
    if check is not None and (not _is_int(check) or check < 0):
        raise expect("check", "an int >= 0", check)
    if method not in METHODS:
        raise expect("method", f"one of {METHODS}", method)
    for name, v in (("tau", tau), ("rho", rho), ("max_error", max_error), ("min_ssim", min_ssim)) + \
            ((("drill_down", drill_down),) if drill_down is not None else ()):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1:
            raise expect(name, "a fraction in (0, 1]", v)
    if drill_down is not None and method != "approximate":
        raise expect("method", "'approximate' when drill_down is given", method)
    if coarse_stride is not None:
        if drill_down is None:
            raise InputError(f"coarse_stride is given ({coarse_stride}) but drill_down is None; give drill_down too")
        if not _is_int(coarse_stride) or coarse_stride < stride or coarse_stride % stride:
            raise expect("coarse_stride", f"a multiple of stride ({stride}): {stride}, {2 * stride}, ...",
                         coarse_stride)
    if unit is not None and layer is None:
        raise InputError(f"unit is given ({unit}) but layer is None; name the layer the unit belongs to")
    return _occlusion(model, run, images, target, window, stride, _baseline(baseline, c), layer, unit, **options)


def _occlusion(model, run, images, target, window, stride, baseline, layer, unit, *, batch_size, method, tau,
               max_error, rho, check, drill_down, coarse_stride, min_ssim, progress) -> OcclusionMap:
    from ..layers import resolve
    from ..taps import eval_mode, model_device
    from ..targets import class_index, class_names_of

    path, module = resolve(model, layer) if layer is not None else (None, None)
    device, dtype = model_device(model)
    x0 = images.to(device, dtype)                                                           # (1, C, H, W)
    patch = torch.tensor(baseline, device=device, dtype=dtype).reshape(1, -1, 1, 1)          # (1, C, 1, 1)
    h, w = x0.shape[-2:]
    rows, cols = np.arange(0, h - window + 1, stride), np.arange(0, w - window + 1, stride)
    positions = np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)        # (P, 2)
    names = class_names_of(model) or []
    if drill_down is not None:
        coarse_stride = default_coarse_stride(window, stride) if coarse_stride is None else coarse_stride
        drill = dict(r=float(drill_down), step=coarse_stride // stride, min_ssim=min_ssim)
        check = max(4, math.ceil(math.sqrt(len(positions)) / 3)) if check is None else check
    else:
        drill = None
    if check is None:
        check = max(4, math.ceil(math.sqrt(len(positions)))) if method == "approximate" else 1
    with eval_mode(model), torch.no_grad():
        with forward_errors(model, x0):
            clean, totals = _forward(model, x0, path, None)
        if not isinstance(clean, torch.Tensor) or clean.dim() != 2 or clean.shape[0] != 1:
            got = f"shape {tuple(clean.shape)}" if isinstance(clean, torch.Tensor) else type(clean).__name__
            raise InputError(f"occlusion needs a model that outputs class scores (N, K); got {got}")
        as_probs = _is_probability(clean)
        p0 = _probabilities(clean, as_probs)[0]
        k = p0.shape[0]
        target = int(p0.argmax()) if target is None else class_index(target, names, k)
        if path is not None:
            unit = _unit(totals, unit, layer)
        sweep = _Sweep(model, x0, positions, window, patch, path, module, unit, batch_size, progress)
        out, act, used, note, bound = sweep.run(method, tau, rho, check, max_error, as_probs, target,
                                                float(p0[target]), drill)
    probs = _probabilities(out, as_probs)                                                    # (P, K)
    shape = (len(rows), len(cols))
    act_clean = float(totals[unit]) if path is not None else None
    if isinstance(bound, Drill):
        checked = dict(bound="sampled", verified_error=bound.error, verified=bound.verified.reshape(shape),
                       truncated=bound.truncated.reshape(shape), interpolated=bound.interpolated.reshape(shape),
                       ssim=bound.ssim, drill_down=bound.r, coarse_stride=int(drill["step"] * stride))
        error, tau = bound.error, bound.tau
    else:
        checked = {} if bound is None else dict(bound=bound.kind, verified_error=bound.found,
                                                verified=bound.verified.reshape(shape),
                                                truncated=bound.truncated.reshape(shape))
        error = None if bound is None else bound.error
    return OcclusionMap(probs[:, target].reshape(shape).numpy(), probs.argmax(1).reshape(shape).numpy(),
                        probs.max(1).values.reshape(shape).numpy(),
                        None if act is None else act.reshape(shape).cpu().numpy(), rows, cols, int(window),
                        int(stride), tuple(baseline), target, float(p0[target]), int(p0.argmax()), tuple(names),
                        layer, unit, act_clean, used, note, error,
                        tau if used == "approximate" else None, images[0].detach().cpu().float().numpy(),
                        model=_label(model, run), **checked)


class _Sweep:
    """The occluded forwards of every position: incremental, approximate or full (module docstring)."""

    def __init__(self, model, x0, positions, window, patch, path, module, unit, batch_size, progress):
        self.model, self.x0, self.positions, self.window, self.patch = model, x0, positions, window, patch
        self.path, self.module, self.unit, self.batch_size, self.progress = path, module, unit, batch_size, progress
        self.graph, self.note = None, ""
        self.known = None  # (done (P,) bool, outputs, activations) the exact engine computed before a fall back

    def run(self, method, tau, rho, check, max_error, as_probs, target, p_clean, drill=None):
        """(outputs (P, K), activations (P,) or None, method used, note, Bound, Drill or None)."""
        exact = None if method == "full" else self._engine(None, rho)
        if exact is not None and method == "approximate":
            kept = self._drill(exact, tau, rho, check, max_error, as_probs, target, p_clean, **drill) if drill else \
                self._approximate(exact, tau, rho, check, max_error, as_probs, target, p_clean)
            if kept is not None:
                return kept
            check = min(check, 1)  # the exact map is re-checked as in exact mode
        found = None if exact is None else self._replay_rest(exact)
        if found is None:
            return self._all_full()
        out, act = found
        idx = self._most_moved(out, np.ones(len(out), dtype=bool), check, as_probs, target, p_clean)
        if check and not self._agrees(idx, out[idx], None if act is None else act[idx], as_probs):
            return self._all_full()
        return out, act, "incremental", self.note, None

    def _approximate(self, exact, tau, rho, check, max_error, as_probs, target, p_clean):
        """The approximate result with its Bound, or None to compute the map exactly (why in the note)."""
        engine = self._engine(tau, rho)
        found = None if engine is None else self._replay(engine)
        if found is None:
            return None
        out, act = found
        if check == 0:
            return out, act, "approximate", "approximate mode not verified (check=0): its error is unknown", None
        bound = verify(lambda idx: self._replay_exact(exact, idx), 1.0 - engine.kept, out, act, as_probs, target,
                       p_clean, self.grid, check, max_error)
        if isinstance(bound, str):
            self.note = f"approximate mode (tau={tau}) {bound}; recomputed exactly"
            return None
        ref_out, ref_act = bound.reference  # the exact replay behind it is checked as the exact path's is
        idx = self._most_moved(ref_out, ~bound.truncated | bound.verified, 1, as_probs, target, p_clean)
        if not self._agrees(idx, ref_out[idx], None if ref_act is None else ref_act[idx], as_probs):
            return self._all_full()
        return out, act, "approximate", self.note, bound

    def _drill(self, exact, tau, rho, check, max_error, as_probs, target, p_clean, *, r, step, min_ssim):
        """The drilled-down result (:mod:`.occlusion_drill`) with its Drill, or None to compute the map exactly."""

        def replay(engine):
            def probs(idx):
                found = self._replay_exact(engine, idx) if engine is exact else self._replay(engine, idx)
                if found is None:
                    raise _Unreplayable
                return _probabilities(found[0], as_probs), found[1]
            return probs

        def engine_for(t):
            engine = exact if t >= 1.0 else self._engine(t, rho)  # tau 1 cuts nothing: the exact plan
            if engine is None:
                raise _Unreplayable
            return replay(engine), engine.kept

        try:
            found = _drill_down(engine_for, replay(exact), self.grid, step, r, tau, target, p_clean, check,
                                max_error, min_ssim)
        except _Unreplayable:
            return None
        if isinstance(found, str):
            self.note = f"approximate mode (tau={tau}, drill_down={r}): {found}; recomputed exactly"
            return None
        # outputs whose softmax is the probabilities (interpolated positions have no logits of their own)
        out = found.probs if as_probs else found.probs.clamp_min(1e-300).log()
        among = ~found.interpolated & (found.verified | ~found.truncated)  # exact values
        idx = self._most_moved(out, among, 1, as_probs, target, p_clean)
        if not self._agrees(idx, out[idx], None if found.act is None else found.act[idx], as_probs):
            return self._all_full()
        return out, found.act, "approximate", self.note, found

    def _all_full(self):
        return (*self._batches(self._full), "full", self.note, None)

    @staticmethod
    def _most_moved(out, among, n, as_probs, target, p_clean) -> np.ndarray:
        """The ``n`` positions of ``among`` (P,) bool where P(target) moves most from the clean image (sorted)."""
        idx = np.flatnonzero(among)
        moved = (_probabilities(out[idx], as_probs)[:, target] - p_clean).abs()
        return np.sort(idx[torch.argsort(moved, descending=True)[:n].numpy()])

    @property
    def grid(self) -> tuple[int, int]:
        return len(np.unique(self.positions[:, 0])), len(np.unique(self.positions[:, 1]))

    def _agrees(self, idx, out, act, as_probs) -> bool:
        """Whether replayed outputs (and activations) at positions ``idx`` equal full forwards (else a note)."""
        ref_out, ref_act = self._full(idx)
        bad = float((_probabilities(ref_out, as_probs) - _probabilities(out, as_probs)).abs().max())
        if act is not None:
            bad = max(bad, float((ref_act - act.to(ref_act)).abs().max() / (1.0 + ref_act.abs().max())))
        if bad > EXACT_TOL:
            self.note = f"the incremental result differed from a full forward by {bad:.2e}; full forwards used"
        return bad <= EXACT_TOL

    def _engine(self, tau, rho):
        """The incremental engine of this forward (``tau``: approximate), or None (the reason in ``self.note``)."""
        from .incremental import Incremental
        from .opgraph import record

        if self.graph is None:  # the forward itself may fail: the full path will then say how
            self.graph = self._guarded("recording the forward", lambda: record(self.model, self.x0.clone(),
                                                                             self.module))
            if self.graph is None:
                return None
        if self.graph.problem is not None:
            self.note = f"cannot replay this forward incrementally: {self.graph.problem}; full forwards used"
            return None
        if self.graph.batch_coupled:
            self.batch_size = 1  # batch norm with batch statistics: every image on its own, as in a naive loop
        return self._guarded("incremental replay", lambda: Incremental(self.graph, self.positions, self.window,
                                                                       rho=rho, tau=tau))

    def _replay(self, engine, idx=None):
        """(outputs, activations) of positions ``idx`` (default: all) by ``engine``, or None (why in the note)."""
        return self._guarded("incremental replay",
                             lambda: self._batches(lambda rows: engine.run(rows, self.patch, self.unit), idx))

    def _replay_exact(self, exact, idx):
        """``_replay`` by the exact engine, its results kept for the exact map should approximation fall back."""
        found = self._replay(exact, idx)
        if found is not None:
            out, act = found
            if self.known is None:
                n = len(self.positions)
                self.known = (np.zeros(n, dtype=bool), out.new_zeros(n, *out.shape[1:]),
                              None if act is None else act.new_zeros(n))
            done, outs, acts = self.known
            done[idx], outs[idx] = True, out
            if act is not None:
                acts[idx] = act
        return found

    def _replay_rest(self, exact):
        """The exact map: the positions an approximation already computed exactly, and the rest replayed."""
        if self.known is None:
            return self._replay(exact)
        done, outs, acts = self.known
        rest = np.flatnonzero(~done)
        if len(rest):
            found = self._replay(exact, rest)
            if found is None:
                return None
            outs[rest] = found[0]
            if acts is not None:
                acts[rest] = found[1]
        self.note += f" ({int(done.sum())} positions it had computed exactly kept)"
        return outs, acts

    def _guarded(self, what: str, fn):
        """``fn()``, or None with the reason in the note when it raises anything but a ConvLensError: a forward
        the recording or the planner did not foresee, which the full forwards then compute exactly."""
        try:
            return fn()
        except ConvLensError:
            raise
        except Exception as err:  # noqa: BLE001
            self.note = f"{what} failed ({type(err).__name__}: {err}); full forwards used"
            return None

    def _batches(self, fn, idx=None):
        from tqdm.auto import tqdm

        idx = np.arange(len(self.positions)) if idx is None else idx
        outs, acts = [], []
        for lo in tqdm(range(0, len(idx), self.batch_size), desc="occlusion", unit="batch",
                       disable=not self.progress):
            out, act = fn(idx[lo:lo + self.batch_size])
            outs.append(out.detach().to("cpu", torch.float64))
            acts.append(act)
        act = None if acts[0] is None else torch.cat([a.detach().cpu().double() for a in acts])
        return torch.cat(outs), act

    def _full(self, idx: np.ndarray):
        """Outputs and activations for positions ``idx`` by plain forwards of the occluded images."""
        images = self.x0.repeat(len(idx), 1, 1, 1)                                          # (B, C, H, W)
        for i, (r, c) in enumerate(self.positions[idx]):
            images[i, :, r:r + self.window, c:c + self.window] = self.patch[0]
        if self.batch_size == 1 and len(idx) > 1:  # a model that mixes images of a batch
            parts = [_forward(self.model, images[i:i + 1], self.path, self.unit) for i in range(len(idx))]
            return torch.cat([p[0] for p in parts]), None if self.path is None else torch.cat([p[1] for p in parts])
        return _forward(self.model, images, self.path, self.unit)


class _Unreplayable(Exception):
    """A replay failed (the reason is in the sweep's note): the map is computed another way."""


def _forward(model, images, path, unit):
    """(outputs, per-image total activation of ``unit`` (B,) float64 -- or every unit's (C,) when ``unit``
    is None -- or None without a layer)."""
    from ..taps import capture

    if path is None:
        return model(images), None
    if unit is None:
        with capture(model, [path]) as acts:
            out = model(images)
        if path not in acts:
            raise InputError(f"layer {path!r} did not run during the forward pass; name a layer the model calls")
        a = acts[path]
        if not isinstance(a, torch.Tensor) or a.dim() < 2:
            raise InputError(f"layer {path!r} must output a tensor (N, C, ...); got "
                             f"{tuple(a.shape) if isinstance(a, torch.Tensor) else type(a).__name__}")
        return out, a[0].double().reshape(a.shape[1], -1).sum(1)                         # (C,)
    total = lambda a: a[:, unit].double().reshape(len(a), -1).sum(1)  # noqa: E731  (B,)
    with capture(model, [path], transform=total) as acts:
        out = model(images)
    return out, acts[path]


def _unit(totals: torch.Tensor, unit, layer) -> int:
    if unit is None:
        return int(totals.argmax())
    if not _is_int(unit) or not 0 <= unit < len(totals):
        raise expect("unit", f"a channel of {layer} in [0, {len(totals) - 1}]", unit)
    return int(unit)


def _baseline(baseline, channels: int) -> tuple[float, ...]:
    try:
        values = np.asarray(baseline.detach().cpu() if isinstance(baseline, torch.Tensor) else baseline,
                            dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise expect("baseline", f"a number or one number per channel ({channels})", baseline) from None
    if len(values) == 1:
        values = np.repeat(values, channels)
    if len(values) != channels or not np.isfinite(values).all():
        raise expect("baseline", f"a finite number or {channels} of them (one per channel)", baseline)
    return tuple(float(v) for v in values)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _is_probability(out: torch.Tensor) -> bool:
    out = out.detach().double()
    return bool((out >= 0).all() and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-5))


def _probabilities(out: torch.Tensor, as_probs: bool) -> torch.Tensor:
    out = out.detach().to("cpu", torch.float64)
    return out if as_probs else torch.softmax(out, dim=1)


def _label(model, run) -> str:
    if run is not None:
        return (run.manifest.get("arch") or {}).get("name") or str(run.dir or "run")
    return model_label(model)


def default_layer(model) -> str | None:
    """The last convolution's feature maps: its lecture name's ReLU (``relu4`` for ``conv4``) when the model
    has lecture names (grammar nets), else the path of the last ``nn.Conv2d`` registered (as the user writes
    it); None without convolutions."""
    from torch import nn

    from ..layers import lecture_names, user_path

    convs = [user_path(model, p) for p, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    names = lecture_names(model)
    name = {user_path(model, p): n for n, p in names.items()}.get(convs[-1])
    if name and name.startswith("conv") and "relu" + name[4:] in names:
        return "relu" + name[4:]
    return name or convs[-1]
