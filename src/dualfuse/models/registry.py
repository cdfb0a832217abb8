"""A timm-style model registry: `@register_model` on a builder, then `create_model(name, **kwargs)`.

The registry imports no model: each model file registers itself when imported, and the
`dualfuse.models` package imports them all, so the registry is full whenever the package is loaded
(importing this module loads the package first). A new model touches only models/.
"""
from __future__ import annotations

import typing
from collections.abc import Callable

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; its docstring's first line is the model's description."""
    if fn.__name__ in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODEL_ENTRYPOINTS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    return sorted(_MODEL_ENTRYPOINTS)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered under `name`; a clear error lists the valid names."""
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its constructor (see the model's docstring)."""
    return model_entrypoint(name)(**kwargs)


def model_description(name: str) -> str:
    doc = model_entrypoint(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def model_class(name: str) -> type[nn.Module]:
    """The class a builder returns (from its return annotation): its capabilities without building it."""
    builder = model_entrypoint(name)
    returned = typing.get_type_hints(builder).get("return")
    if not isinstance(returned, type):
        raise ValueError(f"model {name!r}: its builder declares no model class as its return type")
    return returned
