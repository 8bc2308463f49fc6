"""Grad-CAM, guided Grad-CAM and Grad-CAM++: where in the image a class score looks, at a layer's resolution.

* ``grad_cam(model, x, target)``: Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via
  Gradient-based Localization", ICCV 2017 (https://arxiv.org/abs/1610.02391), eqs. 1-2. With ``A`` the
  feature maps (N, K, h, w) of a convolutional layer and ``g = dS_c/dA`` the gradient of the class score
  (before the softmax), each map's weight is its average gradient, ``alpha_k = mean_ij g_kij``, and the
  map is ``ReLU(sum_k alpha_k A_k)`` (N, h, w). ``.upsampled`` is that map resized bilinearly to the
  image (N, H, W) (``align_corners=False``, as Captum's ``LayerAttribution.interpolate`` and OpenCV's
  ``resize``), not normalized.
* ``plus=True``: Grad-CAM++, Chattopadhay et al., "Grad-CAM++: Improved Visual Explanations for Deep
  Convolutional Networks", WACV 2018 (https://arxiv.org/abs/1710.11063), eq. 19: weights
  ``w_k = sum_ij a_kij ReLU(g_kij)`` with ``a_kij = g^2 / (2 g^2 + (sum_ab A_kab) g^3)`` (the paper's
  exponential of the score, whose higher derivatives are powers of ``g`` in a piecewise-linear network),
  ``a = 0`` where ``g = 0``.
* ``guided_grad_cam(model, x, target)``: Selvaraju et al. Sec. 3.1, guided backpropagation (N, C, H, W)
  multiplied by the upsampled Grad-CAM map: fine detail, but only where the class is.

The layer. ``layer=None`` takes the rectified feature maps of the last convolutional layer, found from
the forward itself (traced on the meta device, ``arch/tracing.py``): the output of the last module to run, after at least
one ``nn.Conv2d``, that is a map of more than one position (N, K, h, w) and not a pooling layer. A module
whose output is the same tensor an inner module made (a ``Sequential`` ending in a pool) counts as that
inner module; an in-place activation module (``nn.ReLU(inplace=True)``) counts as its own. So it is
``relu4`` of the demo net (conv4 -> bn4 -> relu4 -> pooling), the last residual block of a ResNet
(``layer3``: its output is the ReLU of the sum, made inside the block), ``_relu1`` of EfficientNet-Lite,
``conv`` of a net that rectifies in ``forward`` with ``x.relu_()`` (the layer's own output: the gradient
and value before the ReLU, as ``capture`` records them). Any named layer with an (N, K, h, w) output
works; one without (an ``fc``) is refused, naming the conv layers.

Computed on the one gradient core (``units/backprop.py``: eval mode, seeds, the model left as found):
``layer_gradient`` returns the layer's output and the gradient of the score with respect to it, and the
backward stops at the layer, so Grad-CAM costs less than a saliency map.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from ..inputs import as_images
from ..taps import no_layer_error
from .backprop import _class_seed, _model_and_run, _label, gradient_of, guided_backprop

__all__ = ["grad_cam", "guided_grad_cam", "GradCAMResult", "default_layer", "conv_layers"]

_POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d,
          nn.FractionalMaxPool2d)


def grad_cam(model, x, target=None, *, layer: str | None = None, plus: bool = False) -> "GradCAMResult":
    """Grad-CAM (or with ``plus``, Grad-CAM++) maps of images ``x`` for class ``target`` (module docstring).

    ``model``: an nn.Module, a Run or a run directory (a Run's pixel model takes images in [0, 1]).
    ``target``: the class (index or name, or one per image); None: each image's predicted class.
    ``layer``: a layer with (N, K, h, w) output; None: the last conv layer's rectified maps.
    Returns a :class:`GradCAMResult`: ``.cam`` (N, h, w), ``.upsampled`` (N, H, W), ``.layer``, ``.targets``.
    """
    if not isinstance(plus, bool):
        raise InputError(f"plus must be True (Grad-CAM++) or False (Grad-CAM); got {plus!r}")
    net, run = _model_and_run(model)
    images = as_images(x, net)
    path = default_layer(net, images) if layer is None else layer
    base, chosen = _class_seed(net, target), []

    def seed(scores: torch.Tensor) -> torch.Tensor:                     # (N, K) -> one-hot, targets kept
        s = base(scores)
        chosen.append(s.argmax(1))
        return s

    acts, grads = gradient_of(net, images, seed, at=path)               # (N, K, h, w) each
    if acts.dim() != 4:
        raise _not_spatial(net, path, tuple(acts.shape))
    cam = torch.relu((_weights(acts, grads, plus)[:, :, None, None] * acts).sum(1))  # (N, h, w)
    up = F.interpolate(cam[:, None], size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]  # (N, H, W)
    return GradCAMResult(cam=cam, upsampled=up, layer=_shown(net, path), targets=chosen[0],
                         method="gradcam++" if plus else "gradcam", images=images, model=_label(net, run))


def guided_grad_cam(model, x, target=None, *, layer: str | None = None, plus: bool = False) -> torch.Tensor:
    """Guided Grad-CAM (Selvaraju et al. Sec. 3.1), (N, C, H, W): guided backprop times the upsampled
    Grad-CAM map of the same class (None: the predicted class); arguments as :func:`grad_cam`."""
    cam = grad_cam(model, x, target, layer=layer, plus=plus)
    return guided_backprop(model, x, cam.targets) * cam.upsampled[:, None]  # (N, C, H, W)


def _weights(acts: torch.Tensor, grads: torch.Tensor, plus: bool) -> torch.Tensor:
    """(N, K) weights of the feature maps: Grad-CAM's average gradient, or Grad-CAM++'s eq. 19."""
    if not plus:
        return grads.mean((2, 3))                                        # (N, K)
    g2 = grads * grads
    denom = 2 * g2 + acts.sum((2, 3), keepdim=True) * g2 * grads         # (N, K, h, w)
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)),
                        torch.zeros_like(grads))
    return (alpha * grads.clamp_min(0)).sum((2, 3))                      # (N, K)


# ---- which layer -------------------------------------------------------------------------------------------

def default_layer(model, x) -> str:
    """The module path of the last conv layer's rectified feature maps, found from the forward (module
    docstring) as ``arch.tracing`` records it: on the meta device (no memory, no compute), or one real forward
    of an image the size of ``x``'s where the forward needs real tensors. InputError when no ``nn.Conv2d`` runs
    before a spatial map. Found once per model object and input size, and remembered while the model holds the
    same module objects (tracing 300 modules takes longer than Grad-CAM itself on EfficientNet-Lite0)."""
    net = _model_and_run(model)[0]
    images = as_images(x, net)
    key = (tuple(images.shape[1:]), images.dtype, tuple(id(m) for m in net.modules()))
    known = _FOUND.get(net)
    if known is None or known[0] != key:
        _FOUND[net] = known = (key, _find_layer(net, images))
    return known[1]


_FOUND: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _find_layer(net: nn.Module, images: torch.Tensor) -> str:
    from ..arch.tracing import trace
    from ..taps import scripted_path

    if scripted_path(net) is not None:
        raise _no_conv(net)
    calls = [c for c in trace(net, tuple(images.shape[1:]), dtype=images.dtype, containers=True).calls if c.path]
    seen: set[int] = set()                        # ids of the outputs so far (all alive in ``calls``: unique)
    conv, found = False, None
    for call in calls:                            # in the order the modules return
        out, module = call.output, call.module
        conv = conv or isinstance(module, nn.Conv2d)
        inner = any(True for _ in module.children()) and id(out) in seen  # a container passing an output on
        seen.add(id(out))
        if conv and not inner and out is not None and out.dim() == 4 and out.shape[2] * out.shape[3] > 1 \
                and not isinstance(module, _POOLS):
            found = call.path
    if found is None:
        raise _no_conv(net)
    return found


def conv_layers(model) -> list[str]:
    """The ``nn.Conv2d`` layers of ``model`` as the user names them (lecture names where there are), in order."""
    from ..layers import display_names

    net = _model_and_run(model)[0]
    shown = display_names(net)
    return [shown.get(p, p) for p, m in net.named_modules() if p and isinstance(m, nn.Conv2d)]


def _shown(net: nn.Module, path: str) -> str:
    """A layer as the user names it: the lecture name (``relu4``) or the path without a run's ``net.``."""
    from ..layers import display_names, resolve

    return display_names(net).get(resolve(net, path)[0], path)


def _listing(net: nn.Module) -> str:
    convs = conv_layers(net)
    return ", ".join(convs[:12]) + (f", … ({len(convs)} in all)" if len(convs) > 12 else "") if convs else "none"


def _not_spatial(net: nn.Module, layer: str, shape: tuple) -> InputError:
    return InputError(f"layer {layer!r} has no spatial output (its output is {shape}, not (N, K, h, w) feature "
                      f"maps), so Grad-CAM has nothing to weigh; give a convolutional layer. Conv layers: "
                      f"{_listing(net)}")


def _no_conv(net: nn.Module) -> InputError:
    return no_layer_error(net, "Grad-CAM looks for the last conv layer through hooks, which never run inside it",
                          "Grad-CAM needs feature maps (N, K, h, w) after a convolutional layer, and no nn.Conv2d of "
                          "this model runs before one; give layer= a layer with a spatial output. Conv layers: "
                          + _listing(net))


# ---- the result ----------------------------------------------------------------------------------------------

@dataclass(eq=False, repr=False)
class GradCAMResult:
    """Grad-CAM maps of N images: ``cam`` (N, h, w) at ``layer``'s resolution, ``upsampled`` (N, H, W) to the
    image's, both >= 0 and not normalized; ``targets`` (N,) the classes; ``method`` "gradcam" or "gradcam++";
    ``images`` (N, C, H, W) as given to the model (None after ``load`` of a result saved without them)."""

    cam: torch.Tensor
    upsampled: torch.Tensor
    layer: str
    targets: torch.Tensor
    method: str = "gradcam"
    images: torch.Tensor | None = None
    model: str = ""

    def __len__(self) -> int:
        return len(self.cam)

    def __getitem__(self, i) -> "GradCAMResult":
        from ..batch import pick

        return pick(self, i)

    def __repr__(self) -> str:
        n, h, w = self.cam.shape
        peaks = [np.unravel_index(int(c.argmax()), (h, w)) for c in self.cam]
        where = ", ".join(f"{int(t)}@({r},{c})" for t, (r, c) in zip(self.targets, peaks))
        return (f"{'Grad-CAM++' if self.method == 'gradcam++' else 'Grad-CAM'} of {n} image(s) by "
                f"{self.model or 'model'} at layer {self.layer!r} ({h}x{w} -> {tuple(self.upsampled.shape[1:])}); "
                f"target@peak (row, col): {where}")

    def save(self, path) -> Path:
        """``path`` (.json) and the same name with .npz (the maps, targets and images), atomically."""
        from ..io import atomic_write_json, atomic_write_npz

        path = Path(path)
        arrays = {k: getattr(self, k).detach().cpu().numpy() for k in ("cam", "upsampled", "targets", "images")
                  if getattr(self, k) is not None}
        atomic_write_npz(path.with_suffix(".npz"), **arrays)
        return atomic_write_json(path.with_suffix(".json"), {"schema": "convlens.gradcam/1", "layer": self.layer,
                                                             "method": self.method, "model": self.model})

    @classmethod
    def load(cls, path) -> "GradCAMResult":
        from ..io import read_json, read_npz

        path = Path(path)
        d, a = read_json(path.with_suffix(".json")), read_npz(path.with_suffix(".npz"))
        return cls(cam=torch.from_numpy(a["cam"]), upsampled=torch.from_numpy(a["upsampled"]), layer=d["layer"],
                   targets=torch.from_numpy(a["targets"]), method=d["method"], model=d.get("model", ""),
                   images=torch.from_numpy(a["images"]) if "images" in a else None)

    def plot(self):
        """The images with the upsampled map over them (jet, normalized per image), the paper's Fig. 1(c)."""
        from ..plots.attribution import cam_figure

        return cam_figure(self.images, self.upsampled, title=f"{self.method} at {self.layer}")

    def _repr_png_(self) -> bytes:
        from ..plots.common import to_png

        return to_png(self.plot())
