"""Name the layers of any model: ``named_modules()`` paths, plus lecture names for grammar models.

``resolve(model, "conv5_3")`` and ``resolve(model, "features.28")`` find the same module of
``create("vgg16")``; an unknown name raises LayerNotFoundError with "did you mean" suggestions.
"""
from __future__ import annotations

from torch import nn

from .errors import LayerNotFoundError, suggest


def lecture_names(model: nn.Module) -> dict[str, str]:
    """Lecture name -> module path (empty for models not built by the grammar)."""
    return dict(getattr(model, "lecture_names", {}) or {})


def display_names(model: nn.Module) -> dict[str, str]:
    """Module path -> the name to show: the lecture name where there is one, else the path."""
    shown = {path: path for path, _ in model.named_modules() if path}
    for name, path in lecture_names(model).items():
        shown[path] = name
    return shown


def resolve(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(module path, module) of the layer called ``name`` (a lecture name or a module path)."""
    modules = dict(model.named_modules())
    path = lecture_names(model).get(name, name)
    if path in modules and path != "":
        return path, modules[path]
    choices = list(lecture_names(model)) + [p for p in modules if p]
    listing = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    raise LayerNotFoundError(f"'{name}' is not a layer of this {type(model).__name__}.{suggest(str(name), choices)} "
                             f"Layers: {listing}")


def leaf_paths(model: nn.Module) -> list[str]:
    """Paths of modules that have no children (the layers a summary lists), in registration order."""
    return [path for path, m in model.named_modules() if path and not any(True for _ in m.children())]
