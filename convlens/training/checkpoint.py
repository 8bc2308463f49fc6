"""Files of a run, written atomically and without pickle.

Every write goes to a temporary file in the destination's folder, is flushed to disk, then
``os.replace``-d over the target, so a crash leaves either the old file or the new one, never
half of one. Tensors go into safetensors files; everything else is JSON. A resumable checkpoint
is *one* safetensors file: model and optimizer tensors under prefixed names, and a JSON skeleton
(epoch, history, the optimizer's non-tensor state) in its header metadata, so the pair can never
be torn apart by a crash between two writes. Also here: preparing a run directory (removing the
temp files of a killed write) and comparing the settings of a run with those of a new call.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import RunError
from ..io import atomic_write_bytes, atomic_write_json, load_tensors, save_tensors  # noqa: F401  (the run's files)

FORMAT = "convlens-checkpoint"
_META_KEY = "convlens"


# ---- atomic writes: convlens.io (temp file in the same folder, fsync, os.replace) ----------------
write_bytes = atomic_write_bytes
write_json = atomic_write_json


def read_json(path: str | os.PathLike, *, what: str) -> dict:
    """Parse a JSON object, or raise RunError naming the file and what it should have held."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RunError(f"{path}: no such file; expected {what}") from None
    except OSError as err:
        raise RunError(f"{path}: cannot be read ({err.strerror}); expected {what}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as err:
        raise RunError(f"{path}: corrupt JSON at line {err.lineno}, column {err.colno}; expected {what}") from None
    if not isinstance(obj, dict):
        raise RunError(f"{path}: expected {what} (a JSON object); got a JSON {type(obj).__name__}")
    return obj


# ---- the run directory ------------------------------------------------------------------------------

def prepare_out(out: Path, *, names: tuple[str, ...], overwrite: bool) -> Path:
    """Create ``out``; remove temp files left by a process killed mid-write (and ``names`` if overwrite)."""
    if out.exists() and not out.is_dir():
        raise RunError(f"{out}: is a file; expected a run directory (existing or to be created)")
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        if overwrite:
            (out / name).unlink(missing_ok=True)
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
    return out


def stale_manifest(manifest: Path, weights: Path, *, epochs_done: int) -> bool:
    """Whether the manifest/weights lag behind a checkpoint of ``epochs_done`` epochs."""
    try:
        done = json.loads(manifest.read_text()).get("epochs_done")
    except (OSError, ValueError, AttributeError):
        return True
    return done != epochs_done or not weights.exists()


def differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """``["hyper.lr: 0.05 -> 0.1", ...]``: the leaves where two JSON-like trees differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str)
                for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    if old != new:
        return [f"{prefix.rstrip('.')}: {_short(old)} -> {_short(new)}"]
    return []


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- optimizer state as tensors + JSON ----------------------------------------------------------

def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` -> (named tensors, JSON skeleton); ``unflatten_optimizer`` inverts it."""
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict] = {}
    for pid, slots in state["state"].items():
        entry = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                name = f"optim.{pid}.{key}"
                tensors[name] = value
                entry[key] = {"tensor": name}
            else:
                entry[key] = {"value": value}
        per_param[str(pid)] = entry
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state["param_groups"]]
    return tensors, {"state": per_param, "param_groups": groups}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], skeleton: dict) -> dict:
    state = {}
    for pid, entry in skeleton["state"].items():
        state[int(pid)] = {k: (tensors[v["tensor"]] if "tensor" in v else v["value"]) for k, v in entry.items()}
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in skeleton["param_groups"]]
    return {"state": state, "param_groups": groups}


# ---- the resumable checkpoint ---------------------------------------------------------------------

def save_checkpoint(path: str | os.PathLike, *, model_state: dict, optim_state: dict, info: dict) -> None:
    """One atomic file: ``model.<key>`` and ``optim.<id>.<slot>`` tensors, ``info`` + optimizer skeleton
    as JSON in the header. ``info`` must be JSON-ready (epoch, history, settings)."""
    optim_tensors, skeleton = flatten_optimizer(optim_state)
    tensors = {f"model.{k}": v for k, v in model_state.items()} | optim_tensors
    meta = {_META_KEY: json.dumps({"format": FORMAT, "info": info, "optimizer": skeleton})}
    save_tensors(path, tensors, metadata=meta)


def load_checkpoint(path: str | os.PathLike) -> tuple[dict, dict, dict]:
    """(model state_dict, optimizer state_dict, info) saved by ``save_checkpoint``."""
    what = "a convlens training checkpoint"
    tensors, meta = load_tensors(path, what=what)
    try:
        header = json.loads(meta[_META_KEY])
        if header.get("format") != FORMAT:
            raise KeyError("format")
        optim_state = unflatten_optimizer(tensors, header["optimizer"])
    except (KeyError, json.JSONDecodeError, TypeError, AttributeError):
        raise RunError(f"{path}: safetensors file without a convlens checkpoint header; expected {what}") from None
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    return model_state, optim_state, header["info"]
