"""Training and evaluating the CenterNet detector on a ``DetectionDataset``.

Inputs are pixel space [0, 1]; the network sees (x - mean) / std with per-channel statistics of
the training images, returned in ``history`` (and used by ``predict_detections``) so the task's
pixel-space wrapper can keep normalisation inside, as the classifier does. Everything random
(initialisation, shuffling, augmentation) comes from ``seed``; with ``minutes`` the run also
stops on the wall clock, and the cosine schedule follows elapsed time so the learning rate
still anneals inside the budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medrobust.data.voc import DetectionDataset
from medrobust.errors import ConfigError
from medrobust.metrics.detection import MeanAveragePrecision
from medrobust.models.centernet import centernet
from medrobust.models.centernet_codec import decode, encode
from medrobust.models.detector import Detector
from medrobust.training.detection_loss import TERMS, DetectionLoss
from medrobust.training.loop import EpochEnd, Judgement, start_from, torch_shuffle, train_epochs
from medrobust.training.resume import EpochState
from medrobust.training.robust import LossSpec, RobustConfig, build_objective
from medrobust.training.robust.objectives import TermScore
from medrobust.training.robust.search import search_delta
from medrobust.training.robust.selection import Selection, selection_for
from medrobust.utils.seeding import seed_everything

Boxes = list[torch.Tensor]
#: part of the resume key: states the epoch loop of before ``loop.train_epochs`` wrote hold
#: other entries, so they are refused as another run's rather than misread
STATE_FORMAT = 2


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 (N, H, W, C) images on the [0, 1] scale."""
    x = images.reshape(-1, images.shape[-1]).astype(np.float64) / 255.0
    return x.mean(0).tolist(), np.maximum(x.std(0), 1e-3).tolist()


def augment_detection(x: torch.Tensor, boxes: Boxes, generator: torch.Generator,
                      scale: tuple[float, float] = (0.8, 1.2), shift: float = 0.1,
                      jitter: float = 0.15, min_visible: float = 0.4
                      ) -> tuple[torch.Tensor, Boxes, list[torch.Tensor]]:
    """A new augmented copy of the [0, 1] batch (N, C, H, W), its boxes, and which boxes stay.

    Per image, seeded by ``generator``: horizontal and vertical flips, a transpose when square
    (cells have no orientation), a zoom by ``scale`` about the centre plus a shift up to
    ``shift`` of the side (zeros outside), and brightness/contrast jitter. Boxes (xyxy) follow
    the geometry exactly, are clipped to the image and dropped when less than ``min_visible``
    of their area stays in view; ``keeps[i]`` (bool, n_i) filters the labels the same way.
    Inputs are not modified.
    """
    n, _, h, w = x.shape
    r = torch.rand(n, 8, generator=generator)
    flip_h, flip_v = r[:, 0] < 0.5, r[:, 1] < 0.5
    turn = (r[:, 2] < 0.5) & (h == w)
    s = scale[0] + (scale[1] - scale[0]) * r[:, 3]
    tx = (2 * r[:, 4] - 1) * shift * w
    ty = (2 * r[:, 5] - 1) * shift * h
    bright = 1 + (2 * r[:, 6] - 1) * jitter
    contrast = 1 + (2 * r[:, 7] - 1) * jitter
    # Geometry: flips/turn on the tensor, then one affine resample for zoom + shift.
    out = x.clone()
    out[flip_h] = out[flip_h].flip(-1)
    out[flip_v] = out[flip_v].flip(-2)
    out[turn] = out[turn].transpose(-1, -2)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    theta[:, 0, 2] = -(2 * tx / w) / s
    theta[:, 1, 2] = -(2 * ty / h) / s
    grid = F.affine_grid(theta.to(x), list(out.shape), align_corners=False)
    out = F.grid_sample(out, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = ((out - mean) * contrast.view(-1, 1, 1, 1).to(x) + mean) * bright.view(-1, 1, 1, 1).to(x)
    out = out.clamp(0, 1)
    new_boxes, keeps = [], []
    for i, b in enumerate(boxes):
        b = b.clone()
        if flip_h[i]:
            b[:, [0, 2]] = w - b[:, [2, 0]]
        if flip_v[i]:
            b[:, [1, 3]] = h - b[:, [3, 1]]
        if turn[i]:
            b = b[:, [1, 0, 3, 2]]
        b[:, 0::2] = s[i] * (b[:, 0::2] - w / 2) + w / 2 + tx[i]
        b[:, 1::2] = s[i] * (b[:, 1::2] - h / 2) + h / 2 + ty[i]
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        b[:, 0::2] = b[:, 0::2].clamp(0, w)
        b[:, 1::2] = b[:, 1::2].clamp(0, h)
        visible = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = (visible > 0) & (visible >= min_visible * area)
        new_boxes.append(b[keep])
        keeps.append(keep)
    return out, new_boxes, keeps


def _to_input(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0


def _forward(model: nn.Module, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    x = ((x - mean) / std).contiguous(memory_format=torch.channels_last)
    return model(x)


@torch.no_grad()
def predict_detections(model: nn.Module, images: np.ndarray | torch.Tensor,
                       mean: Sequence[float], std: Sequence[float], batch_size: int = 16,
                       device: str = "cpu", k: int = 100, score_threshold: float = 0.01
                       ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image (boxes xyxy in input pixels, scores, labels) for uint8 (N, H, W, C) images,
    or a float [0, 1] (N, C, H, W) tensor (adversarial images, which uint8 would round)."""
    was_training = model.training
    model.eval()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
    out: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        x = (chunk.float() if isinstance(chunk, torch.Tensor) else _to_input(chunk)).to(device)
        dets = decode(_forward(model, x, m, s), k=k, score_threshold=score_threshold,
                      image_size=tuple(x.shape[-2:]))
        out.extend((b.cpu().numpy(), sc.cpu().numpy(), lab.cpu().numpy()) for b, sc, lab in dets)
    model.train(was_training)
    return out


def evaluate_detector(model: nn.Module, dataset: DetectionDataset, mean: Sequence[float],
                      std: Sequence[float], batch_size: int = 16, device: str = "cpu",
                      k: int = 100, score_threshold: float = 0.01,
                      images: torch.Tensor | None = None) -> dict[str, Any]:
    """COCO mAP@0.5:0.95, mAP@0.5 and per-class AP of ``model`` on ``dataset`` (``images``:
    float [0, 1] (N, C, H, W) versions of its images to score instead, e.g. attacked ones)."""
    dets = predict_detections(model, dataset.images if images is None else images, mean, std,
                              batch_size, device, k, score_threshold)
    metric = MeanAveragePrecision(dataset.class_names, max_detections=k)
    metric.update([d[0] for d in dets], [d[1] for d in dets], [d[2] for d in dets],
                  dataset.boxes, dataset.labels, dataset.difficult)
    return metric.aggregate()


def _targets(boxes: Boxes, labels: list[torch.Tensor], image_size: tuple[int, int],
             num_classes: int, stride: int, device: str) -> dict[str, torch.Tensor]:
    """Encoded targets for images of ``image_size``: the output map is the size after two
    stride-2 stem convolutions (kernel 3, padding 1), ceil(ceil(side / 2) / 2) for stride 4,
    so robust objectives can encode once per batch before any forward pass."""
    out = tuple(int(v) for v in image_size)
    for _ in range(round(math.log2(stride))):
        out = tuple(math.ceil(v / 2) for v in out)
    return encode([b.to(device) for b in boxes], [lab.to(device) for lab in labels],
                  (out[0], out[1]), num_classes, stride)


def _lr_factor(progress_fraction: float, warmup: float) -> float:
    if progress_fraction < warmup:
        return max(progress_fraction / warmup, 0.02)
    p = (progress_fraction - warmup) / max(1 - warmup, 1e-9)
    return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))


def _lr_at(step: int, seconds: float, *, lr: float, warmup: float, minutes: float | None,
           total_steps: int) -> float:
    """The rate for step ``step`` (counted from 0) after ``seconds`` of the run: the schedule
    follows the steps done, or the share of the time budget spent when that is further."""
    done = step / total_steps
    if minutes is not None:
        done = max(done, seconds / (60.0 * minutes))
    return lr * _lr_factor(done, warmup)


def _check_settings(train: DetectionDataset, val: DetectionDataset, epochs: int,
                    batch_size: int, lr: float, eval_every: int, minutes: float | None) -> None:
    if epochs < 1 or batch_size < 1 or lr <= 0 or eval_every < 1:
        raise ConfigError("epochs, batch_size and eval_every must be >= 1 and lr > 0")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"minutes must be positive, got {minutes}")
    if train.class_names != val.class_names or train.channels != val.channels:
        raise ConfigError("train and val must share classes and channels")


class _Steps:
    """The training split's batches (seeded augmentation) and their loss: CenterNet's on the
    normalised input, or the robust ``objective``'s through the pixel-space ``wrapper``."""

    def __init__(self, train: DetectionDataset, model: nn.Module, criterion: DetectionLoss,
                 mean: Sequence[float], std: Sequence[float], device: str,
                 generator: torch.Generator | None, wrapper: Detector | None = None,
                 objective: Any = None) -> None:
        self.images = torch.from_numpy(train.images).permute(0, 3, 1, 2)  # uint8 view, kept
        self.boxes = [torch.from_numpy(b) for b in train.boxes]
        self.labels = [torch.from_numpy(lab) for lab in train.labels]
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.model, self.criterion, self.num_classes = model, criterion, train.num_classes
        self.device, self.generator = device, generator
        self.wrapper, self.objective = wrapper, objective

    def targets(self, boxes: Boxes, labels: list[torch.Tensor], size: tuple[int, ...]
                ) -> dict[str, torch.Tensor]:
        return _targets(boxes, labels, (size[0], size[1]), self.num_classes, self.model.stride,
                        self.device)

    def plain(self, batch_size: int) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        """(pixels, targets) in order without augmentation: the objective's calibration."""
        for i in range(0, len(self.images), batch_size):
            yield (self.images[i:i + batch_size].float().div(255.0).to(self.device),
                   self.targets(self.boxes[i:i + batch_size], self.labels[i:i + batch_size],
                                tuple(self.images.shape[-2:])))

    def loss(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean loss of the items ``idx`` and their per-item terms."""
        x = self.images[idx].float().div(255.0)
        boxes = [self.boxes[i] for i in idx.tolist()]
        labels = [self.labels[i] for i in idx.tolist()]
        if self.generator is not None:
            x, boxes, keeps = augment_detection(x, boxes, self.generator)
            labels = [lab[k] for lab, k in zip(labels, keeps, strict=True)]
        x = x.to(self.device)
        if self.objective is not None:
            assert self.wrapper is not None
            loss, terms = self.objective.loss(self.wrapper, x, self.targets(
                boxes, labels, tuple(x.shape[-2:])), idx)
            assert terms is not None
        else:
            outputs = _forward(self.model, x, self.mean, self.std)
            terms = self.criterion(outputs, encode(
                [b.to(self.device) for b in boxes], [lab.to(self.device) for lab in labels],
                tuple(outputs.shape[-2:]), self.num_classes, self.model.stride))
            loss = terms["total"].mean()
        return loss, {key: terms[key] for key in (*TERMS, "total")}


def train_detector(train: DetectionDataset, val: DetectionDataset, epochs: int = 60,
                   batch_size: int = 16, lr: float = 2e-3, seed: int = 0, width: int = 16,
                   device: str = "cpu", augment: bool = True, minutes: float | None = None,
                   weight_decay: float = 1e-4, eval_every: int = 1, warmup: float = 0.03,
                   model_kwargs: dict[str, Any] | None = None,
                   robust: RobustConfig | None = None,
                   init: dict[str, torch.Tensor] | None = None,
                   state_dir: str | Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Train a CenterNet on ``train``; keep the weights of the best validation mAP@0.5:0.95.

    AdamW with linear warm-up then cosine decay over ``epochs`` (or over ``minutes`` of wall
    clock, whichever runs out first; the run stops as ``loop.train_epochs`` says), CenterNet's
    loss (heatmap + 0.1 size + offset), seeded shuffling and augmentation (flips, transpose,
    zoom/shift with exact boxes, light colour jitter). Validation every ``eval_every`` epochs and
    at the last one. Returns the model (in eval mode, best weights) and a history with per-epoch
    losses and val mAP, ``mean``/``std``. ``robust`` chooses a robust objective
    (``training.robust``), whose attacks and losses go through the pixel-space ``Detector``
    wrapper (noise added to [0,1] pixels after augmentation). ``init`` starts from these network
    weights; ``state_dir`` saves a resumable state after each epoch and continues from one (with
    ``minutes`` the schedule follows the wall clock, so a resumed run is reproducible only
    without it). A robust run keeps the epoch ``robust.keep`` says
    (``training.robust.selection``; the last epoch row's ``kept`` says which);
    ``robust.delta == "auto"`` searches D first (``training.robust.search``;
    ``history["delta_search"]`` and the last row's).
    """
    _check_settings(train, val, epochs, batch_size, lr, eval_every, minutes)
    if robust is not None and robust.searches_delta:
        same = dict(batch_size=batch_size, lr=lr, seed=seed, width=width, augment=augment,
                    weight_decay=weight_decay, eval_every=eval_every, warmup=warmup,
                    model_kwargs=model_kwargs)

        def candidate(cfg: RobustConfig, n: int, folder: Path | None) -> list[dict[str, Any]]:
            return train_detector(train, val, epochs=n, device=device, robust=cfg, init=init,
                                  state_dir=folder, **same)[1]["epochs"]

        chosen, record = search_delta(
            robust, epochs=epochs, shape=(train.channels, *train.images.shape[1:3]), init=init,
            settings={**same, "epochs": epochs, "dataset": train.spec, "n": len(train),
                      "state": STATE_FORMAT}, state_dir=state_dir, train=candidate)
        net, history = train_detector(train, val, epochs=epochs, device=device, minutes=minutes,
                                      robust=chosen, init=init, state_dir=state_dir, **same)
        history["epochs"][-1]["delta_search"] = history["delta_search"] = record
        return net, history
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    mean, std = channel_stats(train.images)
    model = centernet(train.channels, train.num_classes, width=width, **(model_kwargs or {}))
    model = model.to(device).to(memory_format=torch.channels_last)
    start_from(model, init)
    criterion = DetectionLoss(train.num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "width": width,
              "augment": augment, "minutes": minutes, "weight_decay": weight_decay,
              "model_kwargs": model_kwargs or {}}
    wrapper, objective = None, None
    if robust is not None and robust.active:
        # the pixel-space wrapper shares the network: normalisation stays inside it
        wrapper = Detector(model, mean=mean, std=std, class_names=train.class_names,
                           device=device)
        objective = build_objective(robust, LossSpec(terms=criterion), len(train), epochs, seed)
    steps = _Steps(train, model, criterion, mean, std, device, generator if augment else None,
                   wrapper, objective)
    calibrate = None
    if objective is not None and objective.needs_calibration:
        calibrate = partial(objective.calibrate, wrapper, steps.plain(batch_size))
    selection = None if wrapper is None else selection_for(
        robust, "val mAP@0.5:0.95", (train.channels, *train.images.shape[1:3]), seed)
    settings = {**config, "dataset": train.spec, "n": len(train), "warmup": warmup,
                "eval_every": eval_every, "state": STATE_FORMAT,
                "robust": None if robust is None else robust.as_dict()}
    lr_at = partial(_lr_at, lr=lr, warmup=warmup, minutes=minutes,
                    total_steps=epochs * math.ceil(len(train) / batch_size))

    def review(end: EpochEnd) -> Judgement:
        row: dict[str, Any] = {"epoch": end.epoch, "lr": end.lr,
                               **{f"loss_{k}": v for k, v in end.train.items()}, **end.extra}
        key, scores, robust_key = None, {}, None
        if end.epoch % eval_every == 0 or end.final:
            scores = evaluate_detector(model, val, mean, std, batch_size, device)
            row.update(val_map=scores["map"], val_map50=scores["map50"])
            key = (scores["map"],)
            if end.attack:
                assert wrapper is not None and selection is not None
                under, robust_key = _attacked(wrapper, steps, val, selection, batch_size)
                row.update(under)
        row["seconds"] = end.epoch_seconds()
        return Judgement(row, key, scores, {"loss": f"{row['loss_total']:.3f}",
                                            "val_map": f"{row.get('val_map', float('nan')):.3f}"},
                         robust_key)

    done = train_epochs(model if wrapper is None else wrapper, model, len(train), epochs=epochs,
                        batch_size=batch_size, optimizer=optimizer, lr_at=lr_at, minutes=minutes,
                        shuffle=torch_shuffle(generator), batch_loss=steps.loss, review=review,
                        desc="train detector", objective=objective,
                        resume=EpochState(state_dir, settings, init), generators=(generator,),
                        calibrate=calibrate, selection=selection)
    history = {"epochs": done.history, "mean": mean, "std": std, "best_epoch": done.best_epoch,
               "best_val_map": done.best_metrics["map"],
               "stopped_by": "epochs" if done.stopped is None else "minutes", "config": config,
               "seconds": done.seconds}
    if objective is not None:
        history["robust"] = objective.save(state_dir) if state_dir is not None \
            else objective.describe()
    return model, history


def _attacked(wrapper: Detector, steps: _Steps, val: DetectionDataset, selection: Selection,
              batch_size: int) -> tuple[dict[str, Any], tuple[float, ...]]:
    """The validation split under the cheap attack (clean images, encoded true boxes): its
    row entries and its key (mAP@0.5:0.95). ``steps`` encodes targets as training does."""
    assert selection.attack is not None
    x = _to_input(val.images)
    boxes = [torch.from_numpy(b) for b in val.boxes]
    labels = [torch.from_numpy(lab) for lab in val.labels]
    size = tuple(x.shape[-2:])
    batches = ((x[i:i + batch_size].to(steps.device),
                steps.targets(boxes[i:i + batch_size], labels[i:i + batch_size], size),
                range(i, min(i + batch_size, len(val)))) for i in range(0, len(val), batch_size))
    spec = LossSpec(terms=steps.criterion)
    adv = selection.attack.run(wrapper, batches, lambda t: TermScore(spec, t))
    scores = evaluate_detector(steps.model, val, steps.mean.flatten().tolist(),
                               steps.std.flatten().tolist(), batch_size, steps.device,
                               images=adv)
    return {"val_attacked_map": scores["map"], "val_attacked_map50": scores["map50"]}, \
        (scores["map"],)
