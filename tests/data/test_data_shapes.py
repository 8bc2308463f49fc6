"""shapes: determinism, ranges, balance, true masks, and exact re-rendering under transforms."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation

from convlens import datasets
from convlens.errors import InputError


@pytest.fixture(scope="module")
def ds():
    return datasets.load("shapes", n=60, seed=1)


def _centroid(mask):
    ys, xs = np.nonzero(mask.numpy())
    return xs.mean() + 0.5, ys.mean() + 0.5  # pixel centres, like the generator's coordinates


def _near(mask):
    """mask (H, W) grown by two pixels: covers the anti-aliased rim, which reaches up to about one
    pixel past the outline at sharp corners (see sdf.py)."""
    return binary_dilation(mask, structure=np.ones((3, 3), bool), iterations=2)


def _fixed(ds, label, **change):
    """A sample of the given class, moved to the middle (so transforms stay inside the frame)."""
    p = next(p for p in ds.params if p.label == label)
    h, w = ds.generator.size
    return dataclasses.replace(p, **{"cx": w / 2, "cy": h / 2, "radius": 8.0, **change})


def test_same_seed_same_tensors_other_seed_other_tensors(ds):
    again = datasets.load("shapes", n=60, seed=1)
    assert torch.equal(again.images, ds.images) and torch.equal(again.masks, ds.masks)
    assert torch.equal(again.labels, ds.labels)
    other = datasets.load("shapes", n=60, seed=2)
    assert not torch.equal(other.images, ds.images)
    test = datasets.load("shapes", "test", n=60, seed=1)
    flat = {t.numpy().tobytes() for t in ds.images}
    assert not any(t.numpy().tobytes() in flat for t in test.images)  # train and test share no image


def test_shapes_dtypes_and_ranges(ds):
    assert ds.images.shape == (60, 3, 64, 64) and ds.images.dtype == torch.float32
    assert 0.0 <= ds.images.min() and ds.images.max() <= 1.0
    assert ds.labels.dtype == torch.int64 and ds.masks.dtype == torch.bool
    assert ds.masks.shape == (60, 64, 64) and ds.input_shape == (3, 64, 64)
    assert len(ds.class_names) >= 10 and ds.class_names == list(datasets.SHAPE_CLASSES)
    image, label = ds[3]
    assert image.shape == (3, 64, 64) and label == int(ds.labels[3])
    assert ds.masks.flatten(1).any(1).all()  # every image shows its shape

    wide = datasets.load("shapes", size=(48, 64), n=12, channels=1)
    assert wide.images.shape == (12, 1, 48, 64) and wide.masks.shape == (12, 48, 64)


def test_gray_is_luma_of_rgb():
    rgb = datasets.load("shapes", n=10, seed=5).images
    gray = datasets.load("shapes", n=10, seed=5, channels=1).images
    luma = (rgb * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    torch.testing.assert_close(gray, luma, atol=1e-6, rtol=0)


def test_classes_are_balanced():
    counts = datasets.load("shapes", n=105, seed=0).class_counts()
    assert counts.sum() == 105 and counts.max() - counts.min() <= 1
    assert datasets.load("shapes", n=100).class_counts().tolist() == [10] * 10


def test_mask_is_true_foreground(ds):
    gen = ds.generator
    for i in range(0, 60, 7):
        p, img, mask = ds.params[i], ds.images[i], ds.masks[i].numpy()
        bg = gen.render_background(p)
        # away from the outline the image is exactly the background...
        near = _near(mask)
        assert torch.equal(img[:, ~torch.from_numpy(near)], bg[:, ~torch.from_numpy(near)])
        # ...and inside the shape its colour differs from the background
        diff = (img - bg).norm(dim=0).numpy()[mask]
        assert (diff > 0.1).mean() > 0.97


@pytest.mark.parametrize("label,area", [(0, math.pi), (1, 1.6 ** 2), (5, math.pi * (1.0 - 0.44 ** 2))])
def test_mask_area_matches_geometry(ds, label, area):
    """circle r, square of half-side 0.8 r, ring between 0.44 r and r (see sdf.py)."""
    r = 12.0
    _, mask = ds.generator.render(_fixed(ds, label, radius=r))
    assert abs(int(mask.sum()) - area * r * r) <= 0.03 * area * r * r
    cx, cy = _centroid(mask)
    assert abs(cx - 32) < 0.3 and abs(cy - 32) < 0.3


def test_rerender_reproduces_dataset_exactly(ds):
    images, masks = ds.generator.render_batch(ds.params)
    assert torch.equal(images, ds.images) and torch.equal(masks, ds.masks)
    for i in (0, 17, 59):  # one at a time: pixels do not depend on the batch
        img, mask = ds.generator.render(ds.params[i], dx=0, dy=0, scale=1.0, angle=0.0)
        assert torch.equal(img, ds.images[i]) and torch.equal(mask, ds.masks[i])
    sub = ds.subset([9, 2])
    assert torch.equal(ds.generator.render(sub.params[0])[0], sub.images[0])


@pytest.mark.parametrize("dx,dy", [(5, -3), (-7, 0), (0, 9)])
def test_integer_translation_shifts_the_mask_exactly(ds, dx, dy):
    h, w = ds.generator.size
    for i in (0, 1, 2, 3):
        p = ds.params[i]
        _, mask = ds.generator.render(p)
        _, moved = ds.generator.render(p, dx=dx, dy=dy)
        rolled = np.roll(mask.numpy(), (dy, dx), axis=(0, 1))
        rows = slice(max(dy, 0), h + min(dy, 0))  # where np.roll did not wrap
        cols = slice(max(dx, 0), w + min(dx, 0))
        assert np.array_equal(moved.numpy()[rows, cols], rolled[rows, cols])


def test_fractional_translation_moves_the_centroid(ds):
    p = _fixed(ds, 0)
    (x0, y0), (x1, y1) = (_centroid(ds.generator.render(p, dx=d, dy=-d)[1]) for d in (0.0, 2.5))
    assert abs(x1 - x0 - 2.5) < 0.2 and abs(y1 - y0 + 2.5) < 0.2


def test_rotation(ds):
    gen = ds.generator
    for i in (0, 5, 11):
        img, mask = gen.render(ds.params[i], angle=360)
        assert torch.equal(img, ds.images[i]) and torch.equal(mask, ds.masks[i])
    # centred on a pixel corner, a quarter turn maps pixel centres onto pixel centres, so +90
    # degrees (counter-clockwise on screen) is np.rot90 of the mask, up to rounding at the rim
    tri = _fixed(ds, 2, angle=0.0, radius=12.0)
    mask = gen.render(tri)[1].numpy()
    turned = gen.render(tri, angle=90)[1].numpy()
    assert (turned != np.rot90(mask, 1)).sum() <= 2
    assert (turned != np.rot90(mask, -1)).sum() > 20  # not clockwise
    # 180 degrees mirrors the centroid through the centre
    (x0, y0), (x1, y1) = (_centroid(gen.render(tri, angle=a)[1]) for a in (0, 180))
    assert abs((x0 - 32) + (x1 - 32)) < 0.3 and abs((y0 - 32) + (y1 - 32)) < 0.3


@pytest.mark.parametrize("label", [0, 1, 3, 7])
def test_scale_is_linear(ds, label):
    p = _fixed(ds, label, radius=12.0)
    area = lambda s: int(ds.generator.render(p, scale=s)[1].sum())  # noqa: E731
    assert area(2.0) / area(1.0) == pytest.approx(4.0, rel=0.05)
    assert area(math.sqrt(2)) / area(1.0) == pytest.approx(2.0, rel=0.05)  # doubles the area


def test_transform_keeps_the_background(ds):
    p = ds.params[4]
    img, mask = ds.generator.render(p, dx=3, scale=0.7, angle=33)
    outside = torch.from_numpy(~_near(mask.numpy()))
    bg = ds.generator.render_background(p)
    assert torch.equal(img[:, outside], bg[:, outside])
    assert not torch.equal(img, ds.images[4])


def test_bad_arguments():
    gen = datasets.ShapesGenerator(32)
    p = gen.sample_params(1)[0]
    with pytest.raises(InputError, match="scale"):
        gen.render(p, scale=0)
    with pytest.raises(InputError, match="dx"):
        gen.render(p, dx=float("nan"))
    with pytest.raises(InputError, match="size"):
        datasets.ShapesGenerator(4)
    with pytest.raises(InputError, match="channels"):
        datasets.ShapesGenerator(32, channels=2)


def test_shape_colour_stands_out_from_the_gradient(ds):
    for p in ds.params:
        c, a, b = (np.array(v) for v in (p.color, p.background.color_from, p.background.color_to))
        t = np.clip(np.dot(c - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0.0, 1.0)
        assert np.linalg.norm(c - (a + t * (b - a))) >= 0.5
