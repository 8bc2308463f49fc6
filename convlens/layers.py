"""Name the layers of any model: ``named_modules()`` paths, plus lecture names for grammar models.

``resolve(model, "conv5_3")`` and ``resolve(model, "features.28")`` find the same module of
``create("vgg16")``; an unknown name raises LayerNotFoundError with "did you mean" suggestions.

Names as the user wrote them. A wrapper that convlens puts around the user's net (a run's
``PixelModel``: normalization, then the net) says which attribute holds the net with a class
attribute ``wraps = "net"``. For such a model, layers are named by the net's own
``named_modules()`` paths and lecture names (``"layer2"``, not ``"net.layer2"``; the prefixed form
still resolves), display names drop the prefix, and messages speak of the net's class
(:func:`model_label`: "this ResNetLike", never "this PixelModel").

A ``Run`` (recognized by duck typing: foundations do not import ``training/``) is named by its net:
``resolve(run, "layer2")`` returns ``("layer2", run.model.layer2)``.
"""
from __future__ import annotations

from torch import nn

from .errors import LayerNotFoundError, suggest


def is_run(obj) -> bool:
    """Whether ``obj`` is a ``Run`` (a net with ``pixel_model()``), told by duck typing."""
    return not isinstance(obj, nn.Module) and callable(getattr(obj, "pixel_model", None)) \
        and isinstance(getattr(obj, "model", None), nn.Module)


def wrapped(model: nn.Module) -> tuple[str, nn.Module] | None:
    """(attribute, module) of the user's module held by a wrapper (a class attribute ``wraps``), else None."""
    attr = getattr(type(model), "wraps", None)
    inner = getattr(model, attr, None) if isinstance(attr, str) and attr else None
    return (attr, inner) if isinstance(inner, nn.Module) else None


def user_model(model) -> nn.Module:
    """The user's own module: a Run's net, the module a wrapper ``wraps`` (followed through nested
    wrappers), else ``model`` itself."""
    if is_run(model):
        model = model.model
    while (inner := wrapped(model)) is not None:
        model = inner[1]
    return model


def user_prefix(model: nn.Module) -> str:
    """The path prefix of the user's module inside ``model``: ``"net."`` for a PixelModel, ``""`` for a net."""
    prefix = ""
    while (inner := wrapped(model)) is not None:
        prefix, model = prefix + inner[0] + ".", inner[1]
    return prefix


def user_path(model: nn.Module, path: str) -> str:
    """A module path of ``model`` as the user writes it (``"net.layer2"`` -> ``"layer2"`` in a PixelModel);
    paths outside the user's module (the wrapper's own ``normalize``) are left as they are."""
    prefix = user_prefix(model)
    return path[len(prefix):] if prefix and path.startswith(prefix) and len(path) > len(prefix) else path


def model_label(model) -> str:
    """What messages call the model: the class name of the user's module (``"ResNetLike"``, not the
    ``"PixelModel"`` a run wraps it in; an unflattened ``.pt2`` program keeps its original class's name)."""
    inner = user_model(model)
    ty = getattr(inner, "_ty", None)  # torch.export.unflatten records the original class as "module.Class"
    return ty.rsplit(".", 1)[-1] if isinstance(ty, str) and ty else type(inner).__name__


def lecture_names(model: nn.Module) -> dict[str, str]:
    """Lecture name -> module path in ``model`` (empty for models not built by the grammar). A wrapper
    without lecture names of its own gets its user module's, prefixed with the wrapper's attribute."""
    if is_run(model):
        model = model.model
    own = getattr(model, "lecture_names", None)
    if own:
        return dict(own)
    inner = wrapped(model)
    if inner is not None:
        return {name: f"{inner[0]}.{path}" for name, path in lecture_names(inner[1]).items()}
    return {}


def display_names(model: nn.Module) -> dict[str, str]:
    """Module path -> the name to show: the lecture name where there is one, else the path as the user
    writes it (without a wrapper's prefix)."""
    if is_run(model):
        model = model.model
    shown = {path: user_path(model, path) for path, _ in model.named_modules() if path}
    for name, path in lecture_names(model).items():
        shown[path] = name
    return shown


def layer_choices(model: nn.Module) -> list[str]:
    """The names a user may give: lecture names, then the user module's paths (a wrapper's own modules left out)."""
    if is_run(model):
        model = model.model
    prefix = user_prefix(model)
    paths = [p[len(prefix):] for p, _ in model.named_modules() if p.startswith(prefix) and len(p) > len(prefix)]
    return list(dict.fromkeys(list(lecture_names(model)) + paths))


def resolve(model: nn.Module, name: str) -> tuple[str, nn.Module]:
    """(module path, module) of the layer called ``name`` (a lecture name or a module path).

    The path is the module's path in ``model`` (``"net.layer2"`` in a PixelModel, so that it indexes
    ``model.named_modules()``); ``name`` may be written as the user wrote it (``"layer2"``) or with the
    wrapper's prefix. A Run resolves in its net: the path is the net's own.
    """
    if is_run(model):
        model = model.model
    modules = dict(model.named_modules())
    prefix = user_prefix(model)
    for path in (lecture_names(model).get(name), prefix + name if prefix and isinstance(name, str) else None, name):
        if isinstance(path, str) and path and path in modules:
            return path, modules[path]
    choices = layer_choices(model)
    listing = ", ".join(choices[:12]) + (f", … ({len(choices)} in all)" if len(choices) > 12 else "")
    raise LayerNotFoundError(f"'{name}' is not a layer of this {model_label(model)}.{suggest(str(name), choices)} "
                             f"Layers: {listing}")


def leaf_paths(model: nn.Module) -> list[str]:
    """Paths of modules that have no children (the layers a summary lists), in registration order."""
    return [path for path, m in model.named_modules() if path and not any(True for _ in m.children())]
