"""A run directory for a model convlens did not train: ``wrap(source, out, ...) -> Run``.

``source`` is anything ``load_run`` resolves (``file.py:factory``, a ``.pt2`` program, TorchScript, a
weight file with ``arch=``, a zoo name or grammar spec, an ``nn.Module``). The run directory then
holds what every command needs::

    run.json             the source (how to rebuild the model), input shape, normalization, class
                         names, the data (the run's test split), the file this was made from
    weights.safetensors  the model's weights as they were wrapped (never pickle)
    model.pt2 / model.ts a copy of the program or TorchScript file (a factory is recorded by reference:
                         its absolute path, so your code stays where it is)

Everything is checked before anything is written: the model takes ``input_shape`` and gives one
score per class, the data is an image folder (or a dataset name) whose classes are the model's, and
the run loads back into a model with the same outputs. ``run.json`` is written last, so an
interrupted wrap leaves no run (run it again).
"""
from __future__ import annotations

import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import InputError, RunError
from ..io import atomic_write_json, save_tensors
from .runs import MANIFEST, RUN_FORMAT, WEIGHTS, Run, class_name_list, load_run, output_count

__all__ = ["wrap", "read_class_names"]

_COPIES = {"export": "model.pt2", "torchscript": "model.ts"}


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines and surrounding spaces ignored)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{p}: no such file; expected the class names, one per line") from None
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"{p}: cannot be read as text ({err}); expected the class names, one per line") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise InputError(f"{p}: holds no class names; expected one per line")
    return names


def wrap(source, out: str | Path, *, arch=None, weights: str | Path | None = None,
         input_shape: Sequence[int] | None = None, class_names: Sequence[str] | int | str | Path | None = None,
         mean: Sequence[float] | None = None, std: Sequence[float] | None = None, data=None,
         on_error: str = "raise", pretrained: bool = False, overwrite: bool = False, device=None) -> Run:
    """Write the run directory ``out`` for the model ``source`` (see the module docstring) and return it.

    ``class_names``: names, a count, or a text file (one name per line); by default the data's class
    folders when their number matches the model's outputs. ``data``: an image folder with one
    sub-folder per class (all of its images are the run's test split; ``train/`` and ``test/``
    sub-folders are used as such) or a built-in dataset name; ``on_error="skip"`` leaves out files that
    are not images (a README.txt), recorded so that every command skips them too. ``mean``/``std``: the normalization the
    model expects of [0, 1] pixels (default none). ``pretrained``: ``source`` names a pretrained model
    (``convlens.pretrained``): its weights, class names and normalization are the defaults.
    ``overwrite`` replaces an existing run in ``out``.
    """
    out = Path(out)
    if isinstance(class_names, (str, Path)):
        class_names = read_class_names(class_names)
    if pretrained:
        run = _pretrained(source, arch, weights, input_shape, mean, std, device)
        class_names = run.class_names if class_names is None else class_names
    else:
        run = load_run(source, arch=arch, weights=weights, input_shape=input_shape, mean=mean, std=std,
                       device=device)
    label = run.manifest["arch"].get("class") or type(run.model).__name__
    if run.input_shape is None:
        raise InputError(f"input_shape must be given for {source} ({label} does not say what it takes): "
                         "--input HxWxC, e.g. 224x224x3")
    n_out = output_count(run)
    dataset = _data(data, run.input_shape, on_error) if data is not None else None
    names = _names(class_names, dataset, n_out, label)
    _check_out(out, overwrite)

    record = dict(run.manifest["arch"]["source"])
    out.mkdir(parents=True, exist_ok=True)
    copy = _COPIES.get(record.get("kind"))
    if copy is not None:
        shutil.copyfile(record["file"], out / f".{copy}.tmp")
        (out / f".{copy}.tmp").replace(out / copy)
        record = {**record, "file": copy, "original": record["file"]}
    save_tensors(out / WEIGHTS, run.model.state_dict(), metadata={"format": "pt"})
    manifest = {
        "format": RUN_FORMAT, "version": 1, "status": "wrapped",
        "arch": _arch_entry(run, record, n_out, label),
        "input_shape": list(run.input_shape), "class_names": names,
        "normalization": {"mean": run.mean.tolist(), "std": run.std.tolist()},
        "data": _data_entry(dataset) if dataset is not None else {},
        "wrapped": {"source": str(source) if not isinstance(source, nn.Module) else label,
                    "weights": str(Path(weights).resolve()) if weights is not None else None,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "files": {"weights": WEIGHTS, **({"model": copy} if copy else {})},
        "versions": _versions(),
    }
    atomic_write_json(out / MANIFEST, manifest)
    instance = run.model if record.get("kind") == "instance" else None  # nothing else rebuilds it
    wrapped = load_run(out, arch=instance, device=device)
    _same_outputs(run, wrapped, out)
    return wrapped


def _pretrained(name, arch, weights, input_shape, mean, std, device) -> Run:
    from .pretrained import pretrained

    given = {"arch": arch, "weights": weights, "--input": input_shape, "--mean": mean, "--std": std}
    extra = [k for k, v in given.items() if v is not None]
    if extra:
        raise InputError(f"{', '.join(extra)} must not be given with --pretrained: {name}'s architecture, weights, "
                         "input size and normalization come with it")
    return pretrained(str(name), device=device)


# ---- checks -----------------------------------------------------------------------------------------------

def _data(data, shape, on_error: str):
    from .. import datasets

    c, h, w = shape
    key = str(data)
    if isinstance(data, str) and key in datasets.names():
        return datasets.load(key, split="test", size=(h, w), channels=c)
    p = Path(key).expanduser()
    if not p.is_dir():
        raise InputError(f"--data {data}: not a folder; expected an image folder with one sub-folder per class "
                         f"(or a built-in dataset: {', '.join(datasets.names())})")
    split = "test" if (p / "test").is_dir() and (p / "train").is_dir() else "all"
    return datasets.load(str(p.resolve()), split=split, size=(h, w), channels=c, lazy=True,
                         on_error=on_error)  # lists, decodes nothing


def _names(class_names, dataset, n_out: int, label: str) -> list[str] | None:
    data_names = list(dataset.class_names) if dataset is not None else None
    if class_names is None:
        if data_names is not None and len(data_names) == n_out:
            return data_names
        if data_names is not None:
            raise InputError(f"--data has {len(data_names)} classes but {label} gives {n_out} scores; give the "
                             "model's class names (--classes FILE, one per line, in the order of its outputs)")
        return None
    if isinstance(class_names, int) and not isinstance(class_names, bool):
        if class_names != n_out:
            raise InputError(f"--classes {class_names}: {label} gives {n_out} scores per image")
        return None
    names, count = class_name_list(class_names)  # non-empty and distinct
    if count != n_out:
        raise InputError(f"the class names must number as many as the model's outputs: {label} gives {n_out} "
                         f"scores; got {count} names")
    if data_names is not None:
        unknown = [c for c in data_names if c not in names]
        if unknown:
            raise InputError(f"--data classes must be among the model's class names; got "
                             f"{', '.join(map(repr, unknown[:5]))} that are not")
    return names


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: is a file; expected a folder for the run")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunError(f"{out}: exists and is not empty; choose another --out or pass --overwrite")
        if not (out / MANIFEST).is_file():
            raise RunError(f"{out}: is not a run directory (no {MANIFEST}); refusing to overwrite it")
        for child in out.iterdir():
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()


@torch.no_grad()
def _same_outputs(run: Run, wrapped: Run, out: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((2, *run.input_shape), generator=gen)
    ref = next(iter(run.model.parameters()), None)
    x = x.to(ref.device if ref is not None else "cpu")
    a, b = run.pixel_model()(x), wrapped.pixel_model()(x.to(wrapped.device))
    if not torch.allclose(a.float().cpu(), b.float().cpu(), rtol=1e-4, atol=1e-5):
        raise RunError(f"{out}: the wrapped model does not give the outputs of the original (max difference "
                       f"{(a.float().cpu() - b.float().cpu()).abs().max().item():.3g}); does the factory build the same "
                       "network each time?")


# ---- the manifest -----------------------------------------------------------------------------------------

def _arch_entry(run: Run, record: dict, n_out: int, label: str) -> dict:
    dtype = next(iter(run.model.parameters()), torch.zeros(())).dtype
    entry = {"source": record, "name": record.get("name"), "spec": record.get("spec"), "class": label,
             "input_shape": list(run.input_shape), "num_classes": n_out,
             "dtype": str(dtype).removeprefix("torch.")}
    if record.get("kind") == "grammar":  # a grammar net keeps the fields train() writes (build_net reads them)
        entry.update(naming=getattr(run.model, "naming", "caffe"), layout=getattr(run.model, "layout", "named"))
    return entry


def _data_entry(ds) -> dict:
    spec = getattr(ds, "spec", None)
    source = getattr(ds, "source", "") or (spec or {}).get("name_or_path", "")
    test = {"name": (spec or {}).get("name_or_path"), "source": source, "spec": spec, "size": len(ds.labels),
            "input_shape": list(ds.input_shape), "class_names": list(ds.class_names)}
    return {"source": source, "test": test}


def _versions() -> dict:
    import numpy

    from .. import __version__

    return {"convlens": __version__, "torch": torch.__version__, "numpy": numpy.__version__,
            "python": sys.version.split()[0]}

