"""Train a network on an image dataset into a resumable run directory: ``train(arch, data, out=...)``.

The lecture's "train convolutional filters by back-propagating classification error": cross-entropy
on the scores before the softmax, SGD with momentum (or Adam), a cosine or step learning-rate
schedule, light augmentation (random horizontal flip and a small random translation, done on
whole batches of tensors). Inputs are normalized per channel with the training set's mean/std,
which the run stores so that ``run.pixel_model()`` takes plain [0, 1] images.

Determinism: the random streams of epoch ``e`` (shuffling, augmentation, dropout) are seeded from
``(seed, e)`` alone, and the weights are initialized from ``seed``, so the same call gives the same
weights bit for bit (on CPU; on GPU also set ``torch.use_deterministic_algorithms(True)``), and a
run resumed from its checkpoint ends exactly where an uninterrupted one does. The caller's global
RNG state is left as found. Each epoch drops its last partial batch (a fresh shuffle each epoch
means every image is still seen). The run directory (resuming, saving each epoch, the manifest) is
``session.py``'s.

Any ``nn.Module`` trains, not only the grammar's: give a factory (``path/to/file.py:make``,
``package.module:make``, or a callable) and it is called under the seeded RNG, so its weights are the
same on every call; give a module instance and it is trained in place from its current weights. The run
records how to rebuild the model: the factory's reference (an instance's class, when calling it with no
arguments rebuilds it), else only the class's name (``load_run`` then needs ``arch=``).
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..arch.grammar import GrammarNet, describe
from ..arch.zoo import build, is_zoo_name
from ..errors import InputError, expect
from ..models.factory import absolute_ref, call, call_factory, factory_ref_of, is_factory_ref, ref_of_callable
from .checkpoint import stale_manifest
from .sources import instance_record
from .runs import MANIFEST, WEIGHTS, Run
from .session import Session, as_run, fingerprint, plain_json, resume, run_folder, save_epoch, write_outputs

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "step", "none")
_CHUNK = 256  # images per step of the channel statistics (the same with or without workers: same sums)

# The default demo: `shapesnet` on `shapes`, >= 95 % test accuracy in under 3 minutes on a 2-core CPU,
# data generation included (measured: see the README). train()'s defaults are this recipe's.
DEMO_RECIPE: dict[str, Any] = dict(arch="shapesnet", data="shapes", epochs=10, batch_size=64, optimizer="adam",
                                   lr=2e-3, momentum=0.9, weight_decay=5e-4, schedule="cosine", augment=True)


def demo(*, out: str | Path, **overrides) -> Run:
    """Train (or resume, or just load) the demo model: ``train(**DEMO_RECIPE, out=out)``."""
    return train(**{**DEMO_RECIPE, **overrides}, out=out)


# The natural-image model: `photosnet` on 13,000 48x48 `photos` patches, ~1.5 minutes on one CPU thread,
# ~90 % test accuracy. Its 9x9 conv1 learns smooth edges, bars and centre-surround / colour blobs, most
# tinted with a photo's colour (docs/photos_conv1.png); SGD with a strong weight decay wears the random
# initial pattern away. Measured: benchmarks/bench_photos_filters.py.
PHOTOS_RECIPE: dict[str, Any] = dict(arch="photosnet", data={"name": "photos", "size": 48, "n": 13000}, epochs=6,
                                     batch_size=32, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-3,
                                     schedule="cosine", augment=True)


def photos_demo(*, out: str | Path, **overrides) -> Run:
    """Train (or resume, or just load) the natural-image model: ``train(**PHOTOS_RECIPE, out=out)``."""
    return train(**{**PHOTOS_RECIPE, **overrides}, out=out)


# The "CNN vs Human" showcase: a small CNN on the real Fashion-MNIST (`fashion`, Debian's dataset-fashion-mnist),
# all 60,000 training images, where people and CNNs both err (shirt, t-shirt, pullover, coat). A strided 5x5
# conv1 keeps it cheap (~50k parameters); measured on this 2-core CPU: see the README's "CNN vs Human" section.
FASHION_RECIPE: dict[str, Any] = dict(arch="CONV5-32/2,BN,RELU,CONV3-64,BN,RELU,POOL2,FC,SOFTMAX", data="fashion",
                                      epochs=4, batch_size=128, optimizer="adam", lr=3e-3, momentum=0.9,
                                      weight_decay=1e-4, schedule="cosine", augment=True)

# What `convlens train --data NAME` uses when --arch and the hyper-parameters are not given (DEMO_RECIPE otherwise).
RECIPES: dict[str, dict[str, Any]] = {"fashion": FASHION_RECIPE}


def recipe_for(data) -> dict[str, Any]:
    """The recipe `convlens train` starts from for ``data`` (a dataset name): its own, else DEMO_RECIPE's."""
    return dict(RECIPES.get(data, DEMO_RECIPE) if isinstance(data, str) else DEMO_RECIPE)


def fashion_demo(*, out: str | Path, **overrides) -> Run:
    """Train (or resume, or just load) the Fashion-MNIST model: ``train(**FASHION_RECIPE, out=out)``."""
    return train(**{**FASHION_RECIPE, **overrides}, out=out)


def train(arch: str | nn.Module | Callable[[], nn.Module], data, *, out: str | Path, test_data=None,
          epochs: int = 10, batch_size: int = 64, optimizer: str = "adam", lr: float = 2e-3, momentum: float = 0.9,
          weight_decay: float = 5e-4, schedule: str = "cosine", augment: bool = True, seed: int = 0,
          num_workers: int = 0, device: str | torch.device | None = None, overwrite: bool = False,
          progress: bool = True, callback: Callable[[dict], None] | None = None, shuffle_labels: bool = False) -> Run:
    """Train ``arch`` on ``data`` into the run directory ``out`` and return the ``Run``.

    ``arch``: a zoo name or grammar spec (input shape and class count come from the data; write the
    last FC without a width), a ``GrammarNet`` to start from, or your own network: a factory reference
    ``path/to/file.py:make`` or ``package.module:make``, a callable returning an ``nn.Module`` (called
    under the seeded RNG), or an ``nn.Module`` (trained in place, from its current weights). Your network
    takes normalized (N, C, H, W) images and returns (N, K) class scores before the softmax; one forward of
    a batch of one checks that against the data before anything is written. ``data``: a dataset name or path
    (then ``test_data`` defaults to its test split), such a name with ``datasets.load`` options as
    ``{"name": "photos", "size": 48, "n": 13000}`` (the test split gets the same options but ``n``),
    or an ImageDataset; ``test_data=False`` skips the per-epoch test metrics. Re-running with the
    same ``out`` resumes from the last completed epoch, or returns the finished run
    (``run.already_done``); different settings raise RunError unless ``overwrite``.
    ``callback(record)`` runs after each epoch is saved (raising stops training; the run resumes
    later). A call that stops before its first epoch is saved removes the ``out`` folder it created.
    ``device`` defaults to the given net's, else CUDA when available.
    ``shuffle_labels``: train on the training images with their labels randomly permuted (one permutation
    drawn from ``seed``), the data randomization test of Adebayo et al. 2018 (``convlens.sanity_check``'s
    ``random_labels_model``): the net can only memorize, and its test accuracy is chance. The run records it
    (``hyper["shuffle_labels"]``); the test split keeps its true labels.
    """
    hyper = _check_hyper(epochs=epochs, batch_size=batch_size, optimizer=optimizer, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, schedule=schedule, augment=augment, seed=seed)
    if not isinstance(num_workers, int) or isinstance(num_workers, bool) or num_workers < 0:
        raise expect("num_workers", "an int >= 0", num_workers)
    if not isinstance(shuffle_labels, bool):
        raise expect("shuffle_labels", "True or False", shuffle_labels)
    train_ds, test_ds = _resolve_data(data, test_data)
    if shuffle_labels:  # recorded only when set, so runs made before the option resume with the same settings
        hyper["shuffle_labels"] = True
        train_ds = shuffled_labels(train_ds, seed)
    dev = torch.device(device) if device is not None else _default_device(arch)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        net, arch_info = _build(arch, train_ds)  # checked against the data before the out folder exists
        with run_folder(Path(out), overwrite=overwrite) as out:
            mean, std = _dataset_stats(train_ds, num_workers)
            net.to(dev)
            settings = plain_json({"arch": arch_info, "data": fingerprint(train_ds, mean, std), "hyper": hyper})
            opt = _optimizer(net, hyper)
            history, start = resume(out, settings, net, opt)
            s = Session(out, net, opt, arch_info, settings, hyper, mean, std, train_ds, test_ds, history)
            if start >= hyper["epochs"]:
                if stale_manifest(out / MANIFEST, out / WEIGHTS, epochs_done=start):  # killed after the checkpoint
                    write_outputs(s, status="complete", weights_too=True)
                return as_run(s, already_done=True)
            _loop(s, start, num_workers=num_workers, progress=progress, callback=callback)
    return as_run(s, already_done=False)


# ---- the loop --------------------------------------------------------------------------------------

def _loop(s: Session, start: int, *, num_workers: int, progress: bool, callback) -> None:
    from tqdm.auto import tqdm

    net, opt, hyper = s.net, s.opt, s.hyper
    p = next(net.parameters())
    dev, dtype = p.device, p.dtype
    mean = s.mean.to(dev, dtype).view(1, -1, 1, 1)  # (1, C, 1, 1)
    std = s.std.to(dev, dtype).view(1, -1, 1, 1)
    labels = s.train_ds.labels
    n, epochs = len(labels), hyper["epochs"]
    b = min(hyper["batch_size"], n)
    steps = n // b
    shift = max(1, round(min(s.train_ds.input_shape[1:]) / 16))
    bar = tqdm(total=epochs * steps, initial=start * steps, disable=not progress, unit="batch", dynamic_ncols=True)
    try:
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(_epoch_seed(hyper["seed"], epoch, 0))  # shuffle + augmentation
            torch.manual_seed(_epoch_seed(hyper["seed"], epoch, 1))  # dropout and other in-model randomness
            order = torch.randperm(n, generator=gen)
            net.train()
            loss_sum = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev, dtype=torch.int64)
            lr0 = lr_at(epoch * steps, epoch, steps=steps, hyper=hyper)
            bar.set_description(f"epoch {epoch + 1}/{epochs}")
            for i, (x, y) in enumerate(_batches(s.train_ds, order, b, steps, num_workers)):
                x = (x.to(dev, dtype, non_blocking=True) - mean) / std  # (B, C, H, W)
                y = y.to(dev, non_blocking=True)
                if hyper["augment"]:
                    x = augment_batch(x, gen, shift=shift)
                for group in opt.param_groups:
                    group["lr"] = lr_at(epoch * steps + i, epoch, steps=steps, hyper=hyper)
                scores = net(x)  # (B, K)
                loss = F.cross_entropy(scores, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach() * len(y)
                correct += (scores.detach().argmax(1) == y).sum()
                bar.update(1)
                if progress and (i % 20 == 19 or i == steps - 1):
                    seen = (i + 1) * b
                    bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / (steps * b),
                      "train_acc": correct.item() / (steps * b), "test_loss": None, "test_acc": None,
                      "lr": lr0}
            if s.test_ds is not None:
                record["test_loss"], record["test_acc"] = _test_metrics(net, s.test_ds, mean, std, 2 * b)
            record["seconds"] = round(time.perf_counter() - t0, 3)
            s.history.append(record)
            save_epoch(s, epochs_done=epoch + 1, status="complete" if epoch + 1 == epochs else "training")
            if progress:
                bar.write(epoch_line(record, epochs))
            if callback is not None:
                callback({**record, "epochs": epochs, "out": str(s.out)})
    finally:
        bar.close()
        net.eval()


def epoch_line(record: dict, epochs: int) -> str:
    """What is printed after each epoch: ``epoch 3/10  train loss 0.4123 acc 0.8712  test loss ... 9.8s``."""
    test = f"  test loss {record['test_loss']:.4f} acc {record['test_acc']:.4f}" \
        if record["test_acc"] is not None else ""
    return (f"epoch {record['epoch']}/{epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}{test}  {record['seconds']:.1f}s")


def _batches(ds, order: torch.Tensor, b: int, steps: int, num_workers: int):
    """(x (B, C, H, W), y (B,)) batches in ``order``: slices of the in-memory tensors, or a DataLoader
    with workers reading items (same content, same order)."""
    chunks = [order[i * b:(i + 1) * b] for i in range(steps)]
    if num_workers == 0:
        images, labels = ds.images, ds.labels
        for idx in chunks:
            yield images[idx], labels[idx]
        return
    loader = torch.utils.data.DataLoader(ds, batch_sampler=[c.tolist() for c in chunks], num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))  # keeps the global RNG out
    for x, y in loader:
        yield x, torch.as_tensor(y, dtype=torch.int64)


@torch.no_grad()
def _test_metrics(net: nn.Module, ds, mean, std, batch: int) -> tuple[float, float]:
    net.eval()
    p = next(net.parameters())
    total_loss, correct = 0.0, 0
    for i in range(0, len(ds), batch):
        x = (ds.images[i:i + batch].to(p.device, p.dtype) - mean) / std  # (B, C, H, W)
        y = ds.labels[i:i + batch].to(p.device)
        scores = net(x)
        total_loss += F.cross_entropy(scores, y, reduction="sum").item()
        correct += int((scores.argmax(1) == y).sum())
    return total_loss / len(ds), correct / len(ds)


def augment_batch(x: torch.Tensor, gen: torch.Generator, *, shift: int) -> torch.Tensor:
    """Random horizontal flip (p=0.5) and a random translation by up to ``shift`` pixels per image,
    zero-filled (the mean colour, as ``x`` is normalized); the random draws come from ``gen``."""
    n, c, h, w = x.shape
    flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)  # (N,)
    dy, dx = torch.randint(-shift, shift + 1, (2, n), generator=gen).to(x.device)  # (N,), (N,)
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (shift, shift, shift, shift))  # (N, C, H+2s, W+2s)
    rows = (torch.arange(h, device=x.device) + shift + dy.view(n, 1)).view(n, 1, h, 1)  # (N, 1, H, 1)
    cols = (torch.arange(w, device=x.device) + shift + dx.view(n, 1)).view(n, 1, 1, w)  # (N, 1, 1, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    chans = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[batch, chans, rows, cols]  # (N, C, H, W)


def lr_at(step: int, epoch: int, *, steps: int, hyper: dict) -> float:
    """Learning rate at global ``step``: cosine decay to 0 over all steps, x0.1 at 50 % and 75 % of the
    epochs ("step"), or constant ("none")."""
    base, epochs = hyper["lr"], hyper["epochs"]
    if hyper["schedule"] == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * step / (epochs * steps)))
    if hyper["schedule"] == "step":
        return base * 0.1 ** sum(epoch >= m for m in (epochs // 2, (3 * epochs) // 4) if m > 0)
    return base


def _epoch_seed(seed: int, epoch: int, stream: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{epoch}/{stream}".encode()).digest()[:7], "little")


def channel_stats(images: torch.Tensor, *, chunk: int = _CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of (N, C, H, W) images, in float64 chunk by chunk -> two (C,) float32."""
    return _stats(images[i:i + chunk] for i in range(0, len(images), chunk))


def _stats(batches) -> tuple[torch.Tensor, torch.Tensor]:
    total = squares = None
    count = 0
    for x in batches:
        x = x.to("cpu", torch.float64)  # (B, C, H, W)
        total = x.sum((0, 2, 3)) + (0 if total is None else total)
        squares = (x * x).sum((0, 2, 3)) + (0 if squares is None else squares)
        count += x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)
    return mean.float(), std.float()


def _dataset_stats(ds, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """channel_stats of a dataset; with workers, streamed through a DataLoader (lazy folders stay lazy)."""
    if num_workers == 0:
        return channel_stats(ds.images)
    loader = torch.utils.data.DataLoader(ds, batch_size=_CHUNK, num_workers=num_workers,
                                         generator=torch.Generator().manual_seed(0))
    return _stats(x for x, _ in loader)


# ---- setup -------------------------------------------------------------------------------------------

def _check_hyper(**h) -> dict:
    for name in ("epochs", "batch_size"):
        if not isinstance(h[name], int) or isinstance(h[name], bool) or h[name] < 1:
            raise expect(name, "a positive int", h[name])
    if not isinstance(h["seed"], int) or isinstance(h["seed"], bool) or h["seed"] < 0:
        raise expect("seed", "an int >= 0", h["seed"])
    if not isinstance(h["lr"], (int, float)) or not h["lr"] > 0:
        raise expect("lr", "a positive number", h["lr"])
    if not isinstance(h["momentum"], (int, float)) or not 0 <= h["momentum"] < 1:
        raise expect("momentum", "a number in [0, 1)", h["momentum"])
    if not isinstance(h["weight_decay"], (int, float)) or not h["weight_decay"] >= 0:
        raise expect("weight_decay", "a number >= 0", h["weight_decay"])
    if h["optimizer"] not in OPTIMIZERS:
        raise expect("optimizer", f"one of {OPTIMIZERS}", h["optimizer"])
    if h["schedule"] not in SCHEDULES:
        raise expect("schedule", f"one of {SCHEDULES}", h["schedule"])
    if not isinstance(h["augment"], bool):
        raise expect("augment", "True or False", h["augment"])
    return {**h, "lr": float(h["lr"]), "momentum": float(h["momentum"]), "weight_decay": float(h["weight_decay"])}


_LOAD_OPTIONS = ("size", "n", "seed", "channels")  # what a data dict may pass to datasets.load


def _resolve_data(data, test_data):
    options = {}
    if isinstance(data, dict):  # {"name": ..., **load options}
        options = {k: v for k, v in data.items() if k != "name"}
        if not isinstance(data.get("name"), (str, Path)) or not set(options) <= set(_LOAD_OPTIONS):
            raise expect("data", f"a dict with a 'name' and datasets.load options {_LOAD_OPTIONS}", data)
        data = data["name"]
    test_options = {k: v for k, v in options.items() if k != "n"}  # the test split keeps its own size
    if isinstance(data, (str, Path)):
        from .. import datasets
        from ..errors import DataError

        train_ds = datasets.load(str(data), split="train", **options)
        if test_data is None:
            try:
                test_data = datasets.load(str(data), split="test", **test_options)
            except DataError:
                test_data = False  # a folder without a test split: no per-epoch test metrics
    else:
        train_ds = _check_dataset(data, "data")
    if isinstance(test_data, (str, Path)):
        from .. import datasets

        test_data = datasets.load(str(test_data), split="test", **test_options)
    test_ds = None if test_data is None or test_data is False else _check_dataset(test_data, "test_data")
    if test_ds is not None and (tuple(test_ds.input_shape) != tuple(train_ds.input_shape)
                                or list(test_ds.class_names) != list(train_ds.class_names)):
        raise InputError(f"test_data must have the training data's shape {tuple(train_ds.input_shape)} and classes; "
                         f"got {tuple(test_ds.input_shape)} with {len(test_ds.class_names)} classes")
    return train_ds, test_ds


def shuffled_labels(ds, seed: int):
    """A shallow copy of dataset ``ds`` (the same images) whose labels are a random permutation of its own,
    drawn from ``seed`` (the global RNG is not touched)."""
    import copy

    order = torch.randperm(len(ds.labels), generator=torch.Generator().manual_seed(seed))
    out = copy.copy(ds)
    out.labels = torch.as_tensor(ds.labels)[order].clone()
    out.info = {**dict(getattr(ds, "info", None) or {}), "labels": f"shuffled (seed {seed})"}
    return out


def _check_dataset(ds, name: str):
    if not all(hasattr(ds, a) for a in ("images", "labels", "class_names")):
        raise expect(name, "a dataset name or path, or an ImageDataset (images, labels, class_names)",
                     type(ds).__name__)
    if len(ds.labels) == 0:
        raise expect(name, "a non-empty dataset", ds)
    return ds


def _default_device(arch) -> torch.device:
    if isinstance(arch, nn.Module):
        p = next(arch.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _build(arch, ds) -> tuple[nn.Module, dict]:
    """(the net, the manifest's ``arch`` entry): how to rebuild it, the input shape, class count and dtype."""
    shape, k = tuple(ds.input_shape), len(ds.class_names)
    if isinstance(arch, str) and arch.strip().endswith(".py"):
        raise expect("arch", f"a file with its factory, {arch.strip()}:make (a function or class returning an "
                             "nn.Module)", arch)
    if isinstance(arch, GrammarNet) or (isinstance(arch, str) and not is_factory_ref(arch)):
        return _build_grammar(arch, shape, k)
    if isinstance(arch, str):
        net, source = call_factory(arch), {"kind": "factory", "ref": absolute_ref(arch)}
    elif isinstance(arch, nn.Module):
        net = arch
        source = instance_record(net)
    elif callable(arch):
        net = _called(arch)
        source = instance_record(net, factory_ref_of(net) if isinstance(arch, type) else ref_of_callable(arch), guess=False)
    else:
        raise expect("arch", "a zoo name, a grammar spec, a factory reference (path/to/file.py:factory or "
                             "package.module:factory), a callable returning an nn.Module, or an nn.Module",
                     type(arch).__name__)
    _check_module(net, shape, k)
    return net, {"source": source, "name": None, "spec": None, "input_shape": list(shape), "num_classes": k,
                 "dtype": _dtype(net)}


def _build_grammar(arch, shape: tuple, k: int) -> tuple[GrammarNet, dict]:
    name = None
    if isinstance(arch, GrammarNet):
        net = arch
    else:
        name = arch.lower() if is_zoo_name(arch) else None
        net = build(arch, num_classes=k, input_shape=shape)
    if tuple(net.input_shape) != shape or net.num_classes != k:
        raise InputError(f"arch must take the data's {shape} images and end in {k} scores; got input_shape "
                         f"{tuple(net.input_shape)} and {net.num_classes} outputs (write the last FC without a width)")
    info = {"name": name, "spec": describe(net), "naming": net.naming, "layout": net.layout,
            "input_shape": list(shape), "num_classes": k, "dtype": _dtype(net)}
    return net, info


def _dtype(net: nn.Module) -> str:
    return str(next(net.parameters()).dtype).removeprefix("torch.")


def _called(factory) -> nn.Module:
    return call(factory, "arch", getattr(factory, "__name__", type(factory).__name__))


def _check_module(net: nn.Module, shape: tuple, k: int) -> None:
    """One forward of a batch of one (eval mode, no gradient, every module's mode restored): the net must
    take the data's (C, H, W) images and return (1, k) class scores. InputError naming its class otherwise."""
    name = type(net).__name__
    p = next(net.parameters(), None)
    if p is None or not p.is_floating_point():
        raise InputError(f"arch must have floating-point parameters to train; {name} has "
                         f"{'none' if p is None else p.dtype}")
    modes = [m.training for m in net.modules()]
    x = torch.zeros(1, *shape, device=p.device, dtype=p.dtype)  # (1, C, H, W): the mean image, normalized
    try:
        net.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[p.device.index or 0] if p.device.type == "cuda" else []):
            scores = net(x)
    except Exception as err:
        raise InputError(f"{name} must take the data's {shape} images (a batch of shape {tuple(x.shape)}); its "
                         f"forward raised {type(err).__name__}: {err}") from None
    finally:
        for m, mode in zip(net.modules(), modes):
            m.training = mode
    got = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2 or scores.shape[0] != 1:
        raise InputError(f"{name} must return class scores of shape (N, {k}) for the data's {k} classes; "
                         f"got {got} for a batch of one")
    if scores.shape[1] != k:
        raise InputError(f"{name} ends in {scores.shape[1]} scores; the data has {k} classes "
                         f"(its last layer must have {k} outputs)")


def _optimizer(net: nn.Module, h: dict) -> torch.optim.Optimizer:
    if h["optimizer"] == "sgd":
        return torch.optim.SGD(net.parameters(), lr=h["lr"], momentum=h["momentum"], weight_decay=h["weight_decay"])
    return torch.optim.Adam(net.parameters(), lr=h["lr"], weight_decay=h["weight_decay"])


