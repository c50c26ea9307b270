"""Engines that score one-pixel (k-pixel) perturbations in bulk."""

from medrobust.models.engines.base import PixelEngine, apply_pixels
from medrobust.models.engines.cone import ConeEngine
from medrobust.models.engines.dense import DenseEngine

ENGINES: dict[str, type[PixelEngine]] = {"reference": DenseEngine, "fast": ConeEngine}


def make_engine(name: str, classifier, images, **options) -> PixelEngine:
    """Build the engine ``name`` (``reference`` or ``fast``) for these base images."""
    from medrobust.utils.validation import check_choice

    check_choice("engine", name, ENGINES)
    return ENGINES[name](classifier, images, **options)


__all__ = ["ENGINES", "ConeEngine", "DenseEngine", "PixelEngine", "apply_pixels", "make_engine"]
