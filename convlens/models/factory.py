"""Your own model from your own code: ``path/to/file.py:factory`` or ``package.module:factory``.

Like uvicorn's ``module:app``: the file or module is imported (this runs your code, which is what you
asked for) and ``factory`` is called with no arguments; it must return an ``nn.Module`` (a class whose
constructor takes no arguments is a factory too). Modules imported from a file are named after the
file's absolute path, so two files called ``model.py`` never collide, and the file's folder is put on
``sys.path`` while it is imported, so that its own sibling imports work.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from pathlib import Path

from torch import nn

from ..errors import InputError

__all__ = ["is_factory_ref", "call_factory", "call", "factory_ref_of", "ref_of_callable", "absolute_ref"]

_REF = re.compile(r"^(?P<where>.+?):(?P<attr>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _split(ref: str) -> tuple[str, str] | None:
    m = _REF.match(str(ref).strip())
    if not m:
        return None
    where, attr = m.group("where"), m.group("attr")
    if where.endswith(".py") or _MODULE.match(where):
        return where, attr
    return None


def is_factory_ref(text) -> bool:
    """Whether ``text`` reads as ``file.py:name`` or ``package.module:name`` (a Windows drive letter does not)."""
    if not isinstance(text, str) or re.match(r"^[A-Za-z]:[\\/]", text):
        return False
    return _split(text) is not None


def absolute_ref(ref: str) -> str:
    """``ref`` with its file made absolute (what a run records, so it works from any folder)."""
    where, attr = _parts(ref)
    return f"{Path(where).resolve()}:{attr}" if where.endswith(".py") else ref


def _parts(ref: str) -> tuple[str, str]:
    parts = _split(ref)
    if parts is None:
        raise InputError(f"a model factory must look like path/to/file.py:factory or package.module:factory; "
                         f"got {ref!r}")
    return parts


def _import(where: str, ref: str):
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise InputError(f"{ref}: no such file {path}; expected a Python file defining the factory")
        name = "convlens_user_" + hashlib.sha1(str(path).encode()).hexdigest()[:12] + "_" + \
            re.sub(r"\W", "_", path.stem)
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        sys.path.insert(0, str(path.parent))
        try:
            spec.loader.exec_module(module)
        except BaseException as err:
            sys.modules.pop(name, None)
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            raise InputError(f"{ref}: importing {path} raised {type(err).__name__}: {err}") from err
        finally:
            try:
                sys.path.remove(str(path.parent))
            except ValueError:
                pass
        return module
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as err:
        raise InputError(f"{ref}: no module named {err.name!r}; expected an importable module "
                         "(or give the file: path/to/file.py:factory)") from None
    except Exception as err:
        raise InputError(f"{ref}: importing {where} raised {type(err).__name__}: {err}") from err


def call_factory(ref: str) -> nn.Module:
    """Import ``ref``'s module and call its factory with no arguments -> the ``nn.Module`` it returns."""
    where, attr = _parts(ref)
    obj = _import(where, ref)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = sorted(n for n in dir(obj) if not n.startswith("_") and callable(getattr(obj, n, None)))
            listing = ", ".join(names[:12]) + (" …" if len(names) > 12 else "")
            raise InputError(f"{ref}: {where} has no attribute {part!r}; callables there: {listing or 'none'}")
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise InputError(f"{ref}: {attr} is a {type(obj).__name__}, not a callable returning an nn.Module")
    return call(obj, ref, attr)


def call(factory, where: str, name: str) -> nn.Module:
    """``factory()``, or InputError (``where: ...``) showing what it raised or that it returned no nn.Module."""
    try:
        model = factory()
    except Exception as err:
        raise InputError(f"{where}: calling {name}() raised {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise InputError(f"{where}: {name}() must return an nn.Module; got {type(model).__name__}")
    return model


def ref_of_callable(fn) -> str | None:
    """``module:name`` (or ``/abs/file.py:name`` for a file ``call_factory`` imported) that finds the very
    callable ``fn`` (a function or a class) again by name; None for a lambda, a nested function or one
    defined in ``__main__``."""
    mod, qual = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not mod or not qual or mod == "__main__" or "<" in qual or mod not in sys.modules:
        return None
    obj = sys.modules[mod]
    for part in qual.split("."):
        obj = getattr(obj, part, None)
    if obj is None or obj is not fn:
        return None
    if mod.startswith("convlens_user_"):  # imported from a file by call_factory: the file is the name
        path = getattr(sys.modules[mod], "__file__", None)
        return f"{Path(path).resolve()}:{qual}" if path else None
    return f"{mod}:{qual}"


def factory_ref_of(model: nn.Module) -> str | None:
    """``module:Class`` that rebuilds ``model`` by calling its class with no arguments, when there is one:
    the class can be found again by name (``ref_of_callable``) and ``Class()`` has the same parameter and
    buffer names and shapes. None otherwise."""
    ref = ref_of_callable(type(model))
    if ref is None:
        return None
    try:
        import torch

        with torch.random.fork_rng(devices=[]):
            fresh = call_factory(ref)
    except Exception:
        return None
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return ref if want == got else None
