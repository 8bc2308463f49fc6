"""A user's own residual network, written by hand as people write them (not by convlens's grammar).

``F.relu`` in ``forward`` (no ReLU modules), BatchNorm, residual ``out + shortcut(x)``, a strided block
with a 1x1 projection shortcut, global average pooling and a Linear head: 3x32x32 input, 10 classes,
about 5,000 parameters. ``make()`` is the factory ``convlens wrap tests/models/user_resnet.py:make`` calls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from conftest import BasicBlock as Block  # the fixture models' residual block: the same hand-written code


class ResNetLike(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, 1, 1)
        self.bn = nn.BatchNorm2d(8)
        self.block1 = Block(8, 8)
        self.block2 = Block(8, 16, stride=2)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):                      # (N, 3, 32, 32)
        x = F.relu(self.bn(self.stem(x)))      # (N, 8, 32, 32)
        x = self.block2(self.block1(x))        # (N, 16, 16, 16)
        return self.fc(x.mean((2, 3)))         # (N, num_classes)


def make() -> ResNetLike:
    """The model with fixed weights (seed 0; BatchNorm statistics not the identity, so they matter; a head that
    predicts several classes of ``shapes``), in eval mode; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = ResNetLike()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.data.uniform_(0.8, 1.2)
                m.bias.data.uniform_(-0.1, 0.1)
        nn.init.normal_(model.fc.weight, std=1.0)  # a wide, unbiased head: several classes predicted, not one
        nn.init.zeros_(model.fc.bias)
    return model.eval()
