"""Training the multi-task landmark U-Net (heatmap + offsets, Yao et al.) on a ``LandmarkDataset``.

The authors' recipe (METHODS.md section 6 continued): Adam, lr 1e-3, weight decay 1e-4, batch 8,
loss 2 BCE + L1, radius 0.05 x 200 = 10 px. Added for short CPU budgets: an optional cosine decay
of the learning rate over the planned epochs (off = the authors' constant rate), an optional
wall-clock budget (``minutes``) that stops between epochs, and light seeded augmentation (random
zoom and shift, landmarks moved by the same affine map exactly). The epoch with the best validation
MRE is kept. Deterministic for a seed on a device (seeded init, one torch.Generator for shuffling
and augmentation); with ``minutes`` the number of epochs depends on the machine's speed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medrobust.data.landmarks import LandmarkDataset
from medrobust.errors import ConfigError
from medrobust.metrics.landmarks import RadialError
from medrobust.models.landmark_codec import default_radius, encode
from medrobust.models.landmark_unet import LandmarkModel, landmark_unet
from medrobust.training.landmark_loss import HEATMAP_LOSSES, LandmarkLoss
from medrobust.training.loop import EpochEnd, Judgement, start_from, torch_shuffle, train_epochs
from medrobust.training.resume import EpochState
from medrobust.training.robust import LossSpec, RobustConfig, build_objective
from medrobust.training.robust.objectives import TermScore
from medrobust.training.robust.search import search_delta
from medrobust.training.robust.selection import Selection, selection_for
from medrobust.utils.seeding import seed_everything

#: part of the resume key: states the epoch loop of before ``loop.train_epochs`` wrote hold
#: other entries, so they are refused as another run's rather than misread
STATE_FORMAT = 2


def channel_stats(ds: LandmarkDataset) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the training images on the [0,1] scale."""
    x = ds.images.reshape(-1, ds.channels).astype(np.float64) / 255.0
    return x.mean(axis=0).tolist(), np.maximum(x.std(axis=0), 1e-3).tolist()


def augment_affine(x: torch.Tensor, points: torch.Tensor, generator: torch.Generator,
                   zoom: float = 0.1, shift: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Random zoom (factor in [1 - zoom, 1 + zoom]) and shift (up to ``shift`` of each side).

    ``x`` (B,C,H,W) in [0,1], ``points`` (B,K,2) pixels; returns new tensors (inputs untouched).
    The sampling grid maps output normalised coordinates u to input ones as ``s * u + t``
    (``align_corners=False``), so a landmark moves to ``(u - t) / s``: exact, no re-annotation.
    Pixels from outside the image are filled by the border value (radiographs have dark borders).
    """
    b, _, h, w = x.shape
    s = 1.0 + (torch.rand(b, generator=generator) * 2 - 1) * zoom      # input extent per output
    t = (torch.rand(b, 2, generator=generator) * 2 - 1) * shift * 2   # normalised units
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = s
    theta[:, 1, 1] = s
    theta[:, :, 2] = t
    theta = theta.to(x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    size = torch.tensor([w, h], dtype=torch.float32, device=points.device)
    u = (2 * points + 1) / size - 1
    u = (u - t.to(points.device)[:, None, :]) / s.to(points.device)[:, None, None]
    return out, ((u + 1) * size - 1) / 2


def evaluate_landmarks(model: LandmarkModel, ds: LandmarkDataset, batch_size: int = 16
                       ) -> dict[str, Any]:
    """``RadialError`` numbers of ``model`` on ``ds`` (mm if the pixel size is known)."""
    pred = model.predict(ds.images, batch_size)
    metric = RadialError()
    metric.update(pred, ds.landmarks, ds.scales, ds.pixel_size_mm)
    return metric.aggregate()


def _check_settings(train: LandmarkDataset, val: LandmarkDataset, epochs: int,
                    batch_size: int, lr: float, weight_decay: float, heatmap_loss: str,
                    minutes: float | None) -> None:
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("landmark training needs non-empty train and validation splits")
    if train.channels != val.channels or train.num_landmarks != val.num_landmarks \
            or train.size != val.size:
        raise ConfigError("train and validation splits differ in channels, landmarks or size")
    if epochs < 1 or batch_size < 1 or lr <= 0 or weight_decay < 0:
        raise ConfigError("epochs and batch_size must be >= 1, lr > 0 and weight_decay >= 0")
    if heatmap_loss not in HEATMAP_LOSSES:
        raise ConfigError(f"heatmap_loss must be one of {', '.join(HEATMAP_LOSSES)}")
    if minutes is not None and minutes <= 0:
        raise ConfigError("minutes must be positive")


class _Steps:
    """The training split's batches (seeded augmentation) and their loss: the landmark loss of
    the model's output, or the robust ``objective``'s, on targets encoded per batch."""

    def __init__(self, train: LandmarkDataset, model: LandmarkModel, loss_fn: LandmarkLoss,
                 radius: float, generator: torch.Generator | None, objective: Any) -> None:
        self.images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
        self.points = torch.from_numpy(train.landmarks.astype(np.float32))
        self.model, self.loss_fn, self.objective = model, loss_fn, objective
        self.size, self.radius, self.generator = train.size, radius, generator

    def plain(self, batch_size: int) -> Iterator[tuple[torch.Tensor, Any]]:
        """(pixels, targets) in order without augmentation: the objective's calibration."""
        device = self.model.device
        for i in range(0, len(self.images), batch_size):
            yield (self.images[i:i + batch_size].float().div(255).to(device),
                   encode(self.points[i:i + batch_size].to(device), self.size, self.radius))

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of the items ``idx`` and their per-item terms."""
        x, pts = self.images[idx].float() / 255.0, self.points[idx]
        if self.generator is not None:
            x, pts = augment_affine(x, pts, self.generator)
        device = self.model.device
        heat, offsets, mask = encode(pts.to(device), self.size, self.radius)
        if self.objective is not None:
            loss, terms = self.objective.loss(self.model, x.to(device), (heat, offsets, mask),
                                              idx)
            assert terms is not None
        else:
            terms = self.loss_fn(self.model(x.to(device)), heat, offsets, mask)
            loss = terms["total"].mean()
        return loss, {name: terms[name] for name in ("total", "heatmap", "offset")}


def train_landmark_model(train: LandmarkDataset, val: LandmarkDataset, epochs: int = 60,
                         batch_size: int = 8, lr: float = 1e-3, weight_decay: float = 1e-4,
                         radius: float | None = None, heatmap_loss: str = "bce",
                         heatmap_weight: float = 2.0, seed: int = 0,
                         features: tuple[int, ...] | None = None, width: int | None = None,
                         device: torch.device | str = "cpu", augment: bool = True,
                         cosine: bool = True, minutes: float | None = None,
                         robust: RobustConfig | None = None,
                         init: dict[str, torch.Tensor] | None = None,
                         state_dir: str | Path | None = None
                         ) -> tuple[LandmarkModel, list[dict[str, Any]]]:
    """Train a multi-task landmark U-Net; return the best-validation-MRE model and the history.

    ``radius=None`` is the authors' 0.05 x max(H, W) (10 px at 200x160). ``width`` scales the
    default ``features`` of ``landmark_unet`` (both None: the default). ``minutes`` stops after
    the epoch past which the next would end beyond the budget (``loop.train_epochs``); at least
    one epoch runs. Each history row: epoch, train loss terms, val MRE / SDR@2, lr, wall and CPU
    seconds. ``robust`` chooses a robust objective (``training.robust``; None: standard),
    ``init`` starts from these network weights, ``state_dir`` saves a resumable state after each
    epoch and continues from one (with ``minutes`` the budget counts the time before the stop).
    A robust run keeps the epoch ``robust.keep`` says (``training.robust.selection``; the last
    history row's ``kept`` says which); ``robust.delta == "auto"`` searches D first
    (``training.robust.search``; the last row's ``delta_search``).
    """
    _check_settings(train, val, epochs, batch_size, lr, weight_decay, heatmap_loss, minutes)
    if robust is not None and robust.searches_delta:
        same = dict(batch_size=batch_size, lr=lr, weight_decay=weight_decay, radius=radius,
                    heatmap_loss=heatmap_loss, heatmap_weight=heatmap_weight, seed=seed,
                    features=None if features is None else tuple(features), width=width,
                    augment=augment, cosine=cosine)

        def candidate(cfg: RobustConfig, n: int, folder: Path | None) -> list[dict[str, Any]]:
            return train_landmark_model(train, val, epochs=n, device=device, robust=cfg,
                                        init=init, state_dir=folder, **same)[1]

        chosen, record = search_delta(
            robust, epochs=epochs, shape=(train.channels, *train.size), init=init,
            settings={**same, "epochs": epochs, "dataset": train.spec, "n": len(train),
                      "state": STATE_FORMAT}, state_dir=state_dir, train=candidate)
        model, history = train_landmark_model(train, val, epochs=epochs, device=device,
                                              minutes=minutes, robust=chosen, init=init,
                                              state_dir=state_dir, **same)
        history[-1]["delta_search"] = record
        return model, history
    k = train.num_landmarks
    radius = float(radius) if radius is not None else default_radius(train.size)
    seed_everything(seed)
    net_kwargs: dict[str, Any] = {}
    if features is not None:
        net_kwargs["features"] = tuple(features)
    if width is not None:
        net_kwargs["width"] = int(width)
    mean, std = channel_stats(train)
    model = LandmarkModel(landmark_unet(train.channels, k, **net_kwargs), mean, std, k, radius,
                          torch.device(device), heatmap_loss=heatmap_loss,
                          heatmap_weight=heatmap_weight)
    start_from(model.model, init)
    loss_fn = LandmarkLoss(heatmap_loss, heatmap_weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    # targets travel as (heat, offsets, mask); the objective's terms are the loss's own terms
    spec = LossSpec(terms=lambda out, t: loss_fn(out, *t))
    objective = build_objective(robust, spec, len(train), epochs, seed)
    batches = _Steps(train, model, loss_fn, radius, gen if augment else None, objective)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "wd": weight_decay,
                "radius": radius, "heatmap": [heatmap_loss, heatmap_weight], "seed": seed,
                "net": net_kwargs, "augment": augment, "cosine": cosine, "minutes": minutes,
                "dataset": train.spec, "n": len(train), "state": STATE_FORMAT,
                "robust": None if robust is None else robust.as_dict()}
    calibrate = None
    if objective is not None and objective.needs_calibration:
        calibrate = partial(objective.calibrate, model, batches.plain(batch_size))

    selection = selection_for(robust, "val MRE (lower is better)", (train.channels, *train.size),
                              seed)

    def review(end: EpochEnd) -> Judgement:
        metrics = evaluate_landmarks(model, val)
        key = (-metrics["mre"],)  # lower MRE is better
        row = {**end.extra, "epoch": end.epoch, "train_loss": end.train["total"],
               "train_heatmap": end.train["heatmap"], "train_offset": end.train["offset"],
               "val_mre": metrics["mre"], "val_sdr_2": metrics["sdr"]["2.0"],
               "unit": metrics["unit"], "lr": end.lr, "seconds": end.seconds(),
               "cpu_seconds": end.cpu_seconds(), "improved": end.improves(key)}
        robust_key = None
        if end.attack:
            assert selection is not None
            under, robust_key = _attacked(model, val, spec, selection, radius)
            row.update(under)
        return Judgement(row, key, metrics, {"val_mre": f"{metrics['mre']:.2f}{metrics['unit']}"},
                         robust_key)

    done = train_epochs(model, model.model, len(train), epochs=epochs, batch_size=batch_size,
                        optimizer=opt, scheduler=sched, minutes=minutes,
                        shuffle=torch_shuffle(gen), batch_loss=batches.loss, review=review,
                        desc="train landmarks", objective=objective,
                        resume=EpochState(state_dir, settings, init), generators=(gen,),
                        calibrate=calibrate, selection=selection)
    if objective is not None and state_dir is not None:
        objective.save(state_dir)
    return model, done.history


def _attacked(model: LandmarkModel, val: LandmarkDataset, spec: LossSpec, selection: Selection,
              radius: float, batch_size: int = 16) -> tuple[dict[str, Any], tuple[float, ...]]:
    """The validation split under the cheap attack (clean images, encoded true landmarks):
    its row entries and its key (-MRE)."""
    assert selection.attack is not None
    device = model.device
    x = torch.from_numpy(val.images).permute(0, 3, 1, 2).float() / 255.0
    pts = torch.from_numpy(val.landmarks.astype(np.float32))
    batches = ((x[i:i + batch_size].to(device),
                encode(pts[i:i + batch_size].to(device), val.size, radius),
                range(i, min(i + batch_size, len(val)))) for i in range(0, len(val), batch_size))
    adv = selection.attack.run(model, batches, lambda t: TermScore(spec, t))
    metric = RadialError()
    metric.update(model.predict(adv), val.landmarks, val.scales, val.pixel_size_mm)
    scores = metric.aggregate()
    return ({"val_attacked_mre": scores["mre"], "val_attacked_sdr_2": scores["sdr"]["2.0"]},
            (-scores["mre"],))
