"""SmoothGrad and Integrated Gradients: gradient maps averaged over many copies of the image, batched.

* ``smoothgrad(model, x, target, method="saliency", n=50, noise=0.15)``: Smilkov et al., "SmoothGrad:
  removing noise by adding noise", 2017 (https://arxiv.org/abs/1706.03825), eq. 3: the mean of a map
  ``M`` over ``n`` copies of the image with Gaussian noise, ``1/n sum M(x + N(0, sigma^2))``, where the
  noise level is relative to the input's range as in the paper, ``sigma = noise * (max x - min x)`` per
  image (10-20% works best, Sec. 4.1; the paper's ``n`` is 50). ``method``: ``"saliency"`` (the mean of
  convlens.saliency's ``max_c |dS_c/dI|``, (N, H, W)), ``"gradient"`` (the mean raw gradient, the paper's
  ``M_c``, (N, C, H, W)), ``"deconvnet"`` or ``"guided"`` (the mean projection, (N, C, H, W)). The noise
  comes from a private generator seeded with ``seed``, drawn per pass in the order Captum's ``NoiseTunnel``
  draws it from the global one (per pass, every image's copies, image by image), so with the same seed and
  samples per pass the two add the same noise. A Run's pixel model takes noisy copies outside [0, 1] as
  they are (the paper does not clip).
* ``integrated_gradients(model, x, target, baseline=None, steps=50)``: Sundararajan, Taly & Yan, "Axiomatic
  Attribution for Deep Networks", ICML 2017 (https://arxiv.org/abs/1703.01365), eq. 1 and Sec. 5:
  ``(x - x') * integral_0^1 dS_c(x' + a (x - x'))/dx da``, the integral by ``method``: ``"gausslegendre"``
  (default, as Captum; exact for polynomials of degree < 2 steps) or a Riemann sum, ``"riemann_right"``
  (the paper's ``k/m``, k = 1..m), ``"riemann_left"``, ``"riemann_middle"``, ``"riemann_trapezoid"``
  (weights 1/(m-1), halved at both ends). ``baseline``: None is 0 (the paper's black image for a Run's
  [0, 1] pixels; the mean image for a model taking normalized input), a number, or an image or batch of
  the images' shape. By completeness (the paper's axiom) the attributions add up to ``S_c(x) - S_c(x')``;
  the result reports how far they are from it (``delta``, ``completeness_error``: Sec. 5 suggests a few
  percent, else more steps).

Both run on the one gradient core (``units/backprop.py``) in passes of ``batch_size`` rows: SmoothGrad's
noisy copies and IG's points on the path, every image of the batch in each pass; targets are fixed on the
clean images first (None: the predicted class; IG's scores at the images and the baselines come from the same
forward), never re-predicted on a noisy copy. On the CPU the rows of a pass are laid out channels-last (NHWC),
the layout oneDNN's convolutions run in natively: on EfficientNet-Lite0 at 224 that made a pass 1.2x faster and
its gradient 15x closer to a float64 reference (NCHW float32: 3% off at the worst pixel, NHWC: 0.2%); on the
demo net both are within 2e-7. A forward that needs contiguous tensors (``x.view(n, -1)`` after a
convolution) fails in that layout; the method then runs every pass as given. Batch norm in eval mode is a
per-channel affine map (``scale = weight / sqrt(running_var + eps)``), and a pass differentiates it as one,
``grad * scale`` (:class:`_FrozenBatchNorm`; the forward is PyTorch's own). PyTorch's own backward also
reduces over the batch for the weight's gradient and keeps the layer's input alive for it: on
EfficientNet-Lite0 at 224 (49 batch norms) this made a pass of 10 rows take 0.93x the time, one of 20 rows
0.83x (the lower peak memory spares glibc giving the heap back and faulting it in again: 66,000 page faults a
pass before, none after); on the demo net about the same. A batch norm on batch statistics (``track_running_stats=
False``) keeps PyTorch's backward.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from ..errors import ShapeError, expect
from ..inputs import as_images, forward_errors
from ..taps import eval_mode
from ..targets import class_names_of, target_indices
from .backprop import _checked_model, _class_seed, _model_and_run, _label, gradient_of

__all__ = ["smoothgrad", "integrated_gradients", "IGResult", "SMOOTHGRAD_METHODS", "IG_METHODS", "resolve_targets"]

SMOOTHGRAD_METHODS = ("saliency", "gradient", "deconvnet", "guided")
IG_METHODS = ("gausslegendre", "riemann_right", "riemann_left", "riemann_middle", "riemann_trapezoid")
_RULE = {"saliency": "gradient", "gradient": "gradient", "deconvnet": "deconvnet", "guided": "guided"}


def smoothgrad(model, x, target=None, *, method: str = "saliency", n: int = 50, noise: float = 0.15,
               seed: int = 0, batch_size: int = 64) -> torch.Tensor:
    """SmoothGrad of ``method`` (module docstring): (N, H, W) for "saliency", else (N, C, H, W).

    ``n``: noisy copies per image; ``noise``: the noise's standard deviation as a fraction of each image's
    value range; ``seed``: of the noise (the global RNG is not touched); ``batch_size``: rows per pass
    (``max(1, batch_size // N)`` copies of each of the N images).
    """
    if method not in SMOOTHGRAD_METHODS:
        raise expect("method", f"one of {SMOOTHGRAD_METHODS}", method)
    _positive("n", n)
    _positive("batch_size", batch_size)
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not 0 <= noise < float("inf"):
        raise expect("noise", "a number >= 0 (the noise's std as a fraction of the image's range)", noise)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise expect("seed", "an int", seed)
    net = _checked_model(_model_and_run(model)[0], _RULE[method])
    images = as_images(x, net)
    count, passes = len(images), _Passes(images)
    targets = passes.run(lambda rows: _scores_and_targets(net, rows, count, target), images)[1]  # (N,)
    sigma = noise * (images.amax((1, 2, 3)) - images.amin((1, 2, 3)))            # (N,)
    per = max(1, min(n, batch_size // count))                                     # copies per image per pass
    gen = torch.Generator(device=images.device).manual_seed(int(seed))
    total, done = None, 0
    while done < n:
        k = min(per, n - done)
        rows = images.repeat_interleave(k, 0)                                     # (N*k, C, H, W) image-major
        std = sigma.repeat_interleave(k).view(-1, 1, 1, 1)                        # (N*k, 1, 1, 1)
        noisy = torch.empty_like(rows).normal_(generator=gen).mul_(std).add_(rows)  # = rows + normal(0, std)
        grad = passes.gradient(net, noisy, _class_seed(net, targets.repeat_interleave(k)), rule=_RULE[method])
        maps = grad.abs().amax(1) if method == "saliency" else grad               # (N*k, ...)
        part = maps.view(count, k, *maps.shape[1:]).sum(1)                        # (N, ...)
        total = part if total is None else total + part
        done += k
    return (total / n).contiguous()


def integrated_gradients(model, x, target=None, *, baseline=None, steps: int = 50, method: str = "gausslegendre",
                         batch_size: int = 64) -> "IGResult":
    """Integrated Gradients of images ``x`` for class ``target`` (module docstring) -> :class:`IGResult`:
    ``.attributions`` (N, C, H, W), the scores at the image and the baseline, and the completeness error.

    ``steps``: points on the path (``method``'s nodes); ``batch_size``: rows per pass
    (``max(1, batch_size // N)`` points of each of the N images).
    """
    if method not in IG_METHODS:
        raise expect("method", f"one of {IG_METHODS}", method)
    _positive("steps", steps)
    _positive("batch_size", batch_size)
    if method == "riemann_trapezoid" and steps < 2:
        raise expect("steps", "an int >= 2 for the trapezoid rule (both ends of the path)", steps)
    net, run = _model_and_run(model)
    net = _checked_model(net, "gradient")
    images = as_images(x, net)
    base = _baseline(baseline, images)                                            # (N, C, H, W)
    count, diff, passes = len(images), images - base, _Passes(images)
    scores, targets = passes.run(lambda rows: _scores_and_targets(net, rows, count, target),
                                 torch.cat([images, base]))                       # (2N, K), (N,)
    scores = scores.gather(1, targets.repeat(2)[:, None])[:, 0]                   # (2N,) images, then baselines
    alphas, weights = _nodes(steps, method)                                       # (steps,) float64 each
    per = max(1, min(steps, batch_size // count))                                 # points per image per pass
    total, start, step = torch.zeros_like(images), passes.layout(base)[None], passes.layout(diff)[None]
    for lo in range(0, steps, per):
        a = torch.as_tensor(alphas[lo:lo + per], dtype=images.dtype, device=images.device)   # (k,)
        w = torch.as_tensor(weights[lo:lo + per], dtype=images.dtype, device=images.device)
        k = len(a)
        points = (start + a.view(k, 1, 1, 1, 1) * step).flatten(0, 1)            # (k*N, C, H, W) alpha-major
        grad = passes.gradient(net, points, _class_seed(net, targets.repeat(k)))  # (k*N, C, H, W)
        total += (grad.view(k, count, *grad.shape[1:]) * w.view(k, 1, 1, 1, 1)).sum(0)
    return IGResult(attributions=diff * total, targets=targets, scores=scores[:count], baseline_scores=scores[count:],
                    steps=int(steps), method=method, images=images, model=_label(net, run))


class _Passes:
    """How the rows of a pass run (module docstring): channels-last on the CPU, as given from the first forward
    that refused it on; eval-mode batch norm differentiated as the affine map it is."""

    def __init__(self, images: torch.Tensor):
        self.nhwc = images.device.type == "cpu"

    def layout(self, rows: torch.Tensor) -> torch.Tensor:
        return rows.contiguous(memory_format=torch.channels_last if self.nhwc else torch.contiguous_format)

    def run(self, forward, rows: torch.Tensor):
        """``forward(rows)`` in this layout."""
        if self.nhwc:
            try:
                return forward(self.layout(rows))
            except ShapeError as err:  # the model's own RuntimeError (forward_errors): retry as given
                if not isinstance(err.__cause__, RuntimeError):
                    raise
                self.nhwc = False
        return forward(self.layout(rows))

    def gradient(self, net, rows: torch.Tensor, seed, *, rule: str = "gradient") -> torch.Tensor:
        with _FrozenBatchNorm():
            return self.run(lambda r: gradient_of(net, r, seed, rule=rule), rows)


class _AffineBatchNorm(torch.autograd.Function):
    """Forward: the batch norm call ``run(x)`` itself. Backward: ``grad * scale``, its derivative in eval mode
    (``scale``: ``weight / sqrt(running_var + eps)`` per channel, shaped to broadcast over ``x``)."""

    @staticmethod
    def forward(ctx, x, run, scale):
        ctx.scale = scale
        return run(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None, None


_BN_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


class _FrozenBatchNorm(TorchFunctionMode):
    """Route every eval-mode ``F.batch_norm`` (what ``nn.BatchNorm*d`` calls) of an input that needs a gradient
    through :class:`_AffineBatchNorm`; training-mode calls (batch statistics) stay as they are. Only gradients
    with respect to the input flow through it: the weight and bias get none (nothing here asks for them)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.batch_norm:
            a = {"weight": None, "training": False, "eps": 1e-5, **dict(zip(_BN_ARGS, args)), **kwargs}
            x, var = a["input"], a["running_var"]
            if not a["training"] and isinstance(var, torch.Tensor) and x.requires_grad:
                with torch.no_grad():
                    scale = torch.rsqrt(var + a["eps"])                           # (C,)
                    scale = scale if a["weight"] is None else scale * a["weight"]
                rest = {k: v for k, v in kwargs.items() if k != "input"}
                return _AffineBatchNorm.apply(x, lambda t: func(t, *args[1:], **rest),
                                              scale.view(-1, *[1] * (x.dim() - 2)))  # (C, 1, ...) over (N, C, ...)
        return func(*args, **kwargs)


def _nodes(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """(alphas, weights) of ``method`` with ``steps`` nodes on [0, 1] (the weights add up to 1)."""
    m = int(steps)
    if method == "gausslegendre":
        x, w = np.polynomial.legendre.leggauss(m)
        return 0.5 * (1 + x), 0.5 * w
    if method == "riemann_trapezoid":
        w = np.full(m, 1.0 / (m - 1))
        w[[0, -1]] /= 2
        return np.linspace(0.0, 1.0, m), w
    k = np.arange(m, dtype=np.float64)
    start = {"riemann_right": 1.0, "riemann_left": 0.0, "riemann_middle": 0.5}[method]
    return (k + start) / m, np.full(m, 1.0 / m)


def _baseline(baseline, images: torch.Tensor) -> torch.Tensor:
    if baseline is None:
        return torch.zeros_like(images)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full_like(images, float(baseline))
    if isinstance(baseline, np.ndarray):
        baseline = torch.from_numpy(baseline)
    if not isinstance(baseline, torch.Tensor) or not baseline.is_floating_point():
        raise expect("baseline", "None, a number, or a float image (C, H, W) or batch (N, C, H, W)", type(baseline).__name__)
    b = baseline.detach().to(images.device, images.dtype)
    b = b[None] if b.dim() == 3 else b
    if b.dim() != 4 or b.shape[1:] != images.shape[1:] or len(b) not in (1, len(images)):
        raise expect("baseline", f"the images' shape, {tuple(images.shape[1:])} or {tuple(images.shape)}",
                     f"shape {tuple(baseline.shape)}")
    if not torch.isfinite(b).all():
        raise expect("baseline", "finite (no NaN or inf)", "non-finite values")
    return b.expand_as(images)


def resolve_targets(net, images: torch.Tensor, target) -> torch.Tensor:
    """(N,) the class of each image: ``target`` resolved (checked against the scores' width), or the predicted
    class; one no-grad forward of the clean images in eval mode."""
    return _scores_and_targets(net, images, len(images), target)[1]


def _scores_and_targets(net, rows: torch.Tensor, n: int, target) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (R, K) of ``rows``, targets (n,)): :func:`resolve_targets` for the first ``n`` rows (the images;
    Integrated Gradients' baselines follow them in the same forward)."""
    if target is not None and not isinstance(target, (torch.Tensor, list, tuple)):
        target_indices(target, 1, class_names=class_names_of(net))  # a bad name fails before the forward
    with torch.no_grad(), eval_mode(net), forward_errors(net, rows):
        scores = net(rows)
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or len(scores) != len(rows):
        got = f"shape {tuple(scores.shape)}" if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ShapeError(f"the model's output must be ({len(rows)}, classes) class scores; got {got}")
    if target is None:
        return scores, scores[:n].argmax(1)
    return scores, target_indices(target, n, class_names=class_names_of(net), num_classes=scores.shape[1],
                                  device=rows.device)


def _positive(name: str, v) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise expect(name, "a positive int", v)


@dataclass(eq=False, repr=False)
class IGResult:
    """Integrated Gradients of N images: ``attributions`` (N, C, H, W) for classes ``targets`` (N,), the class
    scores ``scores`` at the images and ``baseline_scores`` at the baselines (N,), with ``steps`` nodes of
    ``method``. Completeness: ``delta`` = sum of the attributions - (score - baseline score)."""

    attributions: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    baseline_scores: torch.Tensor
    steps: int
    method: str
    images: torch.Tensor | None = None
    model: str = ""

    @property
    def delta(self) -> torch.Tensor:
        """(N,) how far the attributions' sum is from the score difference (0 for the exact integral)."""
        return self.attributions.flatten(1).sum(1) - (self.scores - self.baseline_scores)

    @property
    def completeness_error(self) -> torch.Tensor:
        """(N,) |delta| relative to |score - baseline score|."""
        return self.delta.abs() / (self.scores - self.baseline_scores).abs().clamp_min(1e-12)

    def __len__(self) -> int:
        return len(self.attributions)

    def __getitem__(self, i) -> "IGResult":
        from ..batch import pick

        return pick(self, i)

    def __repr__(self) -> str:
        lines = [f"Integrated Gradients of {len(self)} image(s) by {self.model or 'model'} ({self.steps} steps, "
                 f"{self.method})"]
        for i in range(len(self)):
            lines.append(f"  image {i}: target {int(self.targets[i])}, score {float(self.scores[i]):.4g} - baseline "
                         f"{float(self.baseline_scores[i]):.4g}; attributions add up to "
                         f"{float(self.attributions[i].sum()):.4g} (completeness error "
                         f"{100 * float(self.completeness_error[i]):.2f}%)")
        return "\n".join(lines)

    def save(self, path) -> Path:
        """``path`` (.json) and the same name with .npz, atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        arrays = {k: getattr(self, k).detach().cpu().numpy() for k in _IG_ARRAYS if getattr(self, k) is not None}
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        return atomic_write_json(path.with_suffix(".json"), {
            "schema": "convlens.integrated_gradients/1", "steps": self.steps, "method": self.method,
            "model": self.model, "delta": self.delta.tolist(), "completeness_error": self.completeness_error.tolist()})

    @classmethod
    def load(cls, path) -> "IGResult":
        from ..io import read_json, read_npz

        path = Path(path)
        d, a = read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz"))
        return cls(**{k: torch.from_numpy(a[k]) for k in _IG_ARRAYS if k in a}, steps=d["steps"], method=d["method"],
                   model=d.get("model", ""))

    def plot(self):
        """The images and their attributions (signed, summed over colour channels, grey at 0)."""
        from ..plots.attribution import signed_figure

        return signed_figure(self.images, self.attributions, title=f"integrated gradients ({self.steps} steps)")

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())


_IG_ARRAYS = ("attributions", "targets", "scores", "baseline_scores", "images")
