"""The small base every attack shares: a model, validated parameters, a seed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from torch import nn


class Attack(ABC):
    """An attack on a model in pixel space (a ``Classifier``, or any network mapping float [0,1]
    (N,C,H,W) images to outputs, such as a segmentation net).

    Subclasses validate their parameters in ``__init__`` (so a bad value fails before any work),
    expose them through ``params()`` for provenance, and never mutate the images they are given.
    """

    name: str = "attack"

    def __init__(self, model: nn.Module, seed: int = 0) -> None:
        self.model = model
        self.seed = int(seed)

    @abstractmethod
    def params(self) -> dict[str, Any]:
        """The attack's settings, JSON-able, as recorded in the store."""

    @abstractmethod
    def run(self, images: Any, labels: Any, **kwargs: Any) -> Any:
        """Attack a batch; the return type is attack-specific."""

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({inner})"
