"""A timm-style registry: models are plain functions registered under a short name."""

from __future__ import annotations

from typing import Callable

import torch.nn as nn

from cifarlab.errors import UserError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, **kwargs) -> nn.Module:
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}' (known: {', '.join(list_models())})")
    return _MODELS[name](**kwargs)
