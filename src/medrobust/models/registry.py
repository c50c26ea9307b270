"""The model zoo: build a network by name, or a user's network from ``module:factory``.

A ``module:factory`` name imports a module and calls a function, i.e. runs code. The user may
name one (``train --model pkg.mod:factory``, ``build_model``), but a checkpoint may not: a
downloaded ``meta.json`` could name any installed callable. Checkpoints therefore resolve
through ``checkpoint_factory``, which honours only zoo names, factories the user named in this
process, an explicit ``model_factory``, or ``trust_model_code`` (CLI ``--trust-model-code``).
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from torch import nn

from medrobust.errors import CheckpointError, ConfigError
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


# ``module:factory`` names the user passed in this process (e.g. ``train --model``), so the
# checkpoint the same command saves can be loaded again without a separate trust flag.
_USER_NAMED: set[str] = set()
_TRUST_MODEL_CODE: contextvars.ContextVar[bool] = contextvars.ContextVar("trust_model_code",
                                                                         default=False)


@contextlib.contextmanager
def trusting_model_code(enabled: bool = True) -> Iterator[None]:
    """Within the block, checkpoints may name ``module:factory`` user models (the CLI's
    ``--trust-model-code``); only for checkpoints whose code the user trusts."""
    token = _TRUST_MODEL_CODE.set(bool(enabled))
    try:
        yield
    finally:
        _TRUST_MODEL_CODE.reset(token)


def resolve_factory(name: str) -> Factory:
    """A zoo name, or ``package.module:factory`` for a user's own network (named by the user,
    never by a file: checkpoints go through ``checkpoint_factory``)."""
    if name in _ZOO:
        return _ZOO[name]
    factory = _import_factory(name)
    _USER_NAMED.add(name)
    return factory


def _import_factory(name: str) -> Factory:
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


def checkpoint_factory(name: Any, model_factory: str | Factory | None = None,
                       trust_model_code: bool = False) -> Factory:
    """The factory for the model a checkpoint names, without importing anything the user did
    not ask for: a zoo name; else ``model_factory`` (the user's ``module:factory`` or callable);
    else the named ``module:factory`` only if the user named it in this process or trusts the
    checkpoint's code (``trust_model_code`` or ``trusting_model_code``)."""
    if model_factory is not None:
        return model_factory if callable(model_factory) else resolve_factory(str(model_factory))
    if not isinstance(name, str) or not name:
        raise CheckpointError(f"checkpoint names no model (model is {name!r})")
    if name in _ZOO:
        return _ZOO[name]
    if ":" in name and (trust_model_code or _TRUST_MODEL_CODE.get() or name in _USER_NAMED):
        return _import_factory(name)  # trusting one checkpoint does not trust its name for good
    raise CheckpointError(f"checkpoint names model {name!r}, which is not in the zoo; pass "
                          "--trust-model-code to load user code you trust")


def build_model(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Instantiate ``name`` for ``in_channels`` and ``num_classes`` (2 -> 1 logit for sigmoid nets)."""
    return build_with(resolve_factory(name), name, in_channels, num_classes, **kwargs)


def build_with(factory: Factory, name: str, in_channels: int, num_classes: int,
               **kwargs: Any) -> nn.Module:
    """``build_model`` with an already resolved factory (``name`` picks the head convention)."""
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
