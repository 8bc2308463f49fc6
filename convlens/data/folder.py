"""ImageFolder-style directories: ``root/<class>/<image>``, one sub-folder per class.

Layout and splits:
- If ``root`` has ``train/`` and ``test/`` (or ``val/``) sub-folders, each holds class folders
  and ``split`` picks one (``"all"``: both).  Otherwise ``root``'s sub-folders are the classes
  and a seeded, per-class 20 % of the files is held out as ``"test"`` (the rest is ``"train"``;
  ``"all"`` keeps everything).  Class names are the sorted folder names over both splits, so
  class indices agree between splits.
- Files are found recursively inside class folders; hidden entries (``.name``) are ignored, and
  so are loose files beside the class folders (README, LICENSE...).  Everything else inside a
  class folder must be an image.

Image policy (``images.py``): every image is converted to the dataset's channel count and
resized to one common size.  ``channels=None`` means 1 if every image in the folder is gray,
else 3; ``size=None`` means the most common (H, W) in the folder (both splits are counted, so
train and test always agree).  Conversions and resizes are counted in ``ds.info["converted"]``
(e.g. ``{"RGBA->RGB": 1}``) and ``ds.info["resized"]``.

Bad files (empty, not an image, unidentifiable, truncated or corrupt; a ``README.txt`` inside a
class folder too): ``on_error="raise"`` (default) raises DataError naming the first one, counting
the rest and naming both ways to skip them (``on_error='skip'``, ``--on-error skip`` on the command
line); ``on_error="skip"``
drops them with a single warning giving the count and the first file, and lists them in
``ds.info["skipped"]``.  An empty folder, a folder without class sub-folders and an empty
class folder always raise.

Big folders load lazily (``lazy=None``: when the decoded images would pass ``LAZY_BYTES``):
headers are checked up front, pixels are read on access, and a file found corrupt only then
raises DataError naming it.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, expect
from . import images as imgio
from .dataset import ImageDataset, LazyImageDataset, as_size, balanced_pick

TEST_FRACTION = 0.2
LAZY_BYTES = 2 * 1024**3


def load_folder(root, split: str = "train", *, size=None, n=None, seed: int = 0, channels=None,
                on_error: str = "raise", lazy: bool | None = None) -> ImageDataset:
    """An ImageFolder directory -> ImageDataset (policies in the module docstring)."""
    if on_error not in ("raise", "skip"):
        raise expect("on_error", "'raise' or 'skip'", on_error)
    root, size = Path(root), as_size(size)
    split_roots = _split_roots(root)
    all_roots = list(split_roots.values()) if split_roots else [root]
    class_names = sorted({d.name for r in all_roots for d in _subdirs(r)})
    chosen = [split_roots[s] for s in (("train", "test") if split == "all" else (split,))] if split_roots else [root]
    files, labels, mine = [], [], []
    for r in all_roots:
        found, found_labels = _list_files(r, class_names)
        files, labels, mine = files + found, labels + found_labels, mine + [r in chosen] * len(found)

    infos = _probe(files)  # headers of both splits: the common size and channels come from all
    bad = [(f, info) for f, info, m in zip(files, infos, mine) if m and isinstance(info, str)]
    _raise_if(bad, on_error, root)
    keep = [j for j, (info, m) in enumerate(zip(infos, mine)) if m and not isinstance(info, str)]
    if not keep:
        raise DataError(f"{root}: no readable images left after skipping {len(bad)} bad files")
    good = [i for i in infos if not isinstance(i, str)]
    shape_hw = tuple(size) if size is not None else Counter(i.size for i in good).most_common(1)[0][0]
    ch = channels or (1 if all(i.channels == 1 for i in good) else 3)
    infos = [infos[j] for j in keep]
    labels = np.array([labels[j] for j in keep], dtype=np.int64)
    rows = np.arange(len(infos))
    if not split_roots and split != "all":
        rows = _hold_out(labels, seed, test=split == "test")
    rows = rows[balanced_pick(labels[rows], n, seed, what=f"the {split} split of {root}")]
    infos, labels = [infos[i] for i in rows], labels[rows]

    info = {"split": split, "layout": "train/test folders" if split_roots else f"held-out {TEST_FRACTION:.0%}",
            "resized": sum(i.size != shape_hw for i in infos)}
    if not split_roots:
        info["folder_images"] = len(keep)  # files passing the header check before the hold-out (split="all")
    spec = {"name_or_path": str(root), "split": split, "size": None if size is None else list(size),
            "n": n, "seed": seed, "channels": channels, "on_error": on_error}
    common = dict(name=root.name or str(root), source=str(root.resolve()), spec=spec)
    paths = [i.path for i in infos]

    if lazy or (lazy is None and len(infos) * ch * shape_hw[0] * shape_hw[1] * 4 > LAZY_BYTES):
        info["converted"] = {k: v for k, v in Counter(_conversion(i.mode, ch) for i in infos).items() if k}
        _report_skipped(bad, root, info)
        read_one = partial(imgio.load_image, size=shape_hw, channels=ch)  # picklable, for DataLoader workers
        return LazyImageDataset(paths, torch.from_numpy(labels), class_names, read=read_one,
                                input_shape=(ch, *shape_hw), info={**info, "lazy": True}, **common)

    tensors, conversions, ok = [], Counter(), []  # pixels now; a file can still fail here (truncated)
    for j, path in enumerate(paths):
        try:
            x, conv = imgio.read(path, size=shape_hw, channels=ch)
        except DataError as e:
            bad.append((path, str(e)))
            continue
        tensors.append(x)
        conversions.update([conv] if conv else [])
        ok.append(j)
    _raise_if(bad, on_error, root)
    if not tensors:
        raise DataError(f"{root}: no readable images left after skipping {len(bad)} bad files")
    info["converted"] = {k: v for k, v in conversions.items() if k}
    _report_skipped(bad, root, info)
    return ImageDataset(torch.stack(tensors), torch.from_numpy(labels[ok]), class_names, info=info,
                        **common)  # images (N, C, H, W)


def _probe(files: list[str]) -> list[imgio.ImageInfo | str]:
    """Header of every file, or the DataError message for a bad one."""
    infos: list[imgio.ImageInfo | str] = []
    for f in files:
        try:
            infos.append(imgio.probe(f))
        except DataError as e:
            infos.append(str(e))
    return infos


def _split_roots(root: Path) -> dict[str, Path] | None:
    """{'train': dir, 'test': dir} for a root with train/ and test/ (or val/) folders, else None."""
    names = {d.name: d for d in _subdirs(root)}
    if not names:
        loose = [f.name for f in root.iterdir() if not f.name.startswith(".")]
        if not loose:
            raise DataError(f"{root}: folder is empty; expected one sub-folder per class "
                            f"(e.g. {root}/cat/001.png)")
        raise DataError(f"{root}: has no class sub-folders, only {len(loose)} file(s) (e.g. {sorted(loose)[0]!r}); "
                        f"expected one sub-folder per class (e.g. {root}/cat/001.png); "
                        "for one image use datasets.load_image")
    test = names.get("test") or names.get("val")
    if "train" in names and test is not None:
        for d in (names["train"], test):
            if not _subdirs(d):
                raise DataError(f"{d}: has no class sub-folders; expected one sub-folder per class")
        return {"train": names["train"], "test": test}
    return None


def _subdirs(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_files(root: Path, class_names: list[str]) -> tuple[list[str], list[int]]:
    files, labels = [], []
    for d in _subdirs(root):
        found = _walk(d)
        if not found:
            raise DataError(f"{d}: class folder is empty; expected at least one image in it")
        files += found
        labels += [class_names.index(d.name)] * len(found)
    return files, labels


def _walk(d: Path) -> list[str]:
    """Every non-hidden file under d, sorted."""
    found = []
    for dirpath, dirs, names in os.walk(d):
        dirs[:] = [x for x in dirs if not x.startswith(".")]  # prune hidden folders
        found += [os.path.join(dirpath, f) for f in names if not f.startswith(".")]
    return sorted(found)


def _hold_out(labels: np.ndarray, seed: int, *, test: bool) -> np.ndarray:
    """Sorted rows of the train or test part: per class, a seeded 20 % (at least one row when
    the class has two or more) is test."""
    rows = []
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        n_test = int(round(TEST_FRACTION * len(members)))
        n_test = min(max(n_test, 1), len(members) - 1) if len(members) > 1 else 0
        perm = np.random.default_rng([seed, 11, int(k)]).permutation(members)
        rows.append(perm[:n_test] if test else perm[n_test:])
    return np.sort(np.concatenate(rows))


def _raise_if(bad: list[tuple[str, str]], on_error: str, root: Path) -> None:
    if bad and on_error == "raise":
        more = f" (and {len(bad) - 1} more bad file(s) in {root})" if len(bad) > 1 else ""
        raise DataError(f"{bad[0][1]}{more}; to skip bad files pass on_error='skip' "
                        "(on the command line: --on-error skip)")


def _report_skipped(bad: list[tuple[str, str]], root: Path, info: dict) -> None:
    info["skipped"] = [p for p, _ in bad]
    if bad:
        warnings.warn(f"skipped {len(bad)} unreadable file(s) in {root}; first: {bad[0][1]}", stacklevel=4)


def _conversion(mode: str, channels: int) -> str:
    target = "L" if channels == 1 else "RGB"
    return "" if mode == target else f"{mode}->{target}"
