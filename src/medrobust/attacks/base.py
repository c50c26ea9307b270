"""The small base every attack shares: a classifier, validated parameters, a seed."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from medrobust.models.classifier import Classifier


class Attack(ABC):
    """An attack on a ``Classifier`` in pixel space.

    Subclasses validate their parameters in ``__init__`` (so a bad value fails before any work),
    expose them through ``params()`` for provenance, and never mutate the images they are given.
    """

    name: str = "attack"

    def __init__(self, classifier: Classifier, seed: int = 0) -> None:
        self.classifier = classifier
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
