"""Public datasets API: ``from convlens import datasets; ds = datasets.load("shapes")``.

- ``load(name_or_path, split="train", *, size=None, n=None, seed=0, channels=None,
  on_error="raise", lazy=None) -> ImageDataset``: built-ins by name (``names()``: shapes,
  digits, photos, fashion) or user data by path (image folder, MNIST IDX, CIFAR python batches).
- ``load_image(path, *, size=None, channels=3) -> Tensor (C, H, W)`` in [0, 1].
- ``describe_split(ds)``: which images of its source a loaded dataset holds, in words (the held-out
  20 % of a folder without train/ and test/ sub-folders, a test/ sub-folder, all images).
- ``ShapesGenerator`` re-renders ``shapes`` samples translated, scaled or rotated.

Policies (channels, sizes, bad files, splits) are documented in the ``convlens.data`` modules.
"""
from .data import (IMAGE_EXTENSIONS, PHOTO_CLASSES, SHAPE_CLASSES, Background, ImageDataset,
                   LazyImageDataset, ShapeParams, ShapesDataset, ShapesGenerator, load, load_image, names)
from .data.load import describe_split

__all__ = [
    "Background", "IMAGE_EXTENSIONS", "ImageDataset", "LazyImageDataset", "PHOTO_CLASSES",
    "SHAPE_CLASSES", "ShapeParams", "ShapesDataset", "ShapesGenerator", "describe_split", "load", "load_image",
    "names",
]
