"""Supervised training of a zoo classifier with validation-based checkpoint selection."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.base import ImageDataset
from medrobust.errors import ConfigError
from medrobust.metrics.classification import classification_metrics
from medrobust.models.checkpoint import save_checkpoint
from medrobust.models.classifier import Classifier
from medrobust.models.registry import SIGMOID_MODELS, build_model, resolve_factory
from medrobust.training.augment import POLICIES, augment_batch, default_policy, noisy_validation
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


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults train the zoo's small nets well in CPU minutes."""

    model: str = "smallcnn"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 15
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 5e-4
    augment: str = "auto"
    select_metric: str = "auc"
    class_weighted: bool = True
    label_smoothing: float = 0.0
    #: Gaussian noise (std on the [0,1] scale) added to every training image: the base model
    #: randomized smoothing needs (Cohen et al. 2019); validation then scores noisy images too
    noise_sd: float = 0.0
    seed: int = 0

    def validate(self) -> None:
        """Every setting, the model name included: called before any data is loaded."""
        resolve_factory(self.model)
        check_fit_settings(self.epochs, self.batch_size, self.lr, self.weight_decay)
        check_range("label_smoothing", self.label_smoothing, 0, 0.5)
        check_range("noise_sd", self.noise_sd, 0)
        check_choice("augment", self.augment, ("auto", *POLICIES))
        check_choice("select_metric", self.select_metric, ("auc", "accuracy", "loss"))


@dataclass
class TrainResult:
    classifier: Classifier
    history: list[dict[str, float]]
    best_epoch: int
    val_metrics: dict[str, Any]
    seconds: float
    #: the robust objective (margins, xi, ensemble) when one was used
    objective: Objective | None = None
    #: robust runs: which epoch was kept and why (``loop.LoopResult.kept``)
    kept: dict[str, Any] | None = None


def _normalisation(ds: ImageDataset) -> tuple[list[float], list[float]]:
    x = ds.images.reshape(-1, ds.channels).astype(np.float64) / 255.0
    std = np.maximum(x.std(axis=0), 1e-3)
    return x.mean(axis=0).tolist(), std.tolist()


def _loss(clf: Classifier, logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor | None,
          smoothing: float) -> torch.Tensor:
    if clf.head == "sigmoid":
        target = y.float() * (1 - smoothing) + 0.5 * smoothing
        pos_weight = None if weights is None else weights[1] / weights[0]
        return F.binary_cross_entropy_with_logits(logits.reshape(-1), target, pos_weight=pos_weight)
    return F.cross_entropy(logits, y, weight=weights, label_smoothing=smoothing)


def _selection_value(metrics: dict[str, Any], name: str, loss: float) -> float:
    if name == "loss":
        return -loss
    value = metrics.get(name)
    return float("-inf") if value is None else float(value)


def _scored(probs: np.ndarray, val: ImageDataset, select_metric: str
            ) -> tuple[dict[str, Any], float, tuple[float, float]]:
    """(metrics, validation loss, selection key) of validation probabilities. Ties on the
    metric (AUC saturates at 1.0 on easy data) go to the lower validation loss."""
    metrics = classification_metrics(probs, val.labels, val.class_names)
    val_loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)),
                                torch.from_numpy(val.labels)))
    return metrics, val_loss, (_selection_value(metrics, select_metric, val_loss), -val_loss)


def classification_terms(clf: Classifier, smoothing: float = 0.0
                         ) -> Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-sample terms {"ce", "total"} of a classifier (unweighted cross-entropy, BCE for a
    sigmoid head): what xi thresholds and what inner attacks maximise."""

    def terms(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if clf.head == "sigmoid":
            target = y.float() * (1 - smoothing) + 0.5 * smoothing
            ce = F.binary_cross_entropy_with_logits(logits.reshape(-1), target, reduction="none")
        else:
            ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=smoothing)
        return {"ce": ce, "total": ce}

    return terms


def train_classifier(train: ImageDataset, val: ImageDataset, config: TrainConfig,
                     device: torch.device | str = "cpu", *, robust: RobustConfig | None = None,
                     init: dict[str, torch.Tensor] | None = None,
                     state_dir: str | Path | None = None) -> TrainResult:
    """Train ``config.model`` on ``train``; keep the epoch with the best validation metric.

    Deterministic for a given seed on a given device: seeded init, seeded shuffling and
    augmentation through one torch.Generator, deterministic kernels requested. ``robust``
    chooses a robust objective (``training.robust``; None: standard training), ``init`` starts
    from these network weights (fine-tuning, e.g. from the standard model xi comes from),
    ``state_dir`` saves a resumable state after each epoch and resumes from one. A robust run
    keeps the epoch ``robust.keep`` says and validates under the cheap attack when due
    (``training.robust.selection``); ``robust.delta == "auto"`` searches D first
    (``training.robust.search``).
    """
    config.validate()
    if train.channels != val.channels or train.class_names != val.class_names:
        raise ConfigError("train and validation splits differ in channels or classes")
    if robust is not None and robust.searches_delta:
        return with_delta_search(train_classifier, train, val, config, device, robust, init,
                                 state_dir)
    seed_everything(config.seed)
    device = torch.device(device)
    model = build_model(config.model, train.channels, train.num_classes, **config.model_kwargs)
    mean, std = _normalisation(train)
    head = "sigmoid" if config.model in SIGMOID_MODELS else "softmax"
    clf = Classifier(model, mean=mean, std=std, class_names=train.class_names, head=head,
                     device=device)
    if init is not None:
        start_from(model, init)
    policy = default_policy(train.spec) if config.augment == "auto" else config.augment

    x_train = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
    y_train = torch.from_numpy(train.labels)
    weights = None
    if config.class_weighted:
        counts = np.bincount(train.labels, minlength=train.num_classes).astype(np.float64)
        w = counts.sum() / np.maximum(counts, 1) / train.num_classes
        weights = torch.tensor(w, dtype=torch.float32, device=device)

    gen = torch.Generator().manual_seed(config.seed)
    spec = LossSpec(terms=classification_terms(clf, config.label_smoothing),
                    criterion=lambda out, y: _loss(clf, out, y, weights, config.label_smoothing))
    objective: Objective | None = build_objective(robust, spec, len(train), config.epochs,
                                                  config.seed)
    calibrate = None
    if objective is not None and objective.needs_calibration:
        # lazy: ``fit`` calls it only for a fresh start (a resumed state brings its xi)
        calibrate = partial(objective.calibrate, clf,
                            ((x_train[i:i + 256].float().div(255).to(device),
                              y_train[i:i + 256].to(device)) for i in range(0, len(train), 256)))

    noisy_val = noisy_validation(val.images, config.noise_sd, config.seed)

    def batch_loss(idx: torch.Tensor) -> torch.Tensor:
        xb = augment_batch(x_train[idx].float() / 255.0, policy, gen)
        if config.noise_sd > 0:  # drawn only then, so noise-free training keeps its stream
            xb = xb + config.noise_sd * torch.randn(xb.shape, generator=gen)
        xb = xb.to(device)
        if objective is not None:
            return objective.loss(clf, xb, y_train[idx].to(device), idx)[0]
        return _loss(clf, clf(xb), y_train[idx].to(device), weights, config.label_smoothing)

    def judge() -> Judgement:
        probs = clf.probabilities(val.images) if noisy_val is None else np.concatenate(
            [p.cpu().numpy() for p in clf.batched(
                lambda b: clf.logits_to_probabilities(clf(b)), noisy_val, 256)])
        metrics, val_loss, key = _scored(probs, val, config.select_metric)
        auc = metrics["auc"] or float("nan")
        return Judgement({"val_loss": val_loss, "val_accuracy": metrics["accuracy"],
                          "val_auc": auc}, key, metrics,
                         {"val_acc": f"{metrics['accuracy']:.3f}", "val_auc": f"{auc:.3f}"})

    selection = selection_for(robust, f"val {config.select_metric} (ties: lower val loss)",
                              (train.channels, *train.size), config.seed)

    def attacked() -> tuple[dict[str, Any], tuple[float, ...]]:
        """The validation split under the cheap attack (clean images, true labels)."""
        assert selection is not None and selection.attack is not None
        x = torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255.0
        y = torch.from_numpy(val.labels)
        rows = range(0, len(val), 256)
        adv = selection.attack.run(clf, ((x[i:i + 256].to(device), y[i:i + 256].to(device),
                                          range(i, min(i + 256, len(val)))) for i in rows),
                                   lambda t: TermScore(spec, t))
        metrics, val_loss, key = _scored(clf.probabilities(adv), val, config.select_metric)
        return {"val_attacked_loss": val_loss, "val_attacked_accuracy": metrics["accuracy"],
                "val_attacked_auc": float("nan") if metrics["auc"] is None else metrics["auc"]}, key

    done = fit_config(clf, config, train, gen=gen, batch_loss=batch_loss, judge=judge,
                      objective=objective, robust=robust, state_dir=state_dir, init=init,
                      calibrate=calibrate, selection=selection,
                      attacked=None if selection is None else attacked)
    return TrainResult(clf, done.history, done.best_epoch, done.best_metrics, done.seconds,
                       objective, done.kept)


def save_trained(result: TrainResult, config: TrainConfig, train: ImageDataset,
                 out_dir: str | Path, extra: dict[str, Any] | None = None,
                 robust: dict[str, Any] | None = None) -> Path:
    """Write the checkpoint with full provenance (config, dataset, history, validation metrics;
    ``robust``: how robust training ran, its xi and final margin histogram)."""
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
    }
    if robust is not None:
        meta["robust"] = robust
    return save_checkpoint(result.classifier, out_dir, meta)
