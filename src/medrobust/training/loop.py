"""The epoch loop every trainer shares: seeded shuffling, a progress bar, an optional
wall-clock budget, keeping the weights of one epoch, and a resumable state after each epoch.

Which epoch is kept: standard training keeps the best clean validation epoch, always. A robust
run follows its ``Selection`` (``training.robust.selection``): the final epoch (the default, as
the authors' code), the best clean one, or the best under the cheap validation attack; the last
history row then holds ``kept``, the record of which epoch was kept and why. A robust
objective's ``finish`` warnings (adaptive margins that never moved) are issued at the end.

Trainers differ in how a batch becomes a loss, how the learning rate moves and how an epoch is
judged, so they pass those; everything else (and its determinism) lives here once.
``train_epochs`` is the loop; ``fit`` is it with AdamW and a one-cycle schedule (classifier,
segmenter, denoiser).
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.training.resume import EpochState, to_json
from medrobust.utils.progress import note, progress
from medrobust.utils.validation import check_range

if TYPE_CHECKING:
    from medrobust.training.robust.selection import Selection

#: what ``batch_loss`` returns: the mean loss, or (the mean loss, per-item terms to average
#: over the epoch, e.g. {"total": (B,), "heatmap": (B,)})
BatchLoss = Callable[[Any], torch.Tensor | tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


@dataclass
class Judgement:
    """One epoch's validation: the history row, the selection key (higher is better; None:
    not validated this epoch, never the best), the metrics kept for the best epoch, what
    the progress bar shows, and the key under the cheap validation attack (None: not attacked
    this epoch; ``EpochEnd.attack`` says when it is due)."""

    row: dict[str, Any]
    key: tuple[float, ...] | None
    metrics: dict[str, Any]
    postfix: dict[str, str]
    robust_key: tuple[float, ...] | None = None


@dataclass
class LoopResult:
    history: list[dict[str, Any]]
    best_epoch: int
    best_metrics: dict[str, Any]
    seconds: float
    cpu_seconds: float
    #: the one line saying the time budget ended the run early (None: all epochs ran)
    stopped: str | None = None
    #: robust runs: which epoch was kept and why (also the last history row's ``kept``)
    kept: dict[str, Any] | None = None


class Clock:
    """Wall and CPU seconds of a run, counting the time before a resume too."""

    def __init__(self, offset: float = 0.0, cpu_offset: float = 0.0) -> None:
        self.start = time.perf_counter() - offset
        self.cpu_start = time.process_time() - cpu_offset

    def wall(self) -> float:
        return time.perf_counter() - self.start

    def cpu(self) -> float:
        return time.process_time() - self.cpu_start


@dataclass
class EpochEnd:
    """What ``review`` sees of an epoch whose training steps are done."""

    epoch: int
    #: each summed term per training item (``loss`` when ``batch_loss`` returns only a loss)
    train: dict[str, float]
    #: the robust objective's summary of the epoch
    extra: dict[str, Any]
    #: the optimiser's learning rate after the epoch's last step
    lr: float
    #: the run's last epoch: the planned ones are done or the time budget ends it here
    final: bool
    #: the best clean selection key so far (standard training keeps that epoch)
    best_key: tuple[float, ...] | None
    clock: Clock
    started: float
    #: validate under the cheap attack too (``Judgement.robust_key``): robust runs only
    attack: bool = False

    def improves(self, key: tuple[float, ...] | None) -> bool:
        """Whether ``key`` is the best clean key so far (ties keep the earlier one)."""
        return key is not None and (self.best_key is None or key > self.best_key)

    def seconds(self) -> float:
        return self.clock.wall()

    def cpu_seconds(self) -> float:
        return self.clock.cpu()

    def epoch_seconds(self) -> float:
        return self.clock.wall() - self.started


def start_from(module: nn.Module, init: Mapping[str, torch.Tensor] | None) -> None:
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


def _stop_line(epoch: int, epochs: int, minutes: float, best_epoch: int | None,
               policy: str = "best-clean") -> str:
    what = {"best-clean": "the best validation epoch", "final": "its final epoch",
            "best-robust": "the best attacked-validation epoch"}[policy]
    kept = "" if best_epoch is None else f"; {what} ({best_epoch}) is kept"
    return (f"stopped after epoch {epoch} of {epochs}: the {minutes:g}-minute limit was "
            f"reached{kept}")


def _kept_key(policy: str, epoch: int, verdict: Judgement) -> tuple[float, ...] | None:
    """The key an epoch competes with under ``policy`` (higher wins, None: not a candidate):
    the final epoch wins by its number, the others by their validation."""
    if policy == "final":
        return None if verdict.key is None else (float(epoch),)
    return verdict.robust_key if policy == "best-robust" else verdict.key


#: the best epoch so far: (selection key, epoch, metrics, weights)
Best = tuple[tuple[float, ...], int, dict[str, Any], dict[str, torch.Tensor]]


@dataclass
class _Run:
    """Where a run stands between epochs: what a resume state holds besides the objects."""

    history: list[dict[str, Any]]
    best: Best | None = None
    next_epoch: int = 1
    elapsed: float = 0.0
    cpu_elapsed: float = 0.0
    #: the stop line once the time budget ended the run
    stopped: str | None = None
    #: the best clean key and its epoch (the kept epoch's under best-clean)
    clean_key: tuple[float, ...] | None = None
    clean_epoch: int | None = None
    #: the kept epoch's clean and attacked keys (the ``kept`` record)
    kept_keys: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def resumed(cls, epoch: int, best_model: dict[str, torch.Tensor], info: dict[str, Any]
                ) -> _Run:
        history = info["history"]
        best = None if info["best_key"] is None else (
            tuple(info["best_key"]), info["best_epoch"], info["best_metrics"], best_model)
        # states written before the clock was saved: the last row's cumulative seconds; before
        # keep policies: the kept epoch was the best clean one
        clean = info.get("clean_key", info["best_key"])
        return cls(history, best, epoch + 1, info.get("elapsed", history[-1].get("seconds", 0.0)),
                   info.get("cpu_elapsed", history[-1].get("cpu_seconds", 0.0)),
                   info.get("stopped"), None if clean is None else tuple(clean),
                   info.get("clean_epoch", info["best_epoch"]), info.get("kept_keys", {}))

    def take(self, end: EpochEnd, verdict: Judgement, model: nn.Module,
             policy: str = "best-clean") -> None:
        """Add an epoch's history row, and keep its weights when it wins under ``policy``."""
        self.history.append(verdict.row)
        if end.improves(verdict.key):
            self.clean_key, self.clean_epoch = verdict.key, end.epoch
        key = _kept_key(policy, end.epoch, verdict)
        if key is not None and (self.best is None or key > self.best[0]):
            self.best = (key, end.epoch, verdict.metrics, copy.deepcopy(model.state_dict()))
            self.kept_keys = {k: None if v is None else list(v) for k, v in
                              (("clean_key", verdict.key), ("robust_key", verdict.robust_key))}

    def info(self, clock: Clock) -> dict[str, Any]:
        """The JSON entries of a resume state (``EpochState.save_epoch``'s ``info``)."""
        best = self.best
        return {"history": self.history, "best_key": None if best is None else list(best[0]),
                "best_epoch": None if best is None else best[1],
                "best_metrics": None if best is None else json.loads(to_json(best[2])),
                "elapsed": clock.wall(), "cpu_elapsed": clock.cpu(), "stopped": self.stopped,
                "clean_key": None if self.clean_key is None else list(self.clean_key),
                "clean_epoch": self.clean_epoch, "kept_keys": self.kept_keys}


class _Bar:
    """Steps without a time budget; with one, epochs, and the total is the epochs that fit at
    the pace so far rather than all those planned, so the bar's ETA is the budget's."""

    def __init__(self, desc: str, epochs: int, first: int, steps: int,
                 budget: float | None) -> None:
        self.epochs, self.budget = epochs, budget
        self.bar = progress(total=(epochs - first + 1) * steps, desc=desc) if budget is None \
            else progress(total=epochs, initial=first - 1, desc=desc, unit="epoch")

    def step(self) -> None:
        if self.budget is None:
            self.bar.update(1)

    def epoch(self, done: int, spent: float, last: bool, postfix: dict[str, str]) -> None:
        self.bar.set_postfix(**postfix)
        if self.budget is not None:
            more = 0 if last else max(1, int((self.budget - spent) * done // max(spent, 1e-9)))
            self.bar.total = min(self.epochs, done + more)
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def train_epochs(wrapper: nn.Module, model: nn.Module, n_train: int, *, epochs: int,
                 batch_size: int, optimizer: torch.optim.Optimizer,
                 shuffle: Callable[[int], Any], batch_loss: BatchLoss,
                 review: Callable[[EpochEnd], Judgement], desc: str, scheduler: Any = None,
                 lr_at: Callable[[int, float], float] | None = None,
                 minutes: float | None = None, objective: Any = None,
                 resume: EpochState | None = None, generators: tuple[torch.Generator, ...] = (),
                 calibrate: Callable[[], Any] | None = None,
                 selection: Selection | None = None) -> LoopResult:
    """Train ``wrapper`` (whose ``model`` holds the weights) and load the kept epoch's weights.

    ``shuffle(n)`` gives each epoch's order of the n training items (a seeded permutation);
    ``batch_loss(indices)`` returns the mean loss of those items (drawing any augmentation from
    the same seeded source), optionally with per-item terms that the loop averages over the
    epoch; ``review(end)`` validates the model in eval mode and builds the history row.
    The learning rate: ``scheduler`` (torch) is stepped after every optimiser step and saved
    with the state; ``lr_at(step, seconds)`` sets it before each step from the steps done and
    the wall-clock seconds spent (a schedule that follows a time budget).

    ``minutes`` stops after the epoch past which the next one would end beyond the budget
    (estimated from the mean epoch so far); at least one epoch runs, the last one is ``final``
    for ``review``, and a line on stderr (with the bars) and ``LoopResult.stopped`` say so.
    The bar counts steps without a budget and epochs with one.

    ``objective`` (a robust objective that ``batch_loss`` uses) is told where each epoch
    starts and ends; ``review`` gets its summary. With ``resume`` the state after each epoch
    is saved (weights, optimizer, scheduler, best epoch, history, the clock, the RNG of
    ``generators`` and torch, the objective) and a saved state is continued from (the time
    already spent counts against ``minutes``). ``calibrate()`` (the objective's xi
    calibration, a full pass over the training data) runs before the first epoch only when
    nothing was resumed: a resumed objective brings its own.

    ``selection`` (robust runs; None: standard training, the best clean epoch) says which epoch
    is kept and when ``review`` must also validate under the cheap attack (``EpochEnd.attack``).
    """
    if minutes is not None:
        check_range("minutes", minutes, 0, low_inclusive=False)
    budget = None if minutes is None else 60.0 * minutes
    policy = "best-clean" if selection is None else selection.policy
    steps = max(1, math.ceil(n_train / batch_size))
    resume = resume if resume is not None and resume.enabled else None
    run = _open_run(resume, model, optimizer, scheduler, generators, objective, calibrate)
    # a run the budget ended, killed before its checkpoint was written, trains no further
    last = epochs if run.stopped is None else run.next_epoch - 1
    clock = Clock(run.elapsed, run.cpu_elapsed)
    bar = _Bar(desc, epochs, run.next_epoch, steps, budget)
    for epoch in range(run.next_epoch, last + 1):
        started = clock.wall()
        if objective is not None:
            objective.begin_epoch(epoch)
        wrapper.train()
        order = shuffle(n_train)
        sums = _train_steps(order, epoch, steps, batch_size, optimizer, scheduler, lr_at,
                            batch_loss, clock, bar)
        wrapper.eval()
        extra = objective.end_epoch() if objective is not None else {}
        time_up = _time_up(run, clock, started, budget, epoch, epochs)
        final = epoch == epochs or time_up
        end = EpochEnd(epoch, {k: v / n_train for k, v in sums.items()}, extra,
                       optimizer.param_groups[0]["lr"], final, run.clean_key, clock, started,
                       selection is not None and selection.attack_due(final))
        verdict = review(end)
        run.take(end, verdict, model, policy)
        if time_up:
            assert minutes is not None
            run.stopped = _stop_line(epoch, epochs, minutes,
                                     None if run.best is None else run.best[1], policy)
        if resume is not None:
            resume.save_epoch(epoch, model=model, optimizer=optimizer, scheduler=scheduler,
                              best_model={} if run.best is None else run.best[3],
                              generators=generators, objective=objective, **run.info(clock))
        bar.epoch(len(run.history), clock.wall(), end.final, verdict.postfix)
        if time_up:
            break
    bar.close()
    return _close_run(run, clock, wrapper, model, desc, selection, objective)


def _open_run(resume: EpochState | None, model: nn.Module, optimizer: torch.optim.Optimizer,
              scheduler: Any, generators: tuple[torch.Generator, ...], objective: Any,
              calibrate: Callable[[], Any] | None) -> _Run:
    """Where the run starts: a saved state restored, else a fresh run (calibrated first)."""
    saved = None if resume is None else resume.restore(
        model=model, optimizer=optimizer, scheduler=scheduler, generators=generators,
        objective=objective)
    run = _Run([]) if saved is None else _Run.resumed(saved.epoch, saved.best_model, saved.info)
    if saved is None and calibrate is not None:
        calibrate()
    return run


def _train_steps(order: Any, epoch: int, steps: int, batch_size: int,
                 optimizer: torch.optim.Optimizer, scheduler: Any,
                 lr_at: Callable[[int, float], float] | None, batch_loss: BatchLoss,
                 clock: Clock, bar: _Bar) -> dict[str, float]:
    """One epoch's optimiser steps over ``order``; each term summed over the items."""
    sums: dict[str, float] = {}
    for i in range(steps):
        idx = order[i * batch_size:(i + 1) * batch_size]
        if lr_at is not None:
            rate = lr_at((epoch - 1) * steps + i, clock.wall())
            for group in optimizer.param_groups:
                group["lr"] = rate
        out = batch_loss(idx)
        loss, terms = (out, None) if isinstance(out, torch.Tensor) else out
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if terms is None:
            sums["loss"] = sums.get("loss", 0.0) + float(loss.detach()) * len(idx)
        else:
            for name, t in terms.items():
                sums[name] = sums.get(name, 0.0) + float(t.detach().sum())
        bar.step()
    return sums


def _time_up(run: _Run, clock: Clock, started: float, budget: float | None, epoch: int,
             epochs: int) -> bool:
    """Whether the budget ends the run after this epoch. Decided before validating, so that
    ``review`` knows the epoch is the last: its end and the next one's, at the mean pace of
    the whole epochs so far (the first epoch: its training so far)."""
    pace = started / len(run.history) if run.history else clock.wall() - started
    return budget is not None and epoch < epochs and started + 2 * pace > budget


def _close_run(run: _Run, clock: Clock, wrapper: nn.Module, model: nn.Module,
               desc: str, selection: Selection | None = None, objective: Any = None
               ) -> LoopResult:
    """Say why the run stopped early, if it did, load the kept epoch's weights, record which
    epoch that is (robust runs) and issue the objective's warnings."""
    if run.stopped is not None:
        note(run.stopped)
    if run.best is None:
        raise RuntimeError(f"{desc}: no epoch was validated, so there are no best weights")
    model.load_state_dict(run.best[3])
    wrapper.eval()
    kept = None
    if selection is not None:
        kept = {"policy": selection.policy, "epoch": run.best[1], "why": selection.why(),
                "ordered_by": selection.clean, "best_clean_epoch": run.clean_epoch,
                "clean_key": run.kept_keys.get("clean_key"),
                "robust_key": run.kept_keys.get("robust_key"),
                "attack": None if selection.attack is None else selection.attack.describe()}
        run.history[-1]["kept"] = kept
    if objective is not None:
        for warning in objective.finish(run.history):
            warnings.warn(warning, stacklevel=3)
    return LoopResult(run.history, run.best[1], run.best[2], clock.wall(), clock.cpu(),
                      run.stopped, kept)


def fit(wrapper: nn.Module, model: nn.Module, n_train: int, *, epochs: int, batch_size: int,
        lr: float, weight_decay: float, shuffle: Callable[[int], Any],
        batch_loss: Callable[[Any], torch.Tensor], judge: Callable[[], Judgement],
        desc: str, objective: Any = None, resume: EpochState | None = None,
        generators: tuple[torch.Generator, ...] = (),
        calibrate: Callable[[], Any] | None = None, selection: Selection | None = None,
        attacked: Callable[[], tuple[dict[str, Any], tuple[float, ...]]] | None = None
        ) -> LoopResult:
    """``train_epochs`` with AdamW and a one-cycle schedule over all steps; ``judge()``
    validates the model and its ``row`` joins the history row between the training loss and
    the objective's summary, timings last. ``attacked()`` validates under the cheap attack
    when it is due ((its row entries, its key)). Other arguments as in ``train_epochs``."""
    opt = torch.optim.AdamW(wrapper.parameters(), lr=lr, weight_decay=weight_decay)
    steps = max(1, math.ceil(n_train / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)

    def review(end: EpochEnd) -> Judgement:
        verdict = judge()
        under: dict[str, Any] = {}
        if attacked is not None and end.attack:
            under, key = attacked()
            verdict = replace(verdict, robust_key=key)
        return replace(verdict, row={"epoch": end.epoch, "train_loss": end.train["loss"],
                                     **verdict.row, **under, **end.extra,
                                     "seconds": end.seconds(), "cpu_seconds": end.cpu_seconds()})

    return train_epochs(wrapper, model, n_train, epochs=epochs, batch_size=batch_size,
                        optimizer=opt, scheduler=sched, shuffle=shuffle, batch_loss=batch_loss,
                        review=review, desc=desc, objective=objective, resume=resume,
                        generators=generators, calibrate=calibrate, selection=selection)


def fit_config(wrapper: nn.Module, config: Any, train: Any, *, gen: torch.Generator,
               batch_loss: Callable[[Any], torch.Tensor], judge: Callable[[], Judgement],
               objective: Any = None, robust: Any = None,
               state_dir: str | Path | None = None,
               init: Mapping[str, torch.Tensor] | None = None,
               calibrate: Callable[[], Any] | None = None, selection: Selection | None = None,
               attacked: Callable[[], tuple[dict[str, Any], tuple[float, ...]]] | None = None
               ) -> LoopResult:
    """``fit`` from a trainer's config dataclass (epochs, batch_size, lr, weight_decay, model),
    resumable in ``state_dir`` under a key of the config, data, robust settings and starting
    weights ``init`` (so a changed setting never resumes a stale state), and the robust
    objective's state saved beside the checkpoint: the classifier and segmenter trainers
    share this tail. ``calibrate``, ``selection`` and ``attacked`` as in ``fit``."""
    state = None if state_dir is None else EpochState(
        state_dir, settings_key(config, train, robust), init)
    done = fit(wrapper, wrapper.model, len(train), epochs=config.epochs,
               batch_size=config.batch_size, lr=config.lr, weight_decay=config.weight_decay,
               shuffle=torch_shuffle(gen), batch_loss=batch_loss, judge=judge,
               desc=f"train {config.model}", objective=objective, generators=(gen,),
               resume=state, calibrate=calibrate, selection=selection, attacked=attacked)
    if objective is not None and state_dir is not None:
        objective.save(state_dir)
    return done


def settings_key(config: Any, train: Any, robust: Any) -> dict[str, Any]:
    """The resume key of a ``fit_config`` run: the config, the data and the robust settings."""
    return {"config": asdict(config), "dataset": train.spec, "n": len(train),
            "robust": None if robust is None else robust.as_dict()}


def with_delta_search(trainer: Callable[..., Any], train: Any, val: Any, config: Any,
                      device: Any, robust: Any, init: dict[str, torch.Tensor] | None,
                      state_dir: str | Path | None) -> Any:
    """``--delta auto`` for a trainer taking a config dataclass (classification,
    segmentation): search D, each candidate a short run of ``trainer`` with ``epochs``
    replaced, then the full run with the chosen D; the search record joins the last history
    row. ``trainer(train, val, config, device, robust=, init=, state_dir=)`` returns a result
    with ``history``."""
    from medrobust.training.robust.search import search_delta

    def candidate(cfg: Any, epochs: int, folder: Path | None) -> list[dict[str, Any]]:
        return trainer(train, val, replace(config, epochs=epochs), device, robust=cfg,
                       init=init, state_dir=folder).history

    chosen, record = search_delta(robust, epochs=config.epochs,
                                  shape=(train.channels, *train.size),
                                  settings=settings_key(config, train, None), init=init,
                                  state_dir=state_dir, train=candidate)
    result = trainer(train, val, config, device, robust=chosen, init=init, state_dir=state_dir)
    result.history[-1]["delta_search"] = record
    return result
