"""``digits``: scikit-learn's bundled 8x8 handwritten digits (1,797 images, classes "0".."9").

Pixel values 0..16 are scaled to [0, 1] and upsampled to ``size`` (default 32x32) bilinearly
(``align_corners=False``), which keeps strokes smooth rather than blocky.  The split is a seeded,
stratified 80 / 20 (``sklearn.model_selection.train_test_split``): 1,437 train, 360 test.
"""
from __future__ import annotations

import numpy as np
import torch

from .dataset import ImageDataset, as_size, balanced_pick, check_channels, check_n, convert_channels, resize

TEST_FRACTION = 0.2


def load_digits(split: str = "train", *, size=None, n=None, seed: int = 0, channels=None) -> ImageDataset:
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    size = as_size(size) or (32, 32)
    n, channels = check_n(n), check_channels(channels)
    bunch = sk_load_digits()
    rows = np.arange(len(bunch.target))
    train, test = train_test_split(rows, test_size=TEST_FRACTION, stratify=bunch.target, random_state=seed)
    rows = np.sort(train if split == "train" else test)
    rows = rows[balanced_pick(bunch.target[rows], n, seed, what=f"the digits {split} split")]
    x = torch.from_numpy(bunch.images[rows].astype(np.float32) / 16.0).unsqueeze(1)  # (N, 1, 8, 8)
    x = convert_channels(resize(x, size), channels)  # (N, C, H, W)
    y = torch.from_numpy(bunch.target[rows].astype(np.int64))
    spec = {"name_or_path": "digits", "split": split, "size": list(size), "n": n, "seed": seed,
            "channels": x.shape[1]}
    return ImageDataset(x.contiguous(), y, [str(k) for k in range(10)], name="digits",
                        source=f"sklearn:load_digits/{split}?seed={seed}", spec=spec, info={"split": split})
