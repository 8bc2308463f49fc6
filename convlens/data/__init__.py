"""Datasets: built-ins (shapes, digits, photos, fashion) and user data (image folders, MNIST IDX, CIFAR
python batches), all returned as ``ImageDataset``.  The public face is ``convlens.datasets``."""
from .dataset import ImageDataset, LazyImageDataset
from .images import IMAGE_EXTENSIONS, load_image
from .load import load, names
from .photos import PHOTO_CLASSES
from .shapes import SHAPE_CLASSES, Background, ShapeParams, ShapesDataset, ShapesGenerator

__all__ = [
    "Background", "IMAGE_EXTENSIONS", "ImageDataset", "LazyImageDataset", "PHOTO_CLASSES",
    "SHAPE_CLASSES", "ShapeParams", "ShapesDataset", "ShapesGenerator", "load", "load_image", "names",
]
