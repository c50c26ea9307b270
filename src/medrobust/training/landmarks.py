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

import copy
import math
import time
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
from medrobust.training.loop import start_from
from medrobust.training.resume import EpochState
from medrobust.training.robust import LossSpec, RobustConfig, build_objective
from medrobust.utils.progress import progress
from medrobust.utils.seeding import seed_everything


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
    default ``features`` of ``landmark_unet`` (both None: the default). ``minutes`` stops before an
    epoch that would end past the budget (estimated from the epochs so far); at least one epoch runs.
    Each history row: epoch, train loss terms, val MRE / SDR@2, lr, wall and CPU seconds.
    ``robust`` chooses a robust objective (``training.robust``; None: standard, whose path is
    unchanged), ``init`` starts from these network weights, ``state_dir`` saves a resumable
    state after each epoch and continues from one (with ``minutes`` the budget counts the time
    before the stop too).
    """
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
    h, w = train.size
    k = train.num_landmarks
    radius = float(radius) if radius is not None else default_radius((h, w))
    seed_everything(seed)
    device = torch.device(device)
    net_kwargs: dict[str, Any] = {}
    if features is not None:
        net_kwargs["features"] = tuple(features)
    if width is not None:
        net_kwargs["width"] = int(width)
    mean, std = channel_stats(train)
    model = LandmarkModel(landmark_unet(train.channels, k, **net_kwargs), mean, std, k, radius,
                          device, heatmap_loss=heatmap_loss, heatmap_weight=heatmap_weight)
    if init is not None:
        start_from(model.model, init)
    loss_fn = LandmarkLoss(heatmap_loss, heatmap_weight)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps) if cosine else None
    gen = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()
    p_all = torch.from_numpy(train.landmarks.astype(np.float32))

    # targets travel as (heat, offsets, mask); the objective's terms are the loss's own terms
    spec = LossSpec(terms=lambda out, t: loss_fn(out, *t))
    objective = build_objective(robust, spec, len(train), epochs, seed)
    settings = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "wd": weight_decay,
                "radius": radius, "heatmap": [heatmap_loss, heatmap_weight], "seed": seed,
                "net": net_kwargs, "augment": augment, "cosine": cosine, "minutes": minutes,
                "dataset": train.spec, "n": len(train),
                "robust": None if robust is None else robust.as_dict()}
    resume = EpochState(state_dir, settings, init)

    history: list[dict[str, Any]] = []
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    first, offset, cpu_offset = 1, 0.0, 0.0
    saved = resume.restore(model=model.model, optimizer=opt, scheduler=sched, generators=[gen],
                           objective=objective)
    if saved is not None:
        history = saved.info["history"]
        best = (saved.info["best_mre"], saved.info["best_epoch"], saved.best_model)
        first = saved.epoch + 1
        offset, cpu_offset = history[-1]["seconds"], history[-1]["cpu_seconds"]
    elif objective is not None and objective.needs_calibration:
        # only for a fresh start: a resumed objective brings the xi it was calibrated with
        objective.calibrate(model, ((x_all[i:i + batch_size].float().div(255).to(device),
                                     encode(p_all[i:i + batch_size].to(device), (h, w), radius))
                                    for i in range(0, len(train), batch_size)))
    start, cpu_start = time.perf_counter() - offset, time.process_time() - cpu_offset
    bar = progress(total=(epochs - first + 1) * steps, desc="train landmarks")
    for epoch in range(first, epochs + 1):
        elapsed = time.perf_counter() - start
        if minutes is not None and history and elapsed + elapsed / len(history) > minutes * 60:
            break
        if objective is not None:
            objective.begin_epoch(epoch)
        model.train()
        order = torch.randperm(len(train), generator=gen)
        sums = {"total": 0.0, "heatmap": 0.0, "offset": 0.0}
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = x_all[idx].float() / 255.0
            pts = p_all[idx]
            if augment:
                x, pts = augment_affine(x, pts, gen)
            heat, offsets, mask = encode(pts.to(device), (h, w), radius)
            if objective is not None:
                loss, robust_terms = objective.loss(model, x.to(device), (heat, offsets, mask), idx)
                assert robust_terms is not None
                terms = dict(robust_terms)
            else:
                terms = loss_fn(model(x.to(device)), heat, offsets, mask)
                loss = terms["total"].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            for name in sums:
                sums[name] += float(terms[name].detach().sum())
            bar.update(1)
        model.eval()
        extra = objective.end_epoch() if objective is not None else {}
        metrics = evaluate_landmarks(model, val)
        row = {**extra, "epoch": epoch, "train_loss": sums["total"] / len(train),
               "train_heatmap": sums["heatmap"] / len(train), "train_offset": sums["offset"] / len(train),
               "val_mre": metrics["mre"], "val_sdr_2": metrics["sdr"]["2.0"], "unit": metrics["unit"],
               "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - start,
               "cpu_seconds": time.process_time() - cpu_start}
        improved = best is None or metrics["mre"] < best[0]
        row["improved"] = improved
        history.append(row)
        if improved:
            best = (metrics["mre"], epoch, copy.deepcopy(model.model.state_dict()))
        assert best is not None
        resume.save_epoch(epoch, model=model.model, optimizer=opt, scheduler=sched,
                          best_model=best[2], generators=[gen], objective=objective,
                          history=history, best_mre=best[0], best_epoch=best[1])
        bar.set_postfix(val_mre=f"{metrics['mre']:.2f}{metrics['unit']}")
    bar.close()
    assert best is not None
    model.model.load_state_dict(best[2])
    model.eval()
    if objective is not None and state_dir is not None:
        objective.save(state_dir)
    return model, history
