"""Conventions every command shares: ``--json``, ``--seed``, ``--device``, dataset options, output."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import numpy as np

from medrobust.data import ImageDataset, load_dataset, load_from_spec
from medrobust.errors import DataError

DEFAULT_STORE = "medrobust.db"


def check_outputs(out: str | Path, store_path: str | Path) -> None:
    """A checkpoint folder and a store must both be writable before data is loaded or a run is
    recorded (every ``train`` path checks this first)."""
    from medrobust.utils.validation import check_writable

    check_writable("--out", out, folder=True)
    check_writable("--store", store_path, folder=False)


def common_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--json``, ``--seed``, ``--device`` and ``--trust-model-code``; ``--json`` also
    silences progress bars. ``--trust-model-code`` holds only while the command runs, and only
    checkpoints that name a non-zoo model consult it (see ``models.registry``)."""

    @click.option("--json", "as_json", is_flag=True,
                  help="Print one machine-readable JSON summary on stdout.")
    @click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
    @click.option("--device", type=click.Choice(["cpu", "cuda", "auto"]), default="auto",
                  show_default=True, help="Where to run the model.")
    @click.option("--trust-model-code", is_flag=True,
                  help="Let checkpoints name a user model (module:factory), which imports and "
                       "runs that code; only for checkpoints you trust.")
    @functools.wraps(fn)
    def wrapper(*args: Any, as_json: bool, trust_model_code: bool, **kwargs: Any) -> Any:
        if as_json:
            os.environ["MEDROBUST_QUIET"] = "1"
        if not trust_model_code:
            return fn(*args, as_json=as_json, **kwargs)
        from medrobust.models.registry import trusting_model_code  # torch: only when asked

        with trusting_model_code():
            return fn(*args, as_json=as_json, **kwargs)

    return wrapper


def dataset_options(required: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--dataset``, ``--data-dir``, ``--size``, ``--no-verify`` (omitted dataset: the model's)."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--no-verify", is_flag=True,
                          help="Skip the MedMNIST MD5 check.")(fn)
        fn = click.option("--size", type=int, default=None,
                          help="Image size, for datasets that take one.")(fn)
        fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                          help="Folder holding the data (default $MEDROBUST_DATA_DIR).")(fn)
        help_text = "Dataset: synthetic, bccd, folder, medmnist or a MedMNIST flag."
        if not required:
            help_text += " Default: the dataset the model was trained on."
        return click.option("--dataset", required=required, default=None, help=help_text)(fn)

    return deco


def open_dataset(name: str | None, split: str, data_dir: str | None, size: int | None,
                 no_verify: bool, fallback_spec: dict[str, Any] | None = None,
                 model_channels: int | None = None) -> ImageDataset:
    """Load a split by name, or the one described by ``fallback_spec`` (a checkpoint's).

    ``model_channels``: the model's input channels; data with another count stops here, before
    a command opens its store, rather than as a failed run.
    """
    if name is None:
        if fallback_spec is None:
            raise click.UsageError("--dataset is required")
        spec = dict(fallback_spec)
        if data_dir is not None:
            spec["data_dir"] = data_dir
        if size is not None:  # the loaders that take a size (classifiers refuse another earlier)
            spec["size"] = size
        ds = load_from_spec(spec, split)
    else:
        options: dict[str, Any] = {"size": size}
        if no_verify:
            options["verify"] = False
        ds = load_dataset(name, split, data_dir=data_dir, **options)
    if model_channels is not None and ds.channels != model_channels:
        kind = "greyscale model on colour" if model_channels == 1 else "colour model on greyscale"
        raise DataError(f"the model takes {model_channels}-channel images but {ds.name} {split} "
                        f"has {ds.channels} channels (a {kind} data?)")
    return ds


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def emit(summary: dict[str, Any], as_json: bool, human: Callable[[], None]) -> None:
    """Print the JSON summary, or the human-readable lines."""
    if as_json:
        click.echo(json.dumps(_jsonable(summary), sort_keys=True))
    else:
        human()


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)
