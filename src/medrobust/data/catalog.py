"""The table of dataset loaders by name, and the decorator that fills it.

Apart from ``registry`` (which loads and resolves) so that the loader modules can register
themselves without importing the module that imports them.
"""

from __future__ import annotations

from collections.abc import Callable

from medrobust.data.base import ImageDataset

Loader = Callable[..., ImageDataset]
_REGISTRY: dict[str, Loader] = {}

SPLITS = ("train", "val", "test")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``fn(split, data_dir, **options) -> ImageDataset`` under ``name``."""

    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        return fn

    return deco
