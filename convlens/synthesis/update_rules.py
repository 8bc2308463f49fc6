"""Gradient steps on the one image tensor ``optimize`` works on: SGD with momentum and Adam written out
with torch.optim's exact semantics, and torch.optim's L-BFGS.

torch.optim's per-step bookkeeping (hooks, profiling scopes, grouping parameters by device) costs
more than the update itself on one small image; written out, SGD is one or two tensor operations
and Adam one fused kernel (seven operations where no kernel exists). Each rule has ``step(closure)`` (the closure computes the loss and ``z.grad``) and a
settable ``lr``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

__all__ = ["SGD", "Adam", "LBFGS", "make"]


class SGD:
    """torch.optim.SGD (dampening 0, no Nesterov): buf = momentum * buf + g (buf = g at the first
    step); z -= lr * buf."""

    def __init__(self, z: torch.Tensor, lr: float, momentum: float = 0.0):
        self.z, self.lr, self.momentum, self.buf = z, lr, momentum, None

    @torch.no_grad()
    def _update(self) -> None:
        g = self.z.grad
        if self.momentum:       # buf = g + momentum * buf in one pass
            self.buf = g.clone() if self.buf is None else torch.add(g, self.buf, alpha=self.momentum, out=self.buf)
            g = self.buf
        self.z.add_(g, alpha=-self.lr)

    def step(self, closure: Callable) -> None:
        with torch.enable_grad():
            closure()
        self._update()


class Adam(SGD):
    """torch.optim.Adam (betas 0.9, 0.999, eps 1e-8, no weight decay): m, v moving averages of g and
    g²; z -= lr / (1 - β1^t) * m / (sqrt(v / (1 - β2^t)) + eps).

    The update runs as PyTorch's fused Adam kernel (the one ``torch.optim.Adam(fused=True)`` calls: one
    pass instead of seven, 3x faster on CPU) where it exists for the device and dtype, else written out.
    """

    def __init__(self, z: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(z, lr)
        self.betas, self.eps, self.t, self.m, self.v = betas, eps, 0, None, None
        self.fused = hasattr(torch, "_fused_adam_")

    @torch.no_grad()
    def _update(self) -> None:
        g, (b1, b2) = self.z.grad, self.betas
        if self.m is None:
            self.m, self.v = torch.zeros_like(g), torch.zeros_like(g)
            self.count = torch.zeros((), device=g.device, dtype=torch.float32)      # the fused kernel's t
        self.t += 1
        if self.fused:
            self.count.fill_(self.t)
            try:
                torch._fused_adam_([self.z], [g], [self.m], [self.v], [], [self.count], lr=self.lr, beta1=b1,
                                   beta2=b2, weight_decay=0.0, eps=self.eps, amsgrad=False, maximize=False)
                return
            except (RuntimeError, NotImplementedError):   # no kernel for this device or dtype: nothing was written
                self.fused = False
        self.m.lerp_(g, 1 - b1)
        self.v.mul_(b2).addcmul_(g, g, value=1 - b2)
        denom = (self.v.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        self.z.addcdiv_(self.m, denom, value=-self.lr / (1 - b1 ** self.t))


class LBFGS:
    """torch.optim.LBFGS, one iteration per step with a strong-Wolfe line search; when the search
    finds no step (a ReLU kink) the next step restarts from -grad."""

    def __init__(self, z: torch.Tensor, lr: float):
        # max_eval: room for the line search (the default, 1.25 * max_iter, cuts it after one evaluation)
        self.z = z
        self.opt = torch.optim.LBFGS([z], lr=lr, max_iter=1, max_eval=25, history_size=20,
                                     line_search_fn="strong_wolfe")

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.opt.param_groups[0]["lr"] = value

    def step(self, closure: Callable) -> None:
        self.opt.step(closure)
        if self.opt.state[self.z].get("t", 1) == 0:
            self.opt.state[self.z]["n_iter"] = 0


def make(name: str, z: torch.Tensor, lr: float, momentum: float):
    """The rule called ``name`` ("sgd", "adam" or "lbfgs") for image tensor ``z``."""
    return SGD(z, lr, momentum) if name == "sgd" else Adam(z, lr) if name == "adam" else LBFGS(z, lr)
