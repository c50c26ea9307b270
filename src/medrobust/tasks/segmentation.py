"""Semantic segmentation: Dice + cross-entropy training, Dice and IoU scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medrobust.certify import segmentation as certificates
from medrobust.errors import ConfigError, DataError
from medrobust.metrics.segmentation import per_image_metrics
from medrobust.models.registry import build_model
from medrobust.models.segmenter import Segmenter
from medrobust.tasks.base import (
    Certification,
    CurveMetric,
    Task,
    TaskReport,
    config_meta,
    data_place,
    fmt_value,
    one_minus,
)
from medrobust.tasks.robust import (
    split,
    trained_about,
    trainer_kwargs,
    with_robust,
)
from medrobust.training.segmentation import (
    SegTrainConfig,
    evaluate_segmenter,
    segmentation_terms,
    train_segmenter,
)

OPTIONS: dict[str, Any] = with_robust({"model": "unet", "model_kwargs": {}, "epochs": 20,
                                       "batch_size": 16, "lr": 3e-3, "weight_decay": 1e-4,
                                       "augment": "flips", "noise_sd": 0.0, "seed": 0})


def train(train_ds: Any, val_ds: Any, options: dict[str, Any], device: str
          ) -> tuple[Segmenter, dict[str, Any]]:
    own, robust = split(options)
    kwargs = trainer_kwargs(robust, "segmentation")
    result = train_segmenter(train_ds, val_ds, SegTrainConfig(**own), device, **kwargs)
    about = trained_about(kwargs, robust, result.history, train_ds)
    return result.segmenter, {"best_epoch": result.best_epoch, "val": result.val_metrics,
                              "epochs_run": len(result.history),
                              "train_seconds": result.seconds,
                              "train_cpu_seconds": result.cpu_seconds,
                              "history": result.history, "model_kwargs": own["model_kwargs"],
                              "robust": about}


def command_options(given: dict[str, Any], start: dict[str, Any] | None) -> dict[str, Any]:
    """``--augment auto`` means the task's default (flips); with ``--xi-from`` and no
    ``--model``, the network that checkpoint holds (fine-tuning starts from it)."""
    if "padding" in given or "width" in given:
        raise ConfigError("--padding and --width apply to classifiers, not segmentation")
    out = {k: v for k, v in given.items() if not (k == "augment" and v == "auto")}
    if out.get("augment") == "shift":
        raise ConfigError("--augment shift is for classification; segmentation takes flips or "
                          "none")
    if start is not None and "model" not in out:
        out["model"] = str(start.get("model", OPTIONS["model"]))
        out["model_kwargs"] = dict(start.get("model_kwargs") or {})
    return out


def validate_options(own: dict[str, Any]) -> None:
    SegTrainConfig(**own).validate()


def checkpoint_meta(trained: dict[str, Any], train_ds: Any, options: dict[str, Any],
                    test: dict[str, Any]) -> dict[str, Any]:
    return config_meta(SegTrainConfig(**split(options)[0]), trained, train_ds, test,
                       train_cpu_seconds=trained["train_cpu_seconds"],
                       torch_threads=torch.get_num_threads())


def network(train_ds: Any, val_ds: Any, o: dict[str, Any]) -> torch.nn.Module:
    """The network ``train_segmenter`` builds for these options."""
    k = max(train_ds.num_classes, val_ds.num_classes)
    return build_model(o["model"], train_ds.channels, k, **(o["model_kwargs"] or {}))


def check_data(model: Segmenter, ds: Any) -> None:
    """Masks with more classes than the model segments cannot be scored."""
    if ds.num_classes > model.num_classes:
        raise DataError(f"the model segments {model.num_classes} classes but {data_place(ds)} "
                        f"masks have {ds.num_classes}")


def loss_terms(model: Segmenter, outputs: torch.Tensor, masks: torch.Tensor
               ) -> dict[str, torch.Tensor]:
    """Per-sample soft Dice loss (foreground classes), pixel-mean cross-entropy and their sum
    (``total``, the training objective); the same terms robust training uses."""
    return segmentation_terms(outputs, masks)


def attack_targets(ds: Any, idx: np.ndarray) -> torch.Tensor:
    """The true masks: an untargeted attack pushes the prediction away from them."""
    return torch.from_numpy(np.asarray(ds.masks)[idx].astype(np.int64))


def attack_rows(model: Segmenter, ds: Any, idx: np.ndarray, clean: torch.Tensor,
                adv: torch.Tensor) -> list[dict[str, Any]]:
    """Per image: foreground Dice (the metric) and IoU (the extra) against the true mask
    before and after; predicted masks are not stored (the segmentation campaign keeps
    example panels)."""
    truth = np.asarray(ds.masks)[idx]
    k = model.num_classes
    before = per_image_metrics(model.predict_tensor(clean.to(model.device)).cpu(), truth, k)
    after = per_image_metrics(model.predict_tensor(adv.to(model.device)).cpu(), truth, k)
    return [{"metric": "dice", "unit": "", "clean_metric": float(before["dice"][j]),
             "adv_metric": float(after["dice"][j]), "clean_extra": float(before["iou"][j]),
             "adv_extra": float(after["iou"][j]), "clean_pred": None, "adv_pred": None}
            for j in range(len(idx))]


def attack_summary(rows: list[dict[str, Any]], ds: Any) -> dict[str, Any]:
    """Mean foreground Dice and IoU over the attacked images, before and after."""
    if not rows:
        return {"images": 0}
    mean = lambda key: float(np.mean([r[key] for r in rows]))  # noqa: E731
    return {"images": len(rows), "clean_dice": mean("clean_metric"),
            "adv_dice": mean("adv_metric"), "clean_iou": mean("clean_extra"),
            "adv_iou": mean("adv_extra")}


def image_damage(model: Segmenter, x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """1 - foreground Dice against the true masks, per image (what the ensemble maximises)."""
    pred = model.predict_tensor(x.to(model.device)).cpu()
    dice = per_image_metrics(pred, torch.as_tensor(masks).cpu(), model.num_classes)["dice"]
    return 1.0 - torch.as_tensor(np.asarray(dice, dtype=np.float64))


def _dense(name: str) -> Any:
    from medrobust.attacks.dense_losses import DENSE_LOSSES

    loss = DENSE_LOSSES[name]

    def build(model: Segmenter) -> Any:
        def on_device(outputs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
            return loss(outputs, torch.as_tensor(masks).to(outputs.device))

        on_device.__name__ = name.replace("-", "_")
        return on_device

    return build


#: SEA's losses and CosPGD's, beside the training loss (Dice + CE), in the worst-case ensemble
ENSEMBLE_LOSSES = {name: _dense(name) for name in ("masked-ce", "js", "masked-margin",
                                                   "cosine-ce")}


def describe(m: dict[str, Any]) -> str:
    return (f"n={m['n']} Dice {fmt_value(m['dice'])} (median {fmt_value(m.get('dice_median'))}) IoU "
            f"{fmt_value(m['iou'])} pixel accuracy {fmt_value(m.get('pixel_accuracy'))}")


def describe_attack(s: dict[str, Any]) -> str:
    return (f"Dice {fmt_value(s.get('clean_dice'))} -> {fmt_value(s.get('adv_dice'))}  IoU "
            f"{fmt_value(s.get('clean_iou'))} -> {fmt_value(s.get('adv_iou'))}")


TASK = Task(name="segmentation", wrapper=Segmenter, datasets=("segfolder",), train=train,
            evaluate=evaluate_segmenter, headline="dice", loss_terms=loss_terms,
            default_model="unet", options=OPTIONS, attack_rows=attack_rows,
            attack_summary=attack_summary, attack_targets=attack_targets, describe=describe,
            describe_attack=describe_attack, check_data=check_data, network=network,
            command_options=command_options, validate_options=validate_options,
            checkpoint_meta=checkpoint_meta, mask_attacks=True, image_damage=image_damage,
            metric_of_damage=one_minus,
            ensemble_losses=ENSEMBLE_LOSSES,
            certification=Certification(
                "SegCertify (Fischer, Baader & Vechev, ICML 2021), Holm-corrected over pixels",
                certificates.TABLE, certificates.certifier, certificates.summarise,
                certificates.describe, checkable=True, check=certificates.check),
            report=TaskReport(
                1, "Segmentation: Dice against the true mask", "Dice",
                (CurveMetric("dice", "Dice vs truth", (("clean_dice", "adv_dice"),
                                                       ("mean_clean_dice_truth",
                                                        "mean_dice_truth"))),),
                panel="masks"))
