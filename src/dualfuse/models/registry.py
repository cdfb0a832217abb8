"""A timm-style model registry: `@register_model` on a builder, then `create_model(name, **kwargs)`."""
from __future__ import annotations

from collections.abc import Callable

from torch import nn

_MODEL_ENTRYPOINTS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a builder under its function name; its docstring's first line is the model's description."""
    if fn.__name__ in _MODEL_ENTRYPOINTS:
        raise ValueError(f"model {fn.__name__!r} is already registered")
    _MODEL_ENTRYPOINTS[fn.__name__] = fn
    return fn


def _ensure_builtin_models() -> None:
    # Importing the model files runs their @register_model decorators.
    from dualfuse.models import baselines, dcat, drifa_net  # noqa: F401


def list_models() -> list[str]:
    """Names of every registered model, sorted."""
    _ensure_builtin_models()
    return sorted(_MODEL_ENTRYPOINTS)


def model_entrypoint(name: str) -> Callable[..., nn.Module]:
    """The builder registered under `name`; a clear error lists the valid names."""
    _ensure_builtin_models()
    if name not in _MODEL_ENTRYPOINTS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(_MODEL_ENTRYPOINTS))}")
    return _MODEL_ENTRYPOINTS[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model; keyword arguments go to its constructor (see the model's docstring)."""
    return model_entrypoint(name)(**kwargs)


def model_description(name: str) -> str:
    doc = model_entrypoint(name).__doc__ or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
