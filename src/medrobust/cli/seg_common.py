"""Options and helpers the segmentation commands share (``attack asma|pgd|ifgsm --task
segmentation``): budgets written as ``8/255``, target-mask options, the attacked split
(``DataChoice``) and loading a segmentation split with the channels the model expects."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import click

from medrobust.attacks.seg_targets import TARGET_MODES, TargetSpec
from medrobust.data import load_dataset, load_from_spec
from medrobust.data.segmentation import SegmentationDataset
from medrobust.errors import ConfigError, DataError
from medrobust.models.checkpoint import read_meta
from medrobust.models.segmenter import Segmenter
from medrobust.store import check_store_path
from medrobust.utils.validation import check_range


class Budget(click.ParamType):
    """A non-negative number or fraction (``0.03``, ``8/255``); ``none`` for no limit."""

    name = "budget"

    def __init__(self, allow_none: bool = False) -> None:
        self.allow_none = allow_none

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float | None:
        if value is None or isinstance(value, float):
            return value
        text = str(value).strip().lower()
        if self.allow_none and text in ("none", "off", "inf"):
            return None
        try:
            number = float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            self.fail(f"{value!r} is not a number or fraction such as 8/255", param, ctx)
        if number < 0:
            self.fail(f"{value!r} must not be negative", param, ctx)
        return number


def target_options(default_mode: str, allow_none: bool) -> Callable[[Callable[..., Any]],
                                                                     Callable[..., Any]]:
    """``--target-mode`` and its parameters."""
    modes = (["none"] if allow_none else []) + list(TARGET_MODES)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        fn = click.option("--target-file", type=click.Path(dir_okay=False), default=None,
                          help="Mask image for --target-mode file.")(fn)
        fn = click.option("--radius", type=int, default=3, show_default=True,
                          help="Dilation radius in pixels (--target-mode dilate).")(fn)
        fn = click.option("--shift", default="16,0", show_default=True,
                          help="DX,DY in pixels: columns right, rows down (--target-mode shift).")(fn)
        help_text = ("Target masks: another image's ground truth (other, the paper's realistic "
                     "targets), erase all foreground, erase-one (the largest object), shift, "
                     "dilate, or a mask file")
        if allow_none:
            help_text += "; none = untargeted (push away from the truth)"
        return click.option("--target-mode", type=click.Choice(modes), default=default_mode,
                            show_default=True, help=help_text + ".")(fn)

    return deco


@dataclass(frozen=True)
class DataChoice:
    """The split an attack command attacks: a dataset (None: the model's own), its folder, the
    image size (None: the model's), the split and how many of its first items (None: all)."""

    dataset: str | None = None
    data_dir: str | None = None
    size: int | None = None
    no_verify: bool = False
    split: str = "test"
    limit: int | None = None

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> DataChoice:
        """From a command's click parameters (``--no-verify`` where it has one)."""
        return cls(opts["dataset"], opts["data_dir"], opts["size"],
                   bool(opts.get("no_verify", False)), opts["split"], opts["limit"])


@dataclass(frozen=True)
class MaskTarget:
    """``--target-mode`` and its parameters: the recipe of the target masks."""

    mode: str = "none"
    #: "DX,DY" as written, parsed by ``spec`` (its error names --shift)
    shift: str = "16,0"
    radius: int = 3
    file: str | None = None

    @classmethod
    def from_options(cls, opts: Mapping[str, Any]) -> MaskTarget:
        """From a command's click parameters (``target_options``)."""
        return cls(opts["target_mode"], opts["shift"], opts["radius"], opts["target_file"])

    def spec(self, seed: int) -> TargetSpec | None:
        """The TargetSpec of these options (None for untargeted)."""
        if self.mode == "none":
            return None
        try:
            dx, dy = (int(v) for v in self.shift.split(","))
        except ValueError:
            raise ConfigError(f"--shift must be DX,DY integers, got {self.shift!r}") from None
        return TargetSpec(mode=self.mode, seed=seed, dx=dx, dy=dy, radius=self.radius,
                          file=self.file)


def open_seg_dataset(name: str | None, split: str, data_dir: str | None, size: int | None,
                     model_dir: str | Path, segmenter: Segmenter) -> SegmentationDataset:
    """A segmentation split: by name, or the one the model was trained on.

    A ``segfolder`` is read with the model's channel count, so a greyscale folder works with an
    RGB model and the other way round; the size defaults to the model's training size.
    """
    meta = read_meta(model_dir)
    if name is None:
        spec = dict(meta.get("dataset") or {})
        if not spec:
            raise click.UsageError("--dataset is required (the checkpoint records none)")
        if data_dir is not None:
            spec["data_dir"] = data_dir
        if size is not None:
            spec["size"] = size
        if spec.get("dataset") == "segfolder":
            spec["channels"] = segmenter.channels
        ds = load_from_spec(spec, split)
    else:
        options: dict[str, Any] = {"size": size}
        if name == "segfolder":
            options["channels"] = segmenter.channels
            if size is None and meta.get("image_size"):
                options["size"] = int(meta["image_size"][0])
        ds = load_dataset(name, split, data_dir=data_dir, **options)
    if not isinstance(ds, SegmentationDataset):
        raise DataError(f"dataset {name or ds.name!r} has labels, not masks: use a segmentation "
                        "dataset such as segfolder")
    if ds.channels != segmenter.channels:
        raise DataError(f"the model expects {segmenter.channels} channel(s), {ds.name} has "
                        f"{ds.channels}")
    from medrobust.tasks.segmentation import check_data

    check_data(segmenter, ds)  # the class-count rule every command applies to a segmenter
    return ds


def check_campaign_options(store_path: str | Path, examples: int, limit: int | None) -> None:
    """Options every attack campaign command shares, checked before anything is loaded: a store
    the command may write (a medrobust one or none yet), the example count, the limit."""
    check_store_path(store_path)
    check_range("--examples", examples, 0)
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")


def pick_indices(ds: SegmentationDataset | Any, limit: int | None) -> list[int]:
    """The first ``limit`` items (``check_campaign_options`` has checked ``limit``)."""
    return list(range(len(ds) if limit is None else min(limit, len(ds))))


def model_info(model_dir: str | Path, segmenter: Segmenter) -> dict[str, Any]:
    meta = read_meta(model_dir)
    return {"dir": str(Path(model_dir).resolve()), "model": meta.get("model"),
            "model_kwargs": meta.get("model_kwargs", {}), "saved_at": meta.get("saved_at"),
            "task": "segmentation", "class_names": list(segmenter.class_names)}


def segmentation_inputs(model_dir: str | Path, data: DataChoice, target: MaskTarget, seed: int,
                        device: str, batch_images: int
                        ) -> tuple[Segmenter, SegmentationDataset, list[int], TargetSpec | None]:
    """What every segmentation attack command starts from: the model on its device, the split,
    the chosen item indices and the target-mask recipe (None for untargeted)."""
    from medrobust.models.segmenter import load_segmenter
    from medrobust.utils.device import resolve_device

    spec = target.spec(seed)
    seg = load_segmenter(model_dir, resolve_device(device), batch_size=batch_images)
    ds = open_seg_dataset(data.dataset, data.split, data.data_dir, data.size, model_dir, seg)
    return seg, ds, pick_indices(ds, data.limit), spec
