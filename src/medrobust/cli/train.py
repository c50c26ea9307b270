"""``medrobust train``: train a zoo model, select on validation, save a checkpoint, record the run."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from medrobust.cli.common import (
    DEFAULT_STORE,
    check_outputs,
    common_options,
    dataset_options,
    emit,
    fmt,
    open_dataset,
    option_given,
)
from medrobust.cli.robust_options import robust_options
from medrobust.errors import ConfigError
from medrobust.models import read_meta
from medrobust.models.registry import available_models
from medrobust.store import Store
from medrobust.tasks import DEFAULT_TASK, TASKS
from medrobust.tasks.classification import network as classifier_network
from medrobust.tasks.robust import (
    ROBUST_OPTIONS,
    check_before_run,
    trained_about,
    trainer_kwargs,
)
from medrobust.training import TrainConfig, evaluate_classifier, save_trained, train_classifier
from medrobust.training.resume import EpochState
from medrobust.training.robust import METHODS, XI_RULES
from medrobust.training.trainer import check_model_input
from medrobust.utils.device import resolve_device

WIDTH_MODELS = ("smallcnn", "mitosisnet")


def train_and_save(dataset: str | None, data_dir: str | None, size: int | None, no_verify: bool,
                   config: TrainConfig, out: str | Path, device: str, store_path: str | Path,
                   robust: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of ``train``; also used by ``demo``. Returns the JSON summary.

    ``robust``: the robust-training options (``tasks.robust.ROBUST_OPTIONS``; None: standard).
    A per-epoch state in ``out`` lets the same command resume after a kill."""
    check_outputs(out, store_path)
    config.validate()
    robust = {**ROBUST_OPTIONS, **(robust or {}), "out_dir": str(out)}
    kwargs = trainer_kwargs(robust, "classification")
    train_ds = open_dataset(dataset, "train", data_dir, size, no_verify)
    val_ds = open_dataset(dataset, "val", data_dir, size, no_verify)
    test_ds = open_dataset(dataset, "test", data_dir, size, no_verify)
    check_model_input(config, train_ds)
    # budgets against the image shape and --xi-from weights against the network, before the
    # run opens (inside training either would leave a failed run)
    check_before_run(kwargs, train_ds, lambda: classifier_network(
        train_ds, val_ds, {"model": config.model, "model_kwargs": config.model_kwargs}))
    checkpoint = str(Path(out).resolve())
    with Store(store_path) as store, store.tracked_run(
            "train", {**asdict(config), **({"robust": kwargs["robust"].as_dict()}
                                           if kwargs["robust"] is not None else {})},
            model={"dir": checkpoint, "model": config.model},
            dataset=train_ds.spec, resume="unfinished") as (run_id, _):
        result = train_classifier(train_ds, val_ds, config, resolve_device(device), **kwargs)
        test_metrics = evaluate_classifier(result.classifier, test_ds)
        test_metrics.pop("dataset")
        about = trained_about(kwargs, robust, result.history, train_ds) \
            if kwargs["robust"] is not None else None
        save_trained(result, config, train_ds, out, extra={"test": test_metrics}, robust=about)
        EpochState(out, None).clear()
        summary = {"checkpoint": checkpoint, "model": config.model, "dataset": train_ds.spec,
                   "train_seconds": result.seconds, "best_epoch": result.best_epoch,
                   "val": result.val_metrics, "test": test_metrics,
                   **({"robust": about} if about is not None else {})}
        store.finish_run(run_id, "completed", summary)
    summary["run_id"] = run_id
    return summary


@click.command()
@click.option("--task", type=click.Choice(list(TASKS)), default=DEFAULT_TASK, show_default=True,
              help="segmentation: a U-Net on image+mask data (--dataset segfolder); landmarks: "
                   "the multi-task landmark U-Net (--dataset landmarks, a landmark folder); "
                   "detection: a CenterNet detector (--dataset bccd-detection or voc).")
@dataset_options(required=True)
@click.option("--model", "model_name", default="smallcnn", show_default=True,
              help=f"Zoo model ({', '.join(available_models())}) or module:factory.")
@click.option("--padding", type=click.Choice(["keras", "symmetric"]), default=None,
              help="mitosisnet only: Keras-style or symmetric padding.")
@click.option("--width", type=click.IntRange(1), default=None,
              help="smallcnn / mitosisnet only: channels of the first stage (their defaults: 32 "
                   "and 16).")
@click.option("--epochs", type=int, default=15, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--lr", type=float, default=3e-3, show_default=True)
@click.option("--augment", type=click.Choice(["auto", "flips", "shift", "none"]), default="auto",
              show_default=True)
@click.option("--minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="landmarks / detection: wall-clock training budget (the best validation "
                   "epoch so far is kept).")
@click.option("--heatmap-loss", type=click.Choice(["bce", "dice"]), default=None,
              help="landmarks: heatmap loss (default bce, the original; dice: the paper's "
                   "variant).")
@click.option("--robust", type=click.Choice(list(METHODS)), default="none", show_default=True,
              help="Robust training objective: vat (Madry PGD at --eps), teat (temporal "
                   "ensembling at --eps) or adaptive-margin (per-sample margins grown by "
                   "--delta; needs --xi-from). Budgets are L2 on the [0,1] pixel scale.")
@click.option("--eps", type=float, default=None,
              help="vat / teat: the L2 training budget on the [0,1] pixel scale (per-pixel RMS "
                   "in grey levels = eps / sqrt(C*H*W) * 255).")
@click.option("--delta", type=float, default=None,
              help="adaptive-margin: the margin step D (margins start at D), L2 on [0,1].")
@click.option("--alpha", type=float, default=None,
              help="vat / adaptive-margin: inner PGD step multiplier, step = alpha * budget / "
                   "steps (default 4; the authors: 4 for segmentation, 5 for detection).")
@click.option("--xi", type=click.Choice(list(XI_RULES)), default=None,
              help="adaptive-margin: threshold rule on the clean training losses of --xi-from "
                   "(default mean+2std; segmentation uses its mean clean Dice instead).")
@click.option("--max-margin", type=float, default=None,
              help="adaptive-margin: cap on the margins (L2 on [0,1]; default none).")
@click.option("--refine-margins", is_flag=True,
              help="adaptive-margin: bisect the boundary between the last correct and first "
                   "wrong inner iterate (10 steps) so margins can shrink to it.")
@click.option("--xi-from", type=click.Path(file_okay=False), default=None,
              help="Checkpoint folder of a trained standard model of the same task: robust "
                   "training fine-tunes from it, and adaptive margins calibrate xi on its clean "
                   "training losses.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Checkpoint folder to write (an unfinished run there is resumed).")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True,
              help="SQLite run store.")
@common_options
def train(task: str, dataset: str, data_dir: str | None, size: int | None, no_verify: bool,
          model_name: str, padding: str | None, width: int | None, epochs: int, batch_size: int,
          lr: float, augment: str, minutes: float | None, heatmap_loss: str | None,
          robust: str, eps: float | None, delta: float | None, alpha: float | None,
          xi: str | None,
          max_margin: float | None, refine_margins: bool, xi_from: str | None, out: str,
          store_path: str, as_json: bool, seed: int, device: str) -> None:
    """Train a classifier, segmenter, landmark model or detector (--task) and save it as
    safetensors + JSON metadata; --robust trains it adversarially (VAT, TEAT or adaptive
    margins). Killed runs resume from the last finished epoch when run again."""
    if task in ("landmarks", "detection"):
        from medrobust.cli.train_task import run_train_task

        run_train_task(click.get_current_context(), task, as_json)
        return
    if minutes is not None or heatmap_loss is not None:
        raise ConfigError("--minutes and --heatmap-loss apply to landmarks and detection training")
    if task == "segmentation":
        from medrobust.cli.train_segmentation import run_train_segmentation

        run_train_segmentation(click.get_current_context(), as_json)
        return
    kwargs: dict[str, Any] = {"padding": padding} if padding else {}
    if xi_from and not any(option_given(n) for n in ("model_name", "width", "padding")):
        # fine-tuning starts from that checkpoint, so its network is the one to build
        meta = read_meta(xi_from)
        model_name, kwargs = str(meta.get("model", model_name)), dict(meta.get("model_kwargs")
                                                                      or {})
        width = None
    if width is not None:
        if model_name not in WIDTH_MODELS:
            raise ConfigError(f"--width applies to {' and '.join(WIDTH_MODELS)}, not {model_name}")
        kwargs["width"] = width
    config = TrainConfig(model=model_name, model_kwargs=kwargs, epochs=epochs,
                         batch_size=batch_size, lr=lr, augment=augment, seed=seed)
    summary = train_and_save(dataset, data_dir, size, no_verify, config, out, device, store_path,
                             robust_options(click.get_current_context().params))

    def human() -> None:
        t = summary["test"]
        click.echo(f"trained {model_name} in {summary['train_seconds']:.0f}s "
                   f"(best epoch {summary['best_epoch']}) -> {summary['checkpoint']}")
        click.echo(f"test accuracy {fmt(t['accuracy'])}  AUC {fmt(t['auc'])}  "
                   f"balanced accuracy {fmt(t['balanced_accuracy'])}")

    emit(summary, as_json, human)
