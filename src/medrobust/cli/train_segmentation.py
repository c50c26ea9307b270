"""The body of ``medrobust train --task segmentation``: train, test, save, record the run.

Kept out of ``cli/train.py`` so the classification path there stays as it was; ``train``
dispatches here and passes only the options the user actually set, so the segmentation
defaults (U-Net, batch 16, 20 epochs, flips) apply otherwise.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from medrobust.cli.common import check_outputs
from medrobust.data import load_dataset
from medrobust.data.segmentation import SegmentationDataset
from medrobust.errors import DataError
from medrobust.store import Store
from medrobust.tasks.robust import (
    ROBUST_OPTIONS,
    check_before_run,
    trained_about,
    trainer_kwargs,
)
from medrobust.tasks.segmentation import network as segmenter_network
from medrobust.training.resume import EpochState
from medrobust.training.segmentation import (
    SegTrainConfig,
    evaluate_segmenter,
    save_trained_segmenter,
    train_segmenter,
)
from medrobust.utils.device import resolve_device


def load_segmentation_splits(dataset: str, data_dir: str | None, size: int | None
                             ) -> tuple[SegmentationDataset, ...]:
    """Train, val and test splits of a segmentation dataset (DataError for a labelled one)."""
    options: dict[str, Any] = {"size": size}
    out = tuple(load_dataset(dataset, s, data_dir=data_dir, **options)
                for s in ("train", "val", "test"))
    if not all(isinstance(d, SegmentationDataset) for d in out):
        raise DataError(f"dataset {dataset!r} has labels, not masks: use --task classification "
                        "or a segmentation dataset such as segfolder")
    return out


def train_segmentation_and_save(dataset: str, data_dir: str | None, size: int | None,
                                overrides: dict[str, Any], out: str | Path, device: str,
                                store_path: str | Path, seed: int,
                                robust: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train on train, select on val, report test metrics; returns the JSON summary.

    ``robust``: the robust-training options (``tasks.robust.ROBUST_OPTIONS``; None: standard).
    A per-epoch state in ``out`` lets the same command resume after a kill."""
    check_outputs(out, store_path)
    config = SegTrainConfig(seed=seed, **overrides)
    config.validate()
    robust = {**ROBUST_OPTIONS, **(robust or {}), "out_dir": str(out)}
    kwargs = trainer_kwargs(robust, "segmentation")
    robust_params = {"robust": kwargs["robust"].as_dict()} if kwargs["robust"] else {}
    train_ds, val_ds, test_ds = load_segmentation_splits(dataset, data_dir, size)
    check_before_run(kwargs, train_ds, lambda: segmenter_network(
        train_ds, val_ds, {"model": config.model, "model_kwargs": config.model_kwargs}))
    checkpoint = str(Path(out).resolve())
    with Store(store_path) as store, store.tracked_run(
            "train", {**asdict(config), "task": "segmentation", **robust_params},
            model={"dir": checkpoint, "model": config.model, "task": "segmentation"},
            dataset=train_ds.spec, resume="unfinished") as (run_id, _):
        result = train_segmenter(train_ds, val_ds, config, resolve_device(device), **kwargs)
        test_metrics = evaluate_segmenter(result.segmenter, test_ds)
        about = trained_about(kwargs, robust, result.history, train_ds) \
            if kwargs["robust"] is not None else None
        save_trained_segmenter(result, config, train_ds, out, extra={"test": test_metrics},
                               robust=about)
        EpochState(out, None).clear()
        summary = {"checkpoint": checkpoint, "model": config.model, "task": "segmentation",
                   "dataset": train_ds.spec, "train_seconds": result.seconds,
                   "train_cpu_seconds": result.cpu_seconds, "best_epoch": result.best_epoch,
                   "epochs": config.epochs,
                   "sizes": {"train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
                   "val": result.val_metrics, "test": test_metrics,
                   **({"robust": about} if about is not None else {})}
        store.finish_run(run_id, "completed", summary)
    summary["run_id"] = run_id
    return summary


def run_train_segmentation(ctx: Any, as_json: bool) -> None:
    """``train --task segmentation``: the options the user set override SegTrainConfig's
    defaults (the classification defaults of ``train`` do not apply)."""
    import click
    from click.core import ParameterSource

    from medrobust.cli.common import emit, fmt
    from medrobust.errors import ConfigError

    p = ctx.params

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    if p.get("padding") or p.get("width") is not None:
        raise ConfigError("--padding and --width apply to classifiers, not segmentation")
    overrides: dict[str, Any] = {}
    if given("model_name"):
        overrides["model"] = p["model_name"]
    for name in ("epochs", "batch_size", "lr"):
        if given(name):
            overrides[name] = p[name]
    if given("augment") and p["augment"] != "auto":
        if p["augment"] == "shift":
            raise ConfigError("--augment shift is for classification; segmentation takes flips "
                              "or none")
        overrides["augment"] = p["augment"]
    from medrobust.cli.robust_options import robust_options

    summary = train_segmentation_and_save(p["dataset"], p["data_dir"], p["size"], overrides,
                                          p["out"], p["device"], p["store_path"], p["seed"],
                                          robust_options(p))

    def human() -> None:
        t = summary["test"]
        click.echo(f"trained {summary['model']} in {summary['train_seconds']:.0f}s "
                   f"(best epoch {summary['best_epoch']} of {summary['epochs']}) -> "
                   f"{summary['checkpoint']}")
        click.echo(f"test Dice {fmt(t['dice'])}  IoU {fmt(t['iou'])}  pixel accuracy "
                   f"{fmt(t['pixel_accuracy'])} ({t['n']} images)")

    emit(summary, as_json, human)
