"""`convlens demo --imagenet`: the lecture's visualization slides on a real ImageNet network, in one report.

The network is ``convlens.pretrained("efficientnet_lite0")`` (ImageNet-1k weights, offline). It is
wrapped (``convlens.wrap``) into a run directory, ``runs/imagenet``, whose test data is a folder of
224x224 crops of five photos bundled with scikit-image, one sub-folder per ImageNet class the photo shows
(``PHOTOS``; ``runs/imagenet-photos``, written first). Then each step below computes one analysis with
settings sized for 224x224 images on two CPU cores (``DEMO``; why each, beside it) and saves it in the
run's results store, where the report (``convlens.report``) finds it:

* filters of the first layer; top-9 patches of three blocks over the crops;
* saliency maps with their GrabCut masks (Simonyan et al. 2014, Sec. 3) of the centre crop of each photo;
* Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad and Integrated Gradients of the same crops;
* an occlusion triptych (Zeiler & Fergus 2014, Fig. 7) of two photos;
* the sanity checks of every map (Adebayo et al. 2018): the network's layers re-initialized from the top;
* class models of the lecture's twelve classes (Simonyan et al. 2014, Fig. 1);
* reconstructions of one photo from six layers (Mahendran & Vedaldi 2015);
* photos made into "ostrich" by Szegedy et al.'s box-constrained L-BFGS (2014, Fig. 5);
* fooling images classified at >= 99.6% (Nguyen et al. 2015), by gradient ascent from noise.

As in ``convlens demo``, a step whose results are all current is skipped (``force`` runs it again), and
every step is also a function with keyword budgets that the tests call with tiny ones.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..results import saving

NAME = "efficientnet_lite0"

# skimage.data photo -> the ImageNet class it shows (ImageNet has no "motorcycle" or "cat": the nearest)
PHOTOS: dict[str, str] = {"coffee": "espresso", "chelsea": "tabby", "rocket": "missile", "camera": "tripod",
                          "stereo_motorcycle": "moped"}
# the lecture's class-model slides (Simonyan et al. 2014, Fig. 1 and the lecture's extra classes); ImageNet's
# names: "Siberian husky" for husky, "washer" for washing machine
LECTURE_CLASSES = ("dumbbell", "cup", "dalmatian", "bell pepper", "lemon", "Siberian husky", "washer",
                   "computer keyboard", "kit fox", "goose", "ostrich", "limousine")
FOOLING_CLASSES = ("king penguin", "starfish", "baseball", "electric guitar")  # from Nguyen et al.'s Fig. 1
ADVERSARIAL_TARGET = "ostrich"  # Szegedy et al.: "correct + distort = ostrich"

# The demo's budgets, chosen so that the whole demo takes about 2 minutes on 2 CPU cores (up to 5 when other
# work shares them): a forward + backward of one 224x224 image through EfficientNet-Lite0 takes 0.1-0.3 s there.
DEMO = dict(
    crop_scales=(1.0, 0.7, 0.5),  # crops per photo: squares of these fractions of its shorter side, half overlapping
    saliency_photos=("coffee", "chelsea", "rocket", "camera", "stereo_motorcycle"),
    occlusion_photos=("rocket", "camera"),  # objects smaller than the crop, which the net classifies correctly
    occlusion_window=96,   # 3/7 of the side: a smaller square hides too little of a 224 crop to change much
    occlusion_stride=8,    # 17x17 positions (incremental inference: a few seconds per photo)
    class_steps=120,       # Adam steps, the 12 images at once (every one is top-1 after 80; 120 draw the parts sharper)
    class_blur=1.5,        # px, every step: the shapes demo's 0.8 px every 2 steps leaves 224x224 images grainy
    class_jitter=28,       # px, 1/8 of the side (the default 1/16): parts large enough to recognize
    inversion_photo="coffee",
    inversion_layers=("_relu0", "_blocks.2", "_blocks.5", "_blocks.10", "_blocks.15", "_fc"),
    inversion_steps=100,   # per layer; shallow layers are cheap (the forward stops at the layer)
    adversarial_photos=("coffee", "camera", "stereo_motorcycle"),  # classified correctly (Szegedy: "correct")
    lbfgs_steps=20,        # L-BFGS iterations, the 3 images together: each reaches "ostrich" at c = 1
    lbfgs_c=1.0,           # fixed: the line search on c (3+ runs) would triple the time
    fooling_steps=60,      # a budget: the ascent stops once every image is at 99.6% (about 20 steps)
    patch_layers=("_blocks.2", "_blocks.4", "_blocks.7"),  # receptive fields 19, 67 and 147 px: inside the crop
    attribution_samples=25,  # SmoothGrad's noisy copies for the 5 saliency photos (half the paper's 50: as smooth)
    attribution_steps=50,    # IG's Gauss-Legendre points: 0.6% / 2.2% completeness error on coffee / chelsea (20: 5% / 41%)
    sanity_photos=("coffee", "camera"),
    sanity_max_steps=8,      # EfficientNet-Lite0's 19 layers (fc, head, 16 blocks, stem) merged into 8 cascade steps
    sanity_samples=10,       # SmoothGrad / IG inside the cascade: 9 models x 2 photos x every method
    sanity_steps=10,
    stimuli_layer="_blocks.10",  # a deep block (receptive field beyond the crop): its optima fill the image
    stimuli_unit=5,
    stimuli_inits=4,         # random starts; in 60 steps each goes from about -1 to 56-58 (measured on unit 5)
    stimuli_steps=60,
    invariances_k=8,         # about 100 Hessian-vector products of 150,528 dimensions (~1 min on one thread)
)

Step = tuple[str, tuple[str, ...], str]
_HERE = "convlens.cli.imagenet_demo"
STEPS: list[Step] = [
    ("filters", ("filters",), f"{_HERE}:demo_filters"),
    ("top-9 patches", ("top-patches",), f"{_HERE}:demo_patches"),
    ("saliency", ("saliency",), f"{_HERE}:demo_saliency"),
    ("attribution", ("attribution",), f"{_HERE}:demo_attribution"),
    ("occlusion", ("occlusion",), f"{_HERE}:demo_occlusion"),
    ("sanity checks", ("sanity",), f"{_HERE}:demo_sanity"),
    ("class models", ("class-model",), f"{_HERE}:demo_class_models"),
    ("inversion", ("inversion",), f"{_HERE}:demo_inversion"),
    ("adversarial", ("adversarial",), f"{_HERE}:demo_adversarial"),
    ("fooling images", ("fooling-gradient",), f"{_HERE}:demo_fooling"),
    ("optimal stimuli", ("optimal-stimuli", "hessian-invariances"), f"{_HERE}:demo_invariances"),
]


# ---- the run directory --------------------------------------------------------------------------------

def photos_folder(out: str | Path) -> Path:
    """Where the run's test images live: ``<out>-photos`` beside the run (``wrap`` wants an empty ``out``)."""
    out = Path(out)
    return out.with_name(out.name + "-photos")


def read_photo(name: str) -> np.ndarray:
    """The scikit-image photo ``name`` as uint8 (H, W, 3) (the left view of the stereo motorcycle pair)."""
    import skimage.data

    img = getattr(skimage.data, name)()
    img = img[0] if name == "stereo_motorcycle" else img
    img = np.asarray(img, dtype=np.uint8)
    return np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]


def photo_crops(image: np.ndarray, *, scales=DEMO["crop_scales"], size: int = 224) -> list[tuple[str, torch.Tensor]]:
    """(name, (3, size, size) in [0, 1]) crops of one photo: first ImageNet's evaluation crop
    (``photo_batch``: shorter side to 256, the central 224), then squares of each ``scales`` fraction of
    the shorter side on a grid overlapping by half, each resized to ``size``."""
    from ..data.resize import photo_batch, resize_shorter_side

    crops = [("0-center", photo_batch(image, size)[0])]
    t = torch.from_numpy(image).permute(2, 0, 1).float() / 255                        # (3, H, W)
    h, w = t.shape[1:]
    for si, scale in enumerate(scales):
        side = int(round(scale * min(h, w)))
        rows = np.linspace(0, h - side, 1 + round((h - side) / (side / 2))).round().astype(int)
        cols = np.linspace(0, w - side, 1 + round((w - side) / (side / 2))).round().astype(int)
        for r in rows:
            for c in cols:
                crop = resize_shorter_side(t[:, r:r + side, c:c + side], size)[:, :size, :size]  # (3, size, size)
                crops.append((f"{si + 1}-s{int(100 * scale)}-r{r}-c{c}", crop))
    return crops


def write_photos(folder: str | Path, *, photos: dict[str, str] = PHOTOS, scales=DEMO["crop_scales"]) -> Path:
    """An image folder of the crops of ``photos`` (skimage name -> ImageNet class), one sub-folder per class;
    ``<class>/<photo>-0-center.png`` sorts first in its folder."""
    from PIL import Image

    folder = Path(folder)
    for photo, cls in photos.items():
        sub = folder / cls
        sub.mkdir(parents=True, exist_ok=True)
        for name, crop in photo_crops(read_photo(photo), scales=scales):
            pixels = (crop.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
            path = sub / f"{photo}-{name}.png"
            if not path.is_file():
                Image.fromarray(pixels).save(path)
    return folder


def make_run(out: str | Path, *, photos: dict[str, str] = PHOTOS, scales=DEMO["crop_scales"]):
    """The run directory ``out`` of the pretrained network (made once: an existing one is loaded), its test
    data the crops of ``photos`` written to :func:`photos_folder`."""
    from ..training.runs import MANIFEST, load_run
    from ..training.wrap import wrap

    out = Path(out)
    if (out / MANIFEST).is_file():
        return load_run(out)
    folder = write_photos(photos_folder(out), photos=photos, scales=scales)
    return wrap(NAME, out, pretrained=True, data=folder)  # run.json records the weights' package and sha256


def photo_rows(run, photos) -> tuple[torch.Tensor, list[int], list[int]]:
    """(images (N, 3, 224, 224), their classes as the model's indices, rows of the run's test data) of the
    centre crops of ``photos``: the first image of each photo's class folder (files are read in sorted
    order, and ``-0-center`` sorts first)."""
    from ..training.evaluate import run_test_data

    data = run_test_data(run)
    folder_labels = torch.as_tensor(data.labels)                                    # indices into the folders
    rows = [int(torch.nonzero(folder_labels == data.class_names.index(PHOTOS[p]))[0]) for p in photos]
    images = torch.stack([data[i][0] for i in rows])                                # (N, 3, H, W)
    return images, [run.class_names.index(PHOTOS[p]) for p in photos], rows


# ---- the steps ------------------------------------------------------------------------------------------

def demo_filters(run, *, layer: str = "_conv_stem") -> None:
    """The first layer's 32 filters (3x3x3) and every conv layer's diagnosis (weights only)."""
    from .filters_cmds import compute

    compute(run, layer)


def demo_patches(run, *, layers=DEMO["patch_layers"], k: int = 9) -> None:
    """Top-9 crops of every unit of ``layers`` (blocks whose receptive fields fit in the 224 crop; deeper ones
    see the whole crop) over the run's crops."""
    from .patches_cmds import compute

    compute(run, None, list(layers), k=k, batch_size=32)


def demo_saliency(run, *, photos=DEMO["saliency_photos"], iterations: int = 5) -> None:
    """Saliency of the predicted class and its GrabCut mask (and deconvnet, guided backprop) of each photo's
    centre crop; no true masks, so no IoU."""
    from ..plots.common import to_png
    from ..units.segment import explain

    x, labels, rows = photo_rows(run, photos)
    with saving(run, "saliency") as saver:
        result = explain(run, x, None, labels=labels, indices=rows, iterations=iterations,
                         data="crops of scikit-image photos (centre crops)")
        saver.save(result)
        saver.figure(lambda: to_png(result.plot("saliency")), "-saliency")


def demo_attribution(run, *, photos=DEMO["saliency_photos"], samples: int = DEMO["attribution_samples"],
                     steps: int = DEMO["attribution_steps"]) -> None:
    """Grad-CAM, Grad-CAM++, guided Grad-CAM, SmoothGrad and Integrated Gradients of the predicted class of each
    photo's centre crop."""
    from ..plots.common import to_png
    from ..units.attribution_views import attribute

    x, labels, rows = photo_rows(run, photos)
    with saving(run, "attribution") as saver:
        result = attribute(run, x, None, samples=samples, steps=steps, labels=labels, indices=rows,
                           data="crops of scikit-image photos (centre crops)")
        saver.save(result)
        saver.figure(lambda: to_png(result.plot("all")), "-all")


def demo_sanity(run, *, photos=DEMO["sanity_photos"], max_steps: int = DEMO["sanity_max_steps"],
                samples: int = DEMO["sanity_samples"], steps: int = DEMO["sanity_steps"], methods=None) -> None:
    """Adebayo et al.'s cascading randomization of every map of two photos' centre crops, for their true
    class (no model trained on shuffled ImageNet labels: the data randomization test is left out)."""
    from ..plots.common import to_png
    from ..units.sanity import METHODS, sanity_check

    x, labels, _ = photo_rows(run, photos)
    with saving(run, "sanity") as saver:
        result = sanity_check(run, x, labels, methods=tuple(methods or METHODS), max_steps=max_steps,
                              samples=samples, steps=steps)
        saver.save(result)
        saver.figure(lambda: to_png(result.plot()))
        saver.figure(lambda: to_png(result.plot_maps()), "-maps")


def demo_invariances(run, *, layer: str = DEMO["stimuli_layer"], unit: int = DEMO["stimuli_unit"],
                     n_inits: int = DEMO["stimuli_inits"], steps: int = DEMO["stimuli_steps"],
                     k: int = DEMO["invariances_k"], refine: int = 50) -> None:
    """Optimal stimuli of one deep unit from several random starts (Erhan et al. 2009) and the Hessian
    invariances of the best (Le et al. 2010), on one torch thread: batch-1 Hessian-vector products are many
    small ops, which a second thread slows down whenever the other core is busy."""
    from .invariances_cmds import compute_invariances

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compute_invariances(run, layer, unit, n_inits=n_inits, steps=steps, k=k, refine=refine)
    finally:
        torch.set_num_threads(threads)


def demo_occlusion(run, *, photos=DEMO["occlusion_photos"], window: int = DEMO["occlusion_window"],
                   stride: int = DEMO["occlusion_stride"], layer: str = "_relu1") -> None:
    """Occlusion triptychs (feature map, P(true class), most probable class) of the photos' centre crops; the
    feature map is the strongest unit of the last conv layer after its ReLU6 (Zeiler & Fergus's layer 5)."""
    from dataclasses import replace

    from ..plots.common import to_png
    from ..plots.occlusion import occlusion_figure
    from ..units.occlusion import occlusion

    x, labels, rows = photo_rows(run, photos)
    with saving(run, "occlusion") as saver:
        found = [replace(occlusion(run, img, label, window, stride, 0.5, layer, batch_size=16), label=label, index=row)
                 for img, label, row in zip(x, labels, rows)]
        saver.save(found)
        saver.figure(lambda: to_png(occlusion_figure(found)))


def demo_class_models(run, *, classes=LECTURE_CLASSES, steps: int = DEMO["class_steps"],
                      blur: float = DEMO["class_blur"], jitter: int = DEMO["class_jitter"],
                      plain_steps: int | None = None) -> None:
    """One class model per lecture class, from the mean image: ``steps`` Adam steps, each on the image
    shifted by up to ``jitter`` px and followed by a Gaussian blur of ``blur`` px."""
    from ..plots.class_model import class_model_figure
    from ..plots.common import to_png
    from ..synthesis.class_model import class_model

    with saving(run, "class-model") as saver:
        result = class_model(run, list(classes), n_seeds=1, steps=steps, blur=blur, blur_every=1, jitter=jitter,
                             plain_steps=plain_steps)
        saver.save(result)
        saver.figure(lambda: to_png(class_model_figure(result)))


def demo_inversion(run, *, photo: str = DEMO["inversion_photo"], layers=DEMO["inversion_layers"],
                   steps: int = DEMO["inversion_steps"]) -> None:
    """One photo reconstructed from its code at each of ``layers`` (the stem, four blocks, the class scores)."""
    from ..plots.common import to_png
    from ..plots.inversion import layers_figure
    from ..synthesis.inversion import invert

    x, _, _ = photo_rows(run, [photo])
    with saving(run, "inversion") as saver:
        per_layer = invert(run, x, list(layers), steps=steps)
        saver.save((x, per_layer))
        saver.figure(lambda: to_png(layers_figure(x, per_layer)))


def demo_adversarial(run, *, photos=DEMO["adversarial_photos"], target: str = ADVERSARIAL_TARGET,
                     steps: int = DEMO["lbfgs_steps"], c: float | None = DEMO["lbfgs_c"]) -> None:
    """The photos' centre crops made into ``target`` by Szegedy's box-constrained L-BFGS, minimizing
    ``c ||r||² - log P(target | x + r)`` at the given ``c`` (None: a line search on ``c`` for the smallest
    distortion, several runs)."""
    from ..plots.common import to_png
    from ..synthesis.adversarial import adversarial

    x, labels, rows = photo_rows(run, photos)
    with saving(run, "adversarial") as saver:
        result = adversarial(run, x, target, method="lbfgs", steps=steps, c=c, labels=labels, indices=rows)
        saver.save(result)
        saver.figure(lambda: to_png(result.plot()))


def demo_fooling(run, *, classes=FOOLING_CLASSES, steps: int = DEMO["fooling_steps"]) -> None:
    """Fooling images of ``classes`` by gradient ascent of log P(class) from noise, until 99.6% (or ``steps``)."""
    from ..plots.common import to_png
    from ..plots.fooling import fooling_figure
    from ..synthesis.fooling import fooling_image

    with saving(run, "fooling-gradient") as saver:
        result = fooling_image(run, list(classes), method="gradient", steps=steps)
        saver.save(result)
        saver.figure(lambda: to_png(fooling_figure(result)))


# ---- the demo -------------------------------------------------------------------------------------------

def imagenet_demo(out: str | Path = "runs/imagenet", *, analyses: bool = True, force: bool = False,
                  echo: Callable[[str], None] = print) -> Path:
    """Make (or load) the run, evaluate it on the crops, run the steps not yet current, write the report;
    returns the report's path."""
    from ..training.evaluate import evaluate
    from .demo_steps import run_steps

    t0 = time.perf_counter()
    echo(f"convlens demo --imagenet: {NAME} (ImageNet-1k weights) into {out}, "
         f"its test images crops of {len(PHOTOS)} scikit-image photos in {photos_folder(out)}")
    run = make_run(out)
    with saving(run, "evaluation") as saver:
        ev = evaluate(run, batch_size=32)
        saved = saver.save(ev)
    echo(repr(ev))
    echo(f"saved: {saved}")
    if analyses:
        echo(f"\nanalyses (results in {saved.parent}; current ones are skipped):")
        run_steps(run, echo=echo, force=force, steps=STEPS)
    from ..reporting import report

    path = report(run)
    echo(f"\nreport: {path.resolve()}")
    echo(f"figures: {path.parent.resolve() / 'figures'}")
    echo(f"total {time.perf_counter() - t0:.1f} s")
    return path
