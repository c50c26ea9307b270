"""Training a segmentation network (MONAI U-Net by default) with Dice + cross-entropy.

Dice + CE (MONAI ``DiceCELoss``): CE alone under-segments the small foreground of nuclei images,
Dice alone trains unstably at the start; the sum is the usual remedy. The epoch with the best
validation Dice is kept. Deterministic for a seed on a device: seeded init, one torch.Generator
for shuffling and augmentation (flips / 90-degree turns applied to image and mask together).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import DiceCELoss

from medrobust.data.segmentation import SegmentationDataset
from medrobust.errors import ConfigError
from medrobust.metrics.segmentation import segmentation_metrics
from medrobust.models.registry import build_model, resolve_factory
from medrobust.models.segmenter import Segmenter, save_segmenter
from medrobust.models.unet import downsampling
from medrobust.training.augment import augment_batch, noisy_validation
from medrobust.training.loop import (
    Judgement,
    check_fit_settings,
    fit_config,
    start_from,
    with_delta_search,
)
from medrobust.training.robust import LossSpec, Objective, RobustConfig, build_objective
from medrobust.training.robust.objectives import TermScore
from medrobust.training.robust.selection import selection_for
from medrobust.utils.seeding import seed_everything
from medrobust.utils.validation import check_choice, check_range

SEG_AUGMENT = ("flips", "none")


@dataclass
class SegTrainConfig:
    """Hyper-parameters; the defaults reach Dice >= 0.85 on DSB2018 at 128x128 on 2 CPU cores."""

    model: str = "unet"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 1e-4
    augment: str = "flips"
    seed: int = 0
    #: Gaussian noise (std on the [0,1] scale) added to every training image: the base model
    #: SegCertify smooths (Fischer et al. train theirs so); validation then scores one fixed
    #: noisy draw, so the kept epoch is the best under the noise it will be smoothed with
    noise_sd: float = 0.0

    def validate(self) -> None:
        """Every setting, the model name included: called before any data is loaded."""
        resolve_factory(self.model)
        check_fit_settings(self.epochs, self.batch_size, self.lr, self.weight_decay)
        check_choice("augment", self.augment, SEG_AUGMENT)
        check_range("noise_sd", self.noise_sd, 0)


@dataclass
class SegTrainResult:
    segmenter: Segmenter
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, Any]
    seconds: float
    #: CPU time of this process (all threads): on a shared machine, cpu_seconds / threads is
    #: the honest estimate of the wall time a dedicated machine would need.
    cpu_seconds: float = 0.0
    #: the robust objective (margins, Dice threshold, ensemble) when one was used
    objective: Objective | None = None
    #: robust runs: which epoch was kept and why (``loop.LoopResult.kept``)
    kept: dict[str, Any] | None = None


def channel_stats(ds: SegmentationDataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images on the [0,1] scale."""
    x = ds.images.reshape(-1, ds.channels).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-3).tolist()


def evaluate_segmenter(segmenter: Segmenter, ds: SegmentationDataset) -> dict[str, Any]:
    """Mean Dice, IoU (foreground) and pixel accuracy of ``segmenter`` on ``ds``."""
    pred = segmenter.predict(ds.images)
    return segmentation_metrics(pred, ds.masks, segmenter.num_classes)


def segmentation_terms(logits: torch.Tensor, masks: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample soft Dice (foreground), pixel-mean cross-entropy and their sum ``total`` for
    (N,1,H,W) or (N,H,W) masks: what robust inner attacks maximise."""
    import torch.nn.functional as F

    m = (masks[:, 0] if masks.ndim == 4 else masks).long()
    ce = F.cross_entropy(logits, m, reduction="none").flatten(1).mean(1)
    prob = logits.softmax(1)[:, 1:]
    onehot = F.one_hot(m, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (prob * onehot).flatten(1).sum(1)
    dice = 1 - (2 * inter + 1e-5) / (prob.flatten(1).sum(1) + onehot.flatten(1).sum(1) + 1e-5)
    return {"dice": dice, "ce": ce, "total": dice + ce}


def train_segmenter(train: SegmentationDataset, val: SegmentationDataset,
                    config: SegTrainConfig, device: torch.device | str = "cpu", *,
                    robust: RobustConfig | None = None,
                    init: dict[str, torch.Tensor] | None = None,
                    state_dir: str | Path | None = None) -> SegTrainResult:
    """Train ``config.model`` on ``train``; keep the epoch with the best validation Dice.

    ``robust`` chooses a robust objective (None: standard); adaptive margins use the Dice rule
    (correct = hard best-foreground Dice >= the mean clean training Dice of the starting model).
    ``init`` starts from these network weights; ``state_dir`` saves and resumes epoch state.
    A robust run keeps the epoch ``robust.keep`` says (``training.robust.selection``);
    ``robust.delta == "auto"`` searches D first (``training.robust.search``).
    """
    config.validate()
    if train.channels != val.channels:
        raise ConfigError("train and validation splits differ in channels")
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("segmentation training needs non-empty train and validation splits")
    if robust is not None and robust.searches_delta:
        return with_delta_search(train_segmenter, train, val, config, device, robust, init,
                                 state_dir)
    k = max(train.num_classes, val.num_classes)
    names = train.class_names if train.num_classes == k else val.class_names
    seed_everything(config.seed)
    device = torch.device(device)
    model = build_model(config.model, train.channels, k, **config.model_kwargs)
    mean, std = channel_stats(train)
    multiple = downsampling(config.model_kwargs) if config.model == "unet" else 1
    seg = Segmenter(model, mean=mean, std=std, class_names=names, multiple=multiple,
                    device=device)
    if init is not None:
        start_from(model, init)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    x_train = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
    y_train = torch.from_numpy(train.masks).unsqueeze(1).float()
    gen = torch.Generator().manual_seed(config.seed)
    c = train.channels
    spec = LossSpec(terms=segmentation_terms, criterion=loss_fn, rule="dice")
    objective = build_objective(robust, spec, len(train), config.epochs, config.seed)
    calibrate = None
    if objective is not None and objective.needs_calibration:
        # lazy: ``fit`` calls it only for a fresh start (a resumed state brings its threshold)
        calibrate = partial(objective.calibrate, seg,
                            ((x_train[i:i + 64].float().div(255).to(device),
                              y_train[i:i + 64].to(device)) for i in range(0, len(train), 64)))

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        both = torch.cat([x_train[idx].float() / 255.0, y_train[idx]], dim=1)
        if config.augment == "flips":  # image and mask turn together
            both = augment_batch(both, "flips", gen)
        if config.noise_sd > 0:  # drawn only then, so noise-free training keeps its stream
            both[:, :c] += config.noise_sd * torch.randn(both[:, :c].shape, generator=gen)
        if objective is not None:
            return objective.loss(seg, both[:, :c].to(device), both[:, c:].round().to(device),
                                  idx)[0]
        return loss_fn(seg(both[:, :c].to(device)), both[:, c:].round().to(device))

    noisy_val = noisy_validation(val.images, config.noise_sd, config.seed)

    def judge() -> Judgement:
        metrics = evaluate_segmenter(seg, val) if noisy_val is None else segmentation_metrics(
            seg.predict_tensor(noisy_val.to(device)).cpu().numpy(), val.masks,
            seg.num_classes)
        return Judgement({"val_dice": metrics["dice"], "val_iou": metrics["iou"],
                          "val_pixel_accuracy": metrics["pixel_accuracy"]},
                         (metrics["dice"], metrics["iou"]), metrics,
                         {"val_dice": f"{metrics['dice']:.3f}"})

    selection = selection_for(robust, "val Dice (then IoU)", (c, *train.size), config.seed)

    def attacked() -> tuple[dict[str, Any], tuple[float, ...]]:
        """The validation split under the cheap attack (clean images, true masks)."""
        assert selection is not None and selection.attack is not None
        x = torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(val.masks).unsqueeze(1).float()
        adv = selection.attack.run(seg, ((x[i:i + 64].to(device), y[i:i + 64].to(device),
                                          range(i, min(i + 64, len(val))))
                                         for i in range(0, len(val), 64)),
                                   lambda t: TermScore(spec, t))
        metrics = segmentation_metrics(seg.predict(adv), val.masks, seg.num_classes)
        return {"val_attacked_dice": metrics["dice"], "val_attacked_iou": metrics["iou"],
                "val_attacked_pixel_accuracy": metrics["pixel_accuracy"]}, \
            (metrics["dice"], metrics["iou"])

    done = fit_config(seg, config, train, gen=gen, batch_loss=batch_loss, judge=judge,
                      objective=objective, robust=robust, state_dir=state_dir, init=init,
                      calibrate=calibrate, selection=selection,
                      attacked=None if selection is None else attacked)
    return SegTrainResult(seg, done.history, done.best_epoch, done.best_metrics, done.seconds,
                          done.cpu_seconds, objective, done.kept)


def save_trained_segmenter(result: SegTrainResult, config: SegTrainConfig,
                           train: SegmentationDataset, out_dir: str | Path,
                           extra: dict[str, Any] | None = None,
                           robust: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint with provenance (config, dataset, history, validation metrics;
    ``robust``: how robust training ran, its Dice threshold and final margin histogram)."""
    meta = {
        "model": config.model,
        "model_kwargs": config.model_kwargs,
        "dataset": train.spec,
        "image_size": list(train.size),
        "train_config": asdict(config),
        "history": result.history,
        "best_epoch": result.best_epoch,
        "metrics": {"val": result.val_metrics, **(extra or {})},
        "train_seconds": result.seconds,
        "train_cpu_seconds": result.cpu_seconds,
        "torch_threads": torch.get_num_threads(),
    }
    if robust is not None:
        meta["robust"] = robust
    return save_segmenter(result.segmenter, out_dir, meta)
