"""The epoch loop every trainer shares: AdamW with a one-cycle schedule, seeded shuffling, a
progress bar, and keeping the weights of the best validation epoch.

Trainers differ only in how a batch becomes a loss and how an epoch is judged, so they pass
those two callables; everything else (and its determinism) lives here once.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.utils.progress import progress
from medrobust.utils.validation import check_range


@dataclass
class Judgement:
    """One epoch's validation: the history row, the selection key (higher is better), the
    metrics kept for the best epoch, and what the progress bar shows."""

    row: dict[str, float]
    key: tuple[float, ...]
    metrics: dict[str, Any]
    postfix: dict[str, str]


@dataclass
class LoopResult:
    history: list[dict[str, float]]
    best_epoch: int
    best_metrics: dict[str, Any]
    seconds: float
    cpu_seconds: float


def check_fit_settings(epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """The settings every trainer hands to ``fit``, validated in one place."""
    check_range("epochs", epochs, 1)
    check_range("batch_size", batch_size, 1)
    check_range("lr", lr, 0, low_inclusive=False)
    check_range("weight_decay", weight_decay, 0)


def torch_shuffle(generator: torch.Generator) -> Callable[[int], torch.Tensor]:
    """Epoch orders from a seeded torch generator."""
    return lambda n: torch.randperm(n, generator=generator)


def fit(wrapper: nn.Module, model: nn.Module, n_train: int, *, epochs: int, batch_size: int,
        lr: float, weight_decay: float, shuffle: Callable[[int], Any],
        batch_loss: Callable[[Any], torch.Tensor], judge: Callable[[], Judgement],
        desc: str) -> LoopResult:
    """Train ``wrapper`` (whose ``model`` holds the weights) and load the best epoch's weights.

    ``shuffle(n)`` gives each epoch's order of the n training items (a seeded permutation);
    ``batch_loss(indices)`` returns the mean loss of those items (drawing any augmentation from
    the same seeded source); ``judge()`` validates the model in eval mode. Ties on the key keep
    the earlier epoch.
    """
    opt = torch.optim.AdamW(wrapper.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, int(np.ceil(n_train / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    history: list[dict[str, float]] = []
    best: tuple[tuple[float, ...], int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    start, cpu_start = time.perf_counter(), time.process_time()
    bar = progress(total=epochs * steps, desc=desc)
    for epoch in range(1, epochs + 1):
        wrapper.train()
        order = shuffle(n_train)
        total = 0.0
        for i in range(steps):
            idx = order[i * batch_size:(i + 1) * batch_size]
            loss = batch_loss(idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
            bar.update(1)
        wrapper.eval()
        verdict = judge()
        history.append({"epoch": epoch, "train_loss": total / n_train, **verdict.row,
                        "seconds": time.perf_counter() - start,
                        "cpu_seconds": time.process_time() - cpu_start})
        bar.set_postfix(**verdict.postfix)
        if best is None or verdict.key > best[0]:
            best = (verdict.key, epoch, verdict.metrics, copy.deepcopy(model.state_dict()))
    bar.close()
    assert best is not None
    model.load_state_dict(best[3])
    wrapper.eval()
    return LoopResult(history, best[1], best[2], time.perf_counter() - start,
                      time.process_time() - cpu_start)
