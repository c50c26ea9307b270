"""The epoch loop every trainer shares: AdamW with a one-cycle schedule, seeded shuffling, a
progress bar, and keeping the weights of the best validation epoch.

Trainers differ only in how a batch becomes a loss and how an epoch is judged, so they pass
those two callables; everything else (and its determinism) lives here once.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.training.resume import EpochState, to_json
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


def start_from(module: nn.Module, init: dict[str, torch.Tensor] | None) -> None:
    """Load the weights fine-tuning starts from (a standard checkpoint); a network of another
    shape is one clear line, not PyTorch's list of every mismatched tensor."""
    if init is None:
        return
    try:
        module.load_state_dict(init)
    except RuntimeError as exc:
        first = next((ln.strip() for ln in str(exc).splitlines() if "mismatch" in ln
                      or "Missing" in ln or "Unexpected" in ln), str(exc).splitlines()[0])
        raise ConfigError("the checkpoint fine-tuning starts from (--xi-from) holds another "
                          f"network than the one being trained ({first}); train with the "
                          "--model and --width it was trained with, on data with its channels "
                          "and classes") from None


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
        desc: str, objective: Any = None, resume: EpochState | None = None,
        generators: tuple[torch.Generator, ...] = (),
        calibrate: Callable[[], Any] | None = None) -> LoopResult:
    """Train ``wrapper`` (whose ``model`` holds the weights) and load the best epoch's weights.

    ``shuffle(n)`` gives each epoch's order of the n training items (a seeded permutation);
    ``batch_loss(indices)`` returns the mean loss of those items (drawing any augmentation from
    the same seeded source); ``judge()`` validates the model in eval mode. Ties on the key keep
    the earlier epoch. ``objective`` (a robust objective that ``batch_loss`` uses) is told where
    each epoch starts and ends; its summary joins the history row. With ``resume`` the state
    after each epoch is saved (weights, optimizer, scheduler, best epoch, history, the RNG of
    ``generators`` and torch, the objective) and a saved state is continued from.
    ``calibrate()`` (the objective's xi calibration, a full pass over the training data) runs
    before the first epoch only when nothing was resumed: a resumed objective brings its own.
    """
    opt = torch.optim.AdamW(wrapper.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, int(np.ceil(n_train / batch_size)))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    history: list[dict[str, Any]] = []
    best: tuple[tuple[float, ...], int, dict[str, Any], dict[str, torch.Tensor]] | None = None
    first, offset, cpu_offset = 1, 0.0, 0.0
    saved = None if resume is None else resume.restore(
        model=model, optimizer=opt, scheduler=sched, generators=generators, objective=objective)
    if saved is not None:
        info = saved.info
        history = info["history"]
        best = (tuple(info["best_key"]), info["best_epoch"], info["best_metrics"],
                saved.best_model)
        first = saved.epoch + 1
        offset, cpu_offset = history[-1]["seconds"], history[-1]["cpu_seconds"]
    elif calibrate is not None:
        calibrate()
    start, cpu_start = time.perf_counter() - offset, time.process_time() - cpu_offset
    bar = progress(total=(epochs - first + 1) * steps, desc=desc)
    for epoch in range(first, epochs + 1):
        if objective is not None:
            objective.begin_epoch(epoch)
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
        extra = objective.end_epoch() if objective is not None else {}
        verdict = judge()
        history.append({"epoch": epoch, "train_loss": total / n_train, **verdict.row, **extra,
                        "seconds": time.perf_counter() - start,
                        "cpu_seconds": time.process_time() - cpu_start})
        bar.set_postfix(**verdict.postfix)
        if best is None or verdict.key > best[0]:
            best = (verdict.key, epoch, verdict.metrics, copy.deepcopy(model.state_dict()))
        if resume is not None:
            resume.save_epoch(epoch, model=model, optimizer=opt, scheduler=sched,
                              best_model=best[3], generators=generators, objective=objective,
                              history=history, best_key=list(best[0]), best_epoch=best[1],
                              best_metrics=json.loads(to_json(best[2])))
    bar.close()
    assert best is not None
    model.load_state_dict(best[3])
    wrapper.eval()
    return LoopResult(history, best[1], best[2], time.perf_counter() - start,
                      time.process_time() - cpu_start)


def fit_config(wrapper: nn.Module, config: Any, train: Any, *, gen: torch.Generator,
               batch_loss: Callable[[Any], torch.Tensor], judge: Callable[[], Judgement],
               objective: Any = None, robust: Any = None,
               state_dir: str | Path | None = None,
               init: Mapping[str, torch.Tensor] | None = None,
               calibrate: Callable[[], Any] | None = None) -> LoopResult:
    """``fit`` from a trainer's config dataclass (epochs, batch_size, lr, weight_decay, model),
    resumable in ``state_dir`` under a key of the config, data, robust settings and starting
    weights ``init`` (so a changed setting never resumes a stale state), and the robust
    objective's state saved beside the checkpoint: the classifier and segmenter trainers
    share this tail. ``calibrate`` as in ``fit``."""
    state = None if state_dir is None else EpochState(
        state_dir, {"config": asdict(config), "dataset": train.spec, "n": len(train),
                    "robust": None if robust is None else robust.as_dict()}, init)
    done = fit(wrapper, wrapper.model, len(train), epochs=config.epochs,
               batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
               shuffle=torch_shuffle(gen), batch_loss=batch_loss, judge=judge,
               desc=f"train {config.model}", objective=objective, generators=(gen,),
               resume=state, calibrate=calibrate)
    if objective is not None and state_dir is not None:
        objective.save(state_dir)
    return done
