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

#: Options of the datasets read from image files (folder, segfolder, landmarks) for DICOM and
#: NIfTI: ``window`` (centre, width, or "centre,width") maps intensities to 0..255, ``axis``
#: ("x", "y" or "z") is the axis 3D volumes are sliced along. Their loaders take them as
#: keyword options and record them in ``spec``; ``load_dataset`` refuses them for the others.
IMAGE_FILE_OPTIONS = ("window", "axis")


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: register ``fn(split, data_dir, **options) -> ImageDataset`` under ``name``."""

    def deco(fn: Loader) -> Loader:
        _REGISTRY[name] = fn
        return fn

    return deco
