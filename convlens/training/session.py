"""One call of ``train``: what it works with, and the run directory it trains into.

The folder is made ready (a folder the call creates is removed again if it stops before its first
epoch is saved), a run left by an earlier call with the same settings is resumed from its
checkpoint, and each finished epoch is saved: checkpoint first (the truth for resuming), then the
weights, then the manifest, each file written atomically. The settings a resume must match are the
architecture (for your own module: its factory reference, or its class), the training data's fingerprint
and the hyper-parameters.
"""
from __future__ import annotations

import hashlib
import json
import platform
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RunError
from ..models.weights import load_weights
from .checkpoint import differences, load_checkpoint, prepare_out, save_checkpoint, save_tensors, write_json
from .runs import CHECKPOINT, MANIFEST, RUN_FORMAT, WEIGHTS, Run


@dataclass
class Session:
    """Everything one call of ``train`` works with."""

    out: Path
    net: nn.Module  # a GrammarNet or any module (arch_info["source"] says how to rebuild it)
    opt: torch.optim.Optimizer
    arch_info: dict
    settings: dict  # what must match to resume: arch, data fingerprint, hyper-parameters
    hyper: dict
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    train_ds: Any
    test_ds: Any
    history: list[dict]


def fingerprint(ds, mean: torch.Tensor, std: torch.Tensor) -> dict:
    """What identifies the training data: its load spec, size, classes, label hash, channel stats."""
    labels = np.ascontiguousarray(ds.labels.cpu().numpy())
    return {"spec": getattr(ds, "spec", None), "n": len(labels), "input_shape": list(ds.input_shape),
            "class_names": list(ds.class_names), "labels_sha1": hashlib.sha1(labels.tobytes()).hexdigest(),
            "mean": mean.tolist(), "std": std.tolist()}


def plain_json(obj):
    """``obj`` as it reads back from JSON (tuples -> lists ...), so settings compare equal after a resume."""
    return json.loads(json.dumps(obj))


@contextmanager
def run_folder(out: Path, *, overwrite: bool):
    """``out`` made ready for a run. A folder this call creates is removed again if the call stops (an
    error, Ctrl-C) before its first epoch is saved: no empty run folder is left behind."""
    created = not out.exists()
    out = prepare_out(out, names=(CHECKPOINT, WEIGHTS, MANIFEST), overwrite=overwrite)
    try:
        yield out
    except BaseException:
        if created and not (out / CHECKPOINT).exists():
            shutil.rmtree(out, ignore_errors=True)
        raise


def resume(out: Path, settings: dict, net: nn.Module, opt) -> tuple[list[dict], int]:
    """(history, first epoch to train): the checkpoint's, or ([], 0) for a fresh run."""
    if not (out / CHECKPOINT).exists():
        if (out / MANIFEST).exists() or (out / WEIGHTS).exists():
            raise RunError(f"{out}: holds run files but no {CHECKPOINT} to resume from; pass overwrite=True "
                           "(CLI --overwrite) to start over, or choose another out")
        return [], 0
    model_state, optim_state, info = load_checkpoint(out / CHECKPOINT)
    diffs = differences(info.get("settings", {}), settings)
    if diffs:
        raise RunError(f"{out}: holds a run trained with different settings ({'; '.join(diffs[:5])}); pass "
                       "overwrite=True (CLI --overwrite) to start over, or choose another out")
    load_weights(net, model_state, source=out / CHECKPOINT)
    opt.load_state_dict(optim_state)
    return list(info["history"]), int(info["epochs_done"])


def save_epoch(s: Session, *, epochs_done: int, status: str) -> None:
    """Checkpoint first (the truth for resuming), then weights, then the manifest; each atomic."""
    info = {"epochs_done": epochs_done, "history": s.history, "settings": s.settings}
    save_checkpoint(s.out / CHECKPOINT, model_state=s.net.state_dict(),
                    optim_state=s.opt.state_dict(), info=info)
    write_outputs(s, status=status, weights_too=True)


def write_outputs(s: Session, *, status: str, weights_too: bool) -> None:
    if weights_too:
        save_tensors(s.out / WEIGHTS, s.net.state_dict(), metadata={"format": "pt"})
    write_json(s.out / MANIFEST, _manifest(s, status))


def _manifest(s: Session, status: str) -> dict:
    from .. import __version__

    test = s.test_ds
    data = {"source": getattr(s.train_ds, "source", ""),
            "train": _dataset_info(s.train_ds), "test": _dataset_info(test) if test is not None else None}
    return {"format": RUN_FORMAT, "version": 1, "status": status, "epochs_done": len(s.history),
            "arch": s.arch_info, "input_shape": s.arch_info["input_shape"],
            "class_names": list(s.train_ds.class_names),
            "normalization": {"mean": s.mean.tolist(), "std": s.std.tolist()},
            "data": data, "hyperparameters": s.hyper, "history": s.history,
            "files": {"weights": WEIGHTS, "checkpoint": CHECKPOINT},
            "versions": {"convlens": __version__, "torch": torch.__version__, "numpy": np.__version__,
                         "python": platform.python_version()}}


def _dataset_info(ds) -> dict:
    if hasattr(ds, "to_dict"):
        return plain_json(ds.to_dict())
    return {"source": getattr(ds, "source", ""), "size": len(ds.labels), "class_names": list(ds.class_names)}


def as_run(s: Session, *, already_done: bool) -> Run:
    """The finished (or resumed-and-finished) session as the ``Run`` that ``train`` returns."""
    s.net.eval()
    names = list(s.train_ds.class_names)
    manifest = _manifest(s, "complete" if len(s.history) >= s.hyper["epochs"] else "training")
    return Run(s.net, names, s.mean.clone(), s.std.clone(), tuple(s.arch_info["input_shape"]),
               manifest, dir=s.out, path=s.out, already_done=already_done)
