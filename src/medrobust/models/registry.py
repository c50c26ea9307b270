"""The model zoo: build a network by name, or a user's network from ``module:factory``."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from medrobust.errors import ConfigError
from medrobust.models.mitosisnet import MitosisNet
from medrobust.models.monai_nets import densenet121, resnet18
from medrobust.models.smallcnn import SmallCNN

Factory = Callable[..., nn.Module]

_ZOO: dict[str, Factory] = {
    "smallcnn": SmallCNN,
    "resnet18": resnet18,
    "densenet121": densenet121,
    "mitosisnet": MitosisNet,
}

# Networks with one sigmoid output: their ``num_classes`` argument is the number of logits (1).
SIGMOID_MODELS = {"mitosisnet"}


def available_models() -> list[str]:
    return sorted(_ZOO)


def register_model(name: str, factory: Factory) -> None:
    """Add a factory ``f(in_channels=, num_classes=, **kwargs) -> nn.Module`` to the zoo."""
    _ZOO[name] = factory


def resolve_factory(name: str) -> Factory:
    """A zoo name, or ``package.module:factory`` for a user's own network."""
    if name in _ZOO:
        return _ZOO[name]
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise ConfigError(f"cannot import module {module_name!r} for model {name!r}: {exc}") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"{module_name!r} has no callable {attr!r}")
        return factory
    raise ConfigError(
        f"unknown model {name!r}: choose from {', '.join(available_models())} or module:factory"
    )


def build_model(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate ``name`` for ``in_channels`` and ``num_classes`` (2 -> 1 logit for sigmoid nets)."""
    factory = resolve_factory(name)
    if name in SIGMOID_MODELS:
        if num_classes != 2:
            raise ConfigError(f"{name} is a binary sigmoid detector; the dataset has {num_classes} classes")
        num_classes = 1
    params = inspect.signature(factory).parameters
    unknown = [k for k in kwargs if k not in params and not any(
        p.kind is p.VAR_KEYWORD for p in params.values())]
    if unknown:
        raise ConfigError(f"model {name!r} takes no option(s) {', '.join(unknown)}")
    try:
        return factory(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build model {name!r}: {exc}") from None
