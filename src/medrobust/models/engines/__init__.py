"""Engines that score one-pixel (k-pixel) perturbations in bulk."""

from medrobust.models.engines.base import PixelEngine, apply_pixels
from medrobust.models.engines.dense import DenseEngine

ENGINES: dict[str, type[PixelEngine]] = {"reference": DenseEngine}


def make_engine(name: str, classifier, images) -> PixelEngine:
    """Build the engine ``name`` (``reference`` today) for these base images."""
    from medrobust.utils.validation import check_choice

    check_choice("engine", name, ENGINES)
    return ENGINES[name](classifier, images)


__all__ = ["ENGINES", "DenseEngine", "PixelEngine", "apply_pixels", "make_engine"]
