"""Check gradients numerically by finite differences (the lecture's "other things good to know").

``gradcheck(model)`` compares the gradient autograd computes with central finite differences, in
float64, for a random sample of coordinates of every parameter tensor (reported per layer) and of
the input (d loss / d x, which covers the whole backward pass)::

    numeric = (L(θ + ε) − L(θ − ε)) / 2ε
    rel     = |autograd − numeric| / max(|autograd|, |numeric|, floor)      passed: rel <= tol

**Loss.** ``L = sum(r * model(x))`` with fixed x ~ N(0, 1) and r ~ N(0, 1) of the output's shape.
A random projection gives every output unit a weight of order one and needs no labels;
cross-entropy would work too, but its gradient vanishes where the net is confident, leaving less to
check.

**Coordinates.** Per parameter tensor (and for x), ``samples`` coordinates: half drawn among those
where autograd's gradient is nonzero (where a wrong backward shows), the rest uniformly (where one
that wrongly returns zero shows). ``seed`` fixes x, r, the coordinates, and the weights of a zoo
name or spec; the global RNG is not touched.

**The model is left as found.** The check runs on ``copy.deepcopy(model).double()`` (a zoo name or
spec is built fresh) in eval mode, so dropout is off; every parameter of the copy requires grad, so
frozen layers are checked too. BatchNorm normalizes with its running statistics (a fixed affine map)
unless ``batch_stats=True``, which puts only the BatchNorm layers of the copy in train mode so the
gradient through the batch mean and variance is checked as well.

**Tolerance.** Float64 differences agree with a correct backward to about 1e-8 where the gradient is
not tiny. Two things can spoil a correct one, and both are handled rather than hidden by a loose tol:

* rounding: L is computed to about u·S (u = 2.2e-16, S = sum|r * y|), so the difference quotient
  carries noise of about u·S/ε. A disagreement within ``NOISE_MARGIN`` times that always passes:
  ``floor = NOISE_MARGIN·u·S/(ε·tol)``, so gradients below the floor are checked absolutely. A
  coordinate whose gradient is too small for even a factor-2 error to exceed the noise is counted in
  ``below_noise``; a layer with nothing else is marked ``ok?``: its check says nothing (typical of
  the early layers of a deep net at its default init, whose gradients all but vanish).
* kinks: if a ReLU input or a max-pool's runner-up lies within ε of switching, the two sides of the
  difference see different slopes. A coordinate over ``tol`` is therefore retried at ε/10 (crossing a
  kink is 10x less likely there) and the better of the two estimates is kept; a wrong backward stays
  wrong at every ε. A coordinate that sits *on* a kink (e.g. BatchNorm after a ReLU: the inputs that
  are exactly 0 put the next ReLU exactly at 0, so any change of the BN bias crosses it) has no
  derivative: there the one-sided differences disagree and autograd equals one of them (PyTorch's
  subgradient). Such coordinates are counted in ``kinks`` and not judged; a wrong backward matches
  neither side, and a smooth point has equal sides, so neither hides behind this rule.

``TOL = 1e-5`` sits orders above what correct layers give here and far below what a wrong backward
gives (a dropped term or a factor of 2 is off by 1e-2 to 1).

Cost: two forward passes per checked coordinate, so ``samples`` (coordinates per parameter tensor
and for the input) sets the time: ``lenet`` takes well under a second; for VGG-sized nets use a few
samples and a small input (``--input 32x32x3``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..errors import InputError, expect
from ..arch.grammar import check_input_shape
from ..layers import display_names

SAMPLES = 8
EPS = 1e-6
TOL = 1e-5
NOISE_MARGIN = 100.0  # differences within 100x the rounding noise u*S/eps pass
KINK_JUMP = 1e-2    # one-sided slopes differing by more than 1% of their size: a kink
KINK_MATCH = 1e-3   # autograd within 0.1% of one side: PyTorch's subgradient there
RETRY_SHRINK = 10.0
LOSS = "sum(r * model(x)), x, r ~ N(0, 1)"


@dataclass(frozen=True)
class GradcheckRow:
    """One checked tensor group: a layer's parameters, or the input (``path == ""``)."""

    layer: str            # display name: lecture name where there is one, else the module path
    path: str             # module path ('' for the input)
    checked: int          # coordinates compared
    below_noise: int      # of those, gradients too small for a factor-2 error to show above rounding
    max_rel_error: float
    passed: bool
    worst_at: str         # e.g. 'weight[3, 0, 1, 2]' or 'x[1, 0, 4, 5]'
    autograd: float       # the two gradients at worst_at
    numeric: float
    kinks: int = 0        # coordinates on a non-differentiable point (one-sided differences disagree), not judged


@dataclass(frozen=True)
class GradcheckResult:
    """Autograd vs finite differences, per layer; ``repr`` is the table with a verdict line."""

    rows: list[GradcheckRow]
    model: str
    input_shape: tuple[int, ...]   # (N, C, H, W) of the x used
    eps: float
    tol: float
    samples: int
    seed: int
    batch_stats: bool = False
    loss: str = LOSS
    failed: list[GradcheckRow] = field(init=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "failed", [r for r in self.rows if not r.passed])

    @property
    def passed(self) -> bool:
        return not self.failed

    @property
    def worst(self) -> GradcheckRow:
        return max(self.rows, key=lambda r: r.max_rel_error)

    def to_dict(self) -> dict:
        return {"model": self.model, "input_shape": list(self.input_shape), "loss": self.loss, "eps": self.eps,
                "tol": self.tol, "samples": self.samples, "seed": self.seed, "batch_stats": self.batch_stats,
                "passed": self.passed, "worst": self.worst.layer, "max_rel_error": self.worst.max_rel_error,
                "rows": [asdict(r) for r in self.rows]}

    def __repr__(self) -> str:
        shape = "x".join(str(d) for d in self.input_shape)
        head = (f"gradcheck {self.model}\nx {shape} float64, loss {self.loss}, eps {self.eps:g}, tol {self.tol:g}"
                + (", BatchNorm on batch statistics" if self.batch_stats else ""))
        cells = [("layer", "path", "checked", "max rel err", "worst at", "autograd", "numeric", "")]
        for r in self.rows:
            status = "FAILED" if not r.passed else "ok?" if r.below_noise == r.checked else "ok"
            cells.append((r.layer, r.path or "-", str(r.checked), f"{r.max_rel_error:.1e}", r.worst_at,
                          f"{r.autograd:.6g}", f"{r.numeric:.6g}", status))
        widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
        right = {2, 3, 5, 6}
        lines = ["  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))
                 .rstrip() for row in cells]
        worst = self.worst
        if self.passed:
            verdict = (f"PASSED: all {len(self.rows)} gradients agree with finite differences "
                       f"(worst {worst.max_rel_error:.1e} at {worst.layer})")
        else:
            verdict = (f"FAILED: {len(self.failed)} of {len(self.rows)} gradients disagree with finite differences: "
                       + ", ".join(r.layer for r in self.failed) + f" (worst {worst.max_rel_error:.1e} at {worst.layer})")
        kinked = [f"{r.layer} ({r.kinks})" for r in self.rows if r.kinks]
        if kinked:
            verdict += ("\nnot judged, on a kink (no derivative; autograd takes one side): " + ", ".join(kinked))
        vacuous = [r.layer for r in self.rows if r.passed and r.below_noise == r.checked]
        if vacuous:
            verdict += (f"\nok?: every sampled gradient of {', '.join(vacuous)} is within rounding noise, "
                        "so that check says nothing")
        return "\n".join([head, *lines, verdict])


def gradcheck(model: nn.Module | str, input_size: tuple[int, int, int] | None = None, *, batch_size: int = 2,
              samples: int = SAMPLES, eps: float = EPS, tol: float = TOL, seed: int = 0,
              batch_stats: bool = False) -> GradcheckResult:
    """Compare autograd with central finite differences in float64, per layer and for the input.

    ``model`` is an ``nn.Module``, a zoo name (``"lenet"``) or a grammar spec. ``input_size`` is
    (C, H, W): by default the model's ``input_shape`` (grammar and zoo models; 3x224x224 for a bare
    spec); other modules need it. ``samples`` coordinates are drawn per parameter tensor and for the
    input. See the module docstring for the loss, the tolerance and how BatchNorm is treated.
    """
    batch_size = _positive_int("batch_size", batch_size)
    samples = _positive_int("samples", samples)
    for name, value in (("eps", eps), ("tol", tol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise expect(name, "a positive float", value)
    if batch_stats and batch_size < 2:
        raise expect("batch_size", "at least 2 with batch_stats=True (batch statistics need two samples)", batch_size)
    label, net = _float64_copy(model, input_size, seed)
    shape = _input_shape(net, input_size)
    _prepare(net, batch_stats)
    device = next((t.device for t in [*net.parameters(), *net.buffers()]), torch.device("cpu"))
    gen = torch.Generator().manual_seed(int(seed))  # x, r, then the coordinates: all from seed
    x = torch.randn((batch_size, *shape), generator=gen, dtype=torch.float64).to(device)  # (N, C, H, W)
    x_grad, rs, scale = _backward(net, x, gen)

    def loss_at() -> float:
        with torch.no_grad():
            return float(sum((o * r).sum() for o, r in zip(_tensors(net(x)), rs)))

    checker = _Checker(loss_at, eps, tol, scale)
    rows = [checker.row("input", "", {"x": (x, x_grad)}, samples, gen)]
    names = display_names(net)
    seen: set[int] = set()
    for path, module in net.named_modules():
        tensors = {}
        for pname, p in module.named_parameters(recurse=False):
            if id(p) not in seen:  # a shared parameter is checked where it is first registered
                seen.add(id(p))
                tensors[pname] = (p.data, p.grad if p.grad is not None else torch.zeros_like(p.data))
        if tensors:
            rows.append(checker.row(names.get(path, path or "(model)"), path or "(model)", tensors, samples, gen))
    return GradcheckResult(rows, label, (batch_size, *shape), float(eps), float(tol), samples, int(seed), batch_stats)


def _prepare(net: nn.Module, batch_stats: bool) -> None:
    """Eval mode (dropout off), BatchNorm in train mode if asked; every parameter requires grad."""
    net.eval()
    if batch_stats:
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None


def _backward(net: nn.Module, x: torch.Tensor, gen: torch.Generator):
    """Autograd's side: fills each parameter's .grad; returns (d loss/d x, loss weights r, S = sum|r * y|)."""
    x.requires_grad_(True)
    with torch.enable_grad():
        outs = _tensors(net(x))
        if not outs:
            raise InputError(f"gradcheck needs a model whose output has floating-point tensors; "
                             f"{type(net).__name__} returned none")
        rs = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o.device) for o in outs]
        loss = sum((o * r).sum() for o, r in zip(outs, rs))
        if loss.requires_grad:
            loss.backward()
    x.requires_grad_(False)
    x_grad = x.grad if x.grad is not None else torch.zeros_like(x)
    x.grad = None
    scale = float(sum((o.detach() * r).abs().sum() for o, r in zip(outs, rs)))
    return x_grad, rs, scale


class _Checker:
    """Central differences of ``loss_at`` at sampled coordinates of the tensors it reads."""

    def __init__(self, loss_at, eps: float, tol: float, scale: float):
        self.loss_at, self.eps, self.tol = loss_at, float(eps), float(tol)
        self.noise = torch.finfo(torch.float64).eps * scale  # rounding error of one loss value

    def row(self, layer: str, path: str, tensors: dict, samples: int, gen: torch.Generator) -> GradcheckRow:
        worst = (-1.0, "", 0.0, 0.0)
        checked = below_noise = kinks = 0
        for name, (value, grad) in tensors.items():
            for flat in _sample(grad, samples, gen):
                index = _unravel(flat, value.shape)
                a = float(grad[index])
                err, n, atol = self.compare(value, index, a, self.eps)
                if err > self.tol:  # maybe a kink within eps: retry closer, keep the better estimate
                    retry = self.compare(value, index, a, self.eps / RETRY_SHRINK)
                    if retry[0] < err:
                        err, n, atol = retry
                if err > self.tol and self.on_kink(value, index, a):
                    kinks += 1  # no derivative here: finite differences cannot judge this coordinate
                    continue
                checked += 1
                below_noise += max(abs(a), abs(n)) < 2 * atol  # a factor-2 error would pass as noise
                if err > worst[0]:
                    worst = (err, f"{name}[{', '.join(map(str, index))}]", a, n)
        err, at, a, n = worst
        return GradcheckRow(layer, path, checked, below_noise, max(err, 0.0), err <= self.tol, at, a, n, kinks)

    def on_kink(self, value: torch.Tensor, index: tuple, a: float) -> bool:
        """True when the one-sided differences at this coordinate disagree (a non-differentiable
        point) and the autograd value equals one of them."""
        eps = self.eps / RETRY_SHRINK
        original = value[index].clone()
        try:
            center = self.loss_at()
            value[index] = original + eps
            right = (self.loss_at() - center) / float(value[index] - original)
            value[index] = original - eps
            left = (center - self.loss_at()) / float(original - value[index])
        finally:
            value[index] = original
        atol = NOISE_MARGIN * self.noise / eps
        if abs(right - left) <= KINK_JUMP * max(abs(right), abs(left), atol / self.tol):
            return False  # both sides agree: a smooth point, judged as usual
        return min(abs(a - right), abs(a - left)) <= KINK_MATCH * max(abs(right), abs(left)) + atol

    def compare(self, value: torch.Tensor, index: tuple, a: float, eps: float) -> tuple[float, float, float]:
        """(relative error, numeric gradient, absolute tolerance) at one coordinate."""
        original = value[index].clone()
        up, down = original + eps, original - eps
        try:
            value[index] = up
            plus = self.loss_at()
            value[index] = down
            minus = self.loss_at()
        finally:
            value[index] = original
        n = (plus - minus) / float(up - down)  # the step actually taken, after rounding θ ± ε
        atol = NOISE_MARGIN * self.noise / eps
        err = abs(a - n) / max(abs(a), abs(n), atol / self.tol, 1e-300)
        return (err if math.isfinite(err) else math.inf), n, atol  # NaN or inf on either side fails


def _sample(grad: torch.Tensor, k: int, gen: torch.Generator) -> list[int]:
    """Up to k distinct flat indices, half where ``grad`` is nonzero; bounded work on huge tensors."""
    total = grad.numel()
    if total <= k:
        return list(range(total))
    draws = torch.randint(total, (32 * k,), generator=gen)
    nonzero = (grad.detach().reshape(-1)[draws.to(grad.device)] != 0).tolist()
    distinct = dict(zip(draws.tolist(), nonzero))  # index -> gradient is nonzero, in first-draw order
    chosen = [i for i, nz in distinct.items() if nz][: (k + 1) // 2]
    taken = set(chosen)
    return chosen + [i for i in distinct if i not in taken][: k - len(chosen)]


def _unravel(flat: int, shape: torch.Size) -> tuple[int, ...]:
    index = []
    for size in reversed(shape):
        flat, i = divmod(flat, size)
        index.append(i)
    return tuple(reversed(index))


def _tensors(out) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, or tuples/lists/dicts of them)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _tensors(o)]
    return []


def _float64_copy(model, input_size, seed: int) -> tuple[str, nn.Module]:
    """(label, float64 model): a deep copy of a module, or a zoo name / spec built with weights drawn
    from ``seed`` (the global RNG is left untouched)."""
    if isinstance(model, nn.Module):
        return type(model).__name__, copy.deepcopy(model).double()
    if not isinstance(model, str):
        raise expect("model", "an nn.Module, a zoo name or a grammar spec", type(model).__name__)
    from ..arch import zoo

    shape = None if input_size is None else _check_size(input_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        return model, zoo.build(model, input_shape=shape).double()


def _input_shape(net: nn.Module, input_size) -> tuple[int, int, int]:
    if input_size is not None:
        return _check_size(input_size)
    shape = getattr(net, "input_shape", None)
    if shape is None:
        raise expect("input_size", f"(C, H, W) for a {type(net).__name__}, which has no input_shape", None)
    return _check_size(shape)


def _check_size(size) -> tuple[int, ...]:
    return check_input_shape(size, "input_size")


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise expect(name, "a positive int", value)
    return value
