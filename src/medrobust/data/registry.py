"""One registry of datasets by name.

Loaders register themselves with ``@register_dataset("name")``; ``load_dataset`` resolves the
data directory, checks the split and records provenance in ``ImageDataset.spec``.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medrobust.data.base import ImageDataset
from medrobust.data.catalog import _REGISTRY, IMAGE_FILE_OPTIONS, SPLITS
from medrobust.errors import ConfigError, DataError


def available_datasets() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def default_data_dir() -> Path:
    """``$MEDROBUST_DATA_DIR`` if set, else ``~/.medrobust/data``."""
    env = os.environ.get("MEDROBUST_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".medrobust" / "data"


def load_dataset(name: str, split: str = "train", data_dir: str | Path | None = None,
                 **options: Any) -> ImageDataset:
    """Load ``split`` of dataset ``name``.

    ``name`` is a registered dataset (``medmnist`` takes ``flag=``; the shorthand
    ``pneumoniamnist`` etc. is the same as ``medmnist`` with that flag). Options are passed to
    the loader; ``None`` values are dropped so CLI defaults stay the loader's. ``window`` and
    ``axis`` (DICOM/NIfTI, ``catalog.IMAGE_FILE_OPTIONS``) given to a dataset whose loader does
    not take them are one ConfigError line, not ignored.
    """
    _ensure_loaded()
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    options = {k: v for k, v in options.items() if v is not None}
    key = name.lower()
    if key not in _REGISTRY:
        from medrobust.data.medmnist import MEDMNIST_FLAGS

        if key in MEDMNIST_FLAGS:
            options.setdefault("flag", key)
            key = "medmnist"
        else:
            raise DataError(
                f"unknown dataset {name!r}: choose from {', '.join(available_datasets())} "
                f"or a MedMNIST flag such as pneumoniamnist"
            )
    params = inspect.signature(_REGISTRY[key]).parameters
    for option in IMAGE_FILE_OPTIONS:
        if option in options and option not in params:
            raise ConfigError(f"{option} applies to datasets read from image files "
                              f"({', '.join(datasets_taking(option))}), not {name}")
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    return _REGISTRY[key](split=split, data_dir=root.resolve(), **options)


def datasets_taking(option: str) -> list[str]:
    """The registered datasets whose loader takes ``option`` (e.g. ``window``)."""
    _ensure_loaded()
    return sorted(n for n, fn in _REGISTRY.items() if option in inspect.signature(fn).parameters)


# Keys of ``ImageDataset.spec`` that describe a loaded split rather than loader options
# (``windowing``: the windows DICOM/NIfTI files got; ``pixel_size_source``: where mm came from).
_NOT_OPTIONS = {"dataset", "data_dir", "task", "indices", "split", "layout", "windowing",
                "pixel_size_source"}


def load_from_spec(spec: dict[str, Any], split: str | None = None) -> ImageDataset:
    """Load the dataset a spec (as recorded in stores and checkpoints) describes."""
    if "dataset" not in spec:
        raise DataError("dataset spec lacks the field 'dataset'")
    options = {k: (tuple(v) if isinstance(v, list) else v) for k, v in spec.items()
               if k not in _NOT_OPTIONS}
    options = _loader_options(str(spec["dataset"]), options)
    ds = load_dataset(spec["dataset"], split or spec.get("split", "test"),
                      data_dir=spec.get("data_dir"), **options)
    return ds.subset(spec["indices"]) if "indices" in spec else ds


def dataset_takes(option: str, name: str) -> bool:
    """Whether dataset ``name``'s loader takes ``option`` (MedMNIST flags count as medmnist)."""
    _ensure_loaded()
    from medrobust.data.medmnist import MEDMNIST_FLAGS

    key = name.lower()
    loader = _REGISTRY.get("medmnist" if key in MEDMNIST_FLAGS else key)
    return loader is not None and option in inspect.signature(loader).parameters


def check_classes_apply(name: str, classes: Sequence[str] | None) -> None:
    """``--classes`` on a dataset whose loader cannot pick classes is refused, not ignored."""
    if classes is not None and not dataset_takes("classes", name):
        raise ConfigError(f"--classes applies to datasets whose classes can be chosen (such as "
                          f"bccd), not {name}")


def _loader_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Only the options the loader takes: a spec also records facts about the loaded data
    (e.g. the folder layout), and a spec written by another version may hold keys this one
    does not know; neither must stop the data from loading again."""
    _ensure_loaded()
    loader = _REGISTRY.get(name.lower())
    if loader is None:
        return options  # load_dataset names the unknown dataset
    params = inspect.signature(loader).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return options
    # Only the folder loaders record window/axis, so one in a spec of another dataset was put
    # there by the caller (e.g. --window on a model's own data): kept, so load_dataset refuses it.
    return {k: v for k, v in options.items()
            if k in params or (k in IMAGE_FILE_OPTIONS and v is not None)}


def _ensure_loaded() -> None:
    # Importing the loader modules runs their @register_dataset decorators.
    from medrobust.data import bccd, folder, landmarks, medmnist, segfolder, synthetic, voc  # noqa: F401
