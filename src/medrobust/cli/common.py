"""Conventions every command shares: ``--json``, ``--seed``, ``--device``, dataset options, output."""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import click
import numpy as np

from medrobust.data import ImageDataset, load_dataset, load_from_spec
from medrobust.data.registry import check_classes_apply
from medrobust.errors import ConfigError, DataError
from medrobust.models.checkpoint import model_input_size

DEFAULT_STORE = "medrobust.db"


class TaskChoice(click.Choice):
    """``--task``: the registry's tasks as the command runs, so a task registered after this
    module was imported is a choice too (``extra``: values before them, e.g. ``auto``)."""

    def __init__(self, *extra: str) -> None:
        self.extra = extra
        super().__init__([], case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        from medrobust.tasks import TASKS

        return (*self.extra, *TASKS)

    @choices.setter
    def choices(self, value: Any) -> None:  # click's __init__ sets it; the registry decides
        pass


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
        fn = classes_option(fn)
        fn = image_file_options(fn)
        fn = click.option("--no-verify", is_flag=True,
                          help="Skip the MedMNIST MD5 check.")(fn)
        fn = click.option("--size", type=int, default=None,
                          help="Image size, for datasets that take one.")(fn)
        fn = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                          help="Folder holding the data (default $MEDROBUST_DATA_DIR).")(fn)
        from medrobust.data.registry import available_datasets

        help_text = (f"Dataset: {', '.join(available_datasets())}, or a MedMNIST flag such "
                     "as pneumoniamnist.")
        if not required:
            help_text += " Default: the dataset the model was trained on."
        return click.option("--dataset", required=required, default=None, help=help_text)(fn)

    return deco


def _keep_classes(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        names = tuple(v.strip() for v in value.split(",") if v.strip())
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"--classes needs distinct class names, e.g. WBC,RBC; got {value!r}")
        ctx.meta["medrobust.classes"] = names


def classes_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--classes A,B``: keep these classes, in this order (label i = the i-th name). It is
    kept on the click context, not passed to the command, so every command that opens data
    through ``open_dataset`` honours it without threading one more argument through."""
    return click.option("--classes", expose_value=False, callback=_keep_classes, default=None,
                        help="Classes to keep, in label order (e.g. WBC,RBC on bccd: a binary "
                             "WBC-vs-RBC model); default: the dataset's, or the model's.")(fn)


def _keep_image_option(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        ctx.meta.setdefault("medrobust.image", {})[str(param.name)] = value


def image_file_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``--window`` and ``--axis`` for data read from DICOM, NIfTI and 16-bit files; kept on the
    click context like ``--classes``, so every command that opens data honours them. The
    loader parses and checks them (and refuses them for datasets not read from files)."""
    fn = click.option("--axis", type=click.Choice(["x", "y", "z"]), default=None,
                      expose_value=False, callback=_keep_image_option,
                      help="Folder datasets: the axis 3D DICOM/NIfTI volumes are sliced along, "
                           "one image per slice named file#z=12 [default: z].")(fn)
    return click.option("--window", default=None, metavar="CENTRE,WIDTH", expose_value=False,
                        callback=_keep_image_option,
                        help="Folder datasets (folder, segfolder, landmarks): intensity window "
                             "of DICOM, NIfTI and 16-bit/float images, mapped to 0..255, e.g. "
                             "40,400 (CT soft tissue) or -600,1500 (lung). Default: each file's "
                             "own WindowCenter/WindowWidth (NIfTI cal_min/cal_max), else its "
                             "0.5-99.5 percentile range.")(fn)


def chosen_image_options() -> dict[str, str]:
    """The ``--window`` / ``--axis`` of the running command (empty when not given)."""
    ctx = click.get_current_context(silent=True)
    return {} if ctx is None else dict(ctx.meta.get("medrobust.image", {}))


def data_request(dataset: str | None, data_dir: str | None, size: int | None,
                 no_verify: bool) -> Any:
    """The ``DataRequest`` of the running command: ``dataset_options`` plus the ``--classes``,
    ``--window`` and ``--axis`` kept on the click context."""
    from medrobust.campaigns.train import DataRequest

    image = chosen_image_options()
    return DataRequest(dataset, data_dir, size, not no_verify, chosen_classes(),
                       image.get("window"), image.get("axis"))


def chosen_classes() -> tuple[str, ...] | None:
    """The ``--classes`` of the running command (None when not given or outside click)."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get("medrobust.classes")


def open_dataset(name: str | None, split: str, data_dir: str | None, size: int | None,
                 no_verify: bool, fallback_spec: dict[str, Any] | None = None,
                 model_channels: int | None = None) -> ImageDataset:
    """Load a split by name, or the one described by ``fallback_spec`` (a checkpoint's).

    ``model_channels``: the model's input channels; data with another count stops here, before
    a command opens its store, rather than as a failed run.
    """
    classes = chosen_classes()
    if name is None:
        if fallback_spec is None:
            raise click.UsageError("--dataset is required")
        spec = dict(fallback_spec)
        if data_dir is not None:
            spec["data_dir"] = data_dir
        if size is not None:  # the loaders that take a size (classifiers refuse another earlier)
            spec["size"] = size
        if classes is not None:
            spec["classes"] = list(classes)
        spec.update(chosen_image_options())
        check_classes_apply(str(spec.get("dataset")), classes)
        ds = load_from_spec(spec, split)
    else:
        options: dict[str, Any] = {"size": size}
        if no_verify:
            options["verify"] = False
        if classes is None and fallback_spec and fallback_spec.get("dataset") == name:
            classes = fallback_spec.get("classes")  # the model's own classes on its dataset
        check_classes_apply(name, classes)
        if classes is not None:
            options["classes"] = tuple(classes)
        ds = load_dataset(name, split, data_dir=data_dir, **options, **chosen_image_options())
    if model_channels is not None and ds.channels != model_channels:
        kind = "greyscale model on colour" if model_channels == 1 else "colour model on greyscale"
        raise DataError(f"the model takes {model_channels}-channel images but {ds.name} {split} "
                        f"has {ds.channels} channels (a {kind} data?)")
    return ds


def open_model_dataset(meta: dict[str, Any], model: Any, name: str | None, split: str,
                       data_dir: str | None, size: int | None, no_verify: bool) -> ImageDataset:
    """A split for a checkpoint's ``model`` (a ``PixelModel``): its own dataset (at its size)
    unless ``name`` names another, which then loads at ``size`` or its loader's default. Data
    the model cannot score (other channels, landmark count or classes) stops here, before a
    command opens its store."""
    from medrobust.tasks import task_of

    spec = meta.get("dataset") or {}
    same_data = name is None or name == spec.get("dataset")
    ds = open_dataset(name, split, data_dir,
                      size if size is not None or not same_data else spec.get("size"),
                      no_verify, spec, model_channels=model.channels)
    check = task_of(model).check_data
    if check is not None:
        check(model, ds)
    return ds


def check_model_size(size: int | None, meta: dict[str, Any]) -> None:
    """A model is attacked and evaluated at the size it was trained at, whatever its task:
    refuse another ``--size`` rather than run at it or silently ignore it."""
    model_size = model_input_size(meta)
    if size is None or model_size is None or (size, size) == model_size:
        return
    h, w = model_size
    shown = str(h) if h == w else f"{h}x{w}"
    raise ConfigError(f"--size {size} differs from the model's input size {shown}: models run "
                      "at the size they were trained at (omit --size)")


def refuse_unused(rules: dict[str, tuple[bool, str]]) -> None:
    """The one rule for options a command would ignore: ``rules`` maps an option's parameter
    name to (whether this invocation uses it, where it applies); one set on the command line
    but unused is refused with one line naming it and where it applies."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:  # called from Python: nothing was set on a command line
        return
    for name, (used, where) in rules.items():
        if not used and option_given(name):
            flag = next((p.opts[0] for p in ctx.command.params if p.name == name),
                        f"--{name.replace('_', '-')}")
            raise ConfigError(f"{flag} applies {where}")


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


def executor_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--executor local|ray`` and its Ray settings (``--address``, ``--workers``,
    ``--threads-per-worker``, ``--gpus-per-worker``); the command receives ``executor`` (None:
    in process). Ray is imported only for ``--executor ray``; without it, one line says how to
    install it. Workers run the model on the command's ``--device``."""

    @click.option("--executor", "executor_kind", type=click.Choice(["local", "ray"]),
                  default="local", show_default=True,
                  help="Where the work runs: this process, or Ray workers (pip install "
                       "'medrobust[ray]'); only this process writes the store.")
    @click.option("--address", default="local", show_default=True,
                  help="Ray: 'local' (a private instance on this machine), 'auto' (the cluster "
                       "this node belongs to) or HOST:PORT.")
    @click.option("--workers", type=int, default=None,
                  help="Ray: worker processes (default: the cluster's CPUs / threads per worker).")
    @click.option("--threads-per-worker", type=int, default=None,
                  help="Ray: torch threads (and CPUs) per worker [default: 1].")
    @click.option("--gpus-per-worker", type=float, default=0.0, show_default=True,
                  help="Ray: GPUs each worker holds (with --device cuda).")
    @functools.wraps(fn)
    def wrapper(*args: Any, executor_kind: str, address: str, workers: int | None,
                threads_per_worker: int | None, gpus_per_worker: float, **kwargs: Any) -> Any:
        kwargs["executor"] = make_executor(executor_kind, address, workers, threads_per_worker,
                                           gpus_per_worker, kwargs.get("device", "cpu"))
        return fn(*args, **kwargs)

    return wrapper


def make_executor(kind: str, address: str = "local", workers: int | None = None,
                  threads_per_worker: int | None = None, gpus_per_worker: float = 0.0,
                  device: str = "cpu") -> Any:
    """The executor the options name (None for ``local``); a Ray option with ``--executor
    local``, or ``--executor ray`` without Ray, is one line."""
    from medrobust.errors import ConfigError

    if kind == "local":
        ctx = click.get_current_context(silent=True)
        for name, flag in (("address", "--address"), ("workers", "--workers"),
                           ("threads_per_worker", "--threads-per-worker"),
                           ("gpus_per_worker", "--gpus-per-worker")):
            source = ctx.get_parameter_source(name) if ctx is not None else None
            if source not in (None, click.core.ParameterSource.DEFAULT):
                raise ConfigError(f"{flag} applies to --executor ray")
        return None
    from medrobust.campaigns.executor import RayExecutor, import_ray

    import_ray()
    if gpus_per_worker > 0 and device == "cpu":
        raise ConfigError("--gpus-per-worker needs --device cuda or auto (the workers would "
                          "hold GPUs and run on the CPU)")
    return RayExecutor(address=address, workers=workers,
                       threads_per_worker=threads_per_worker or 1,
                       gpus_per_worker=gpus_per_worker, device=device)


def option_given(name: str) -> bool:
    """Whether the user set option ``name`` (its parameter name) on the command line."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def budget_levels(flag: str, text: str) -> tuple[float, ...]:
    """'1/255,2/255,0.5' -> (1/255, 2/255, 0.5): budgets on the [0,1] pixel scale, written as
    numbers or fractions, the one convention of every command (attack --eps, evaluate and
    defend --linf/--l2); an empty list is refused."""
    out = []
    for part in text.split(","):
        if not part.strip():
            continue
        try:
            value = float(Fraction(part.strip()))
        except (ValueError, ZeroDivisionError):
            raise ConfigError(f"{flag}: {part.strip()!r} is not a number or fraction such as "
                              "2/255") from None
        if value <= 0:
            raise ConfigError(f"{flag}: budgets must be positive, got {part.strip()}")
        out.append(value)
    if not out:
        example = "0.5,1,2" if "l2" in flag else "2/255,8/255"
        raise ConfigError(f"{flag} needs at least one budget, e.g. {example}")
    return tuple(out)
