"""The demo end to end: train a classifier, attack it pixel by pixel, defend it, study the attacks
and write the report, all into one folder.

A rerun of the same request into the same folder resumes: a finished training is reused (its
checkpoint, so every later run keeps its fingerprint and resumes), the one-pixel campaign
attacks only missing images, a completed denoiser step is not redone, and the report shows each
run once. The report itself sits on a higher floor than campaigns; the caller hands its writer in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from medrobust.attacks import OnePixel
from medrobust.campaigns.adaptive_defence import ADAPTIVE_COMMAND, AdaptiveConfig
from medrobust.campaigns.defence import DEFEND_COMMAND
from medrobust.campaigns.defend import (
    TRAIN_DENOISER_COMMAND,
    DefendRequest,
    DenoiserRequest,
    open_split,
    run_defend,
    train_denoiser_and_save,
)
from medrobust.campaigns.onepixel import run_onepixel_campaign
from medrobust.campaigns.train import DataRequest, TrainRequest, finished_training, train_model
from medrobust.defences.training import DenoiserTrainConfig
from medrobust.errors import ConfigError
from medrobust.models import load_classifier
from medrobust.store import Store
from medrobust.utils.device import resolve_device

# Defaults that keep the demo within a few CPU minutes: a narrow smallcnn (a quarter of the
# default's cost per query) and fewer epochs on the easy synthetic data.
DEMO_DATASET = "synthetic"
DEMO_EPOCHS = {"synthetic": 6}
DEMO_MODEL_KWARGS = {"smallcnn": {"width": 16}}
#: The denoiser step: a short autoencoder training and cheap adaptive budgets, so the whole demo
#: stays within a few CPU minutes.
DEMO_TRAIN: dict[str, Any] = {"epochs": 6, "patch": 16, "batch_size": 32, "lr": 5e-3}
DEMO_ADAPTIVE: dict[str, Any] = {"linf_eps": (2 / 255, 8 / 255), "l2_eps": (0.5,), "pgd_steps": 10,
                 "onepixel_population": 40, "onepixel_generations": 10, "limit": 8,
                 "square_queries": 200}

#: writes the report of a store into a folder and returns its path (``report.build_report``)
ReportWriter = Callable[[Store, Path], str | Path]


@dataclass(frozen=True)
class DemoRequest:
    """One demo: its data (no name: the embedded synthetic set), the folder everything goes
    to, the model to train and the one-pixel attack's size."""

    data: DataRequest
    out: str | Path = "medrobust-demo"
    model: str = "smallcnn"
    #: None: 6 on synthetic data, else 12
    epochs: int | None = None
    #: smallcnn width (None: the demo's narrow default)
    width: int | None = None
    limit: int = 16
    population: int = 400
    generations: int = 100
    #: the denoiser step (train, defend, attack adaptively); off in tests that need seconds
    defence: bool = True
    seed: int = 0
    device: str = "auto"

    @property
    def dataset(self) -> DataRequest:
        """The data with its name filled in."""
        return replace(self.data, name=self.data.name or DEMO_DATASET)

    @property
    def root(self) -> Path:
        return Path(self.out)

    @property
    def db(self) -> Path:
        return self.root / "medrobust.db"

    def validate(self) -> None:
        """Every option, before any training: a typo costs a second, not minutes."""
        if self.epochs is not None and self.epochs < 1:
            raise ConfigError(f"--epochs must be at least 1, got {self.epochs}")
        if self.limit < 1:
            raise ConfigError(f"--limit must be at least 1, got {self.limit}")
        if self.generations < 1:
            raise ConfigError(f"--generations must be at least 1, got {self.generations}")
        if self.population < 4:  # DE/rand/1 draws three distinct partners per member
            raise ConfigError(f"--population must be at least 4, got {self.population}")

    def train_request(self) -> TrainRequest:
        """The classifier's training, on the classes the attacked split and the denoiser use
        (``--classes``): a model trained on others would be attacked on relabelled data."""
        data = self.dataset
        kwargs = dict(DEMO_MODEL_KWARGS.get(self.model, {}))
        if self.width is not None:
            kwargs["width"] = self.width
        epochs = self.epochs or DEMO_EPOCHS.get(str(data.name), 12)
        return TrainRequest("classification", data, self.root / "model", self.db,
                            {"model": self.model, "model_kwargs": kwargs, "epochs": epochs,
                             "seed": self.seed}, self.device)


def _silent(message: str) -> None:
    """The default ``say``: no progress lines."""


def _fmt(value: Any, digits: int = 3) -> str:
    """A number for the progress lines ('-' when absent), as the CLI prints them."""
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def run_demo(request: DemoRequest, *, write_report: ReportWriter,
             say: Callable[[str], None] = _silent, show_progress: bool = True) -> dict[str, Any]:
    """Train, attack, defend, study, report (``write_report(store, folder)``); the JSON
    summary. ``say`` receives one progress line per step."""
    from medrobust.analysis.study import run_study

    start = time.perf_counter()
    request.validate()
    test = open_split(request.dataset, "test")  # unknown names fail here
    root, db = request.root, request.db
    root.mkdir(parents=True, exist_ok=True)
    n = 5 if request.defence else 4  # the defence is a step of its own, and the slowest
    trained = _trained_model(request, say, n)
    say(f"[2/{n}] one-pixel attack on {request.limit} test images (population "
        f"{request.population}, {request.generations} generations)")
    clf = load_classifier(root / "model", resolve_device(request.device))
    attack = OnePixel(clf, population=request.population, generations=request.generations,
                      seed=request.seed)
    with Store(db) as store:
        outcome = run_onepixel_campaign(store, clf, root / "model", test, attack,
                                        list(range(min(request.limit, len(test)))),
                                        show_progress=show_progress)
        say(f"      success rate {_fmt(outcome.summary['success_rate'])} "
            f"({outcome.summary['successes']}/{outcome.summary['attacked']})")
        if not request.defence:
            pass
        elif trained.get("reused") and _defence_done(store, root):
            say("[3/5] denoising defence: already evaluated for this model")
        else:
            defence_step(request, say, show_progress)
        say(f"[{n - 1}/{n}] analysing attack colours, locations and periodicity")
        study = run_study(store, root / "analysis", run_id=outcome.run_id)
        say(f"[{n}/{n}] writing the report")
        report_path = write_report(store, root)
    return {"report": str(Path(report_path).resolve()), "store": str(db.resolve()),
            "train": {"test": trained["test"], "checkpoint": trained["checkpoint"],
                      "reused": bool(trained.get("reused"))},
            "attack": {**outcome.summary, "run_id": outcome.run_id,
                       "resumed": outcome.resumed, "attacked_now": outcome.computed_now},
            "periodicity": study.get("periodicity"),
            "seconds": time.perf_counter() - start}


def _trained_model(request: DemoRequest, say: Callable[[str], None], n: int
                   ) -> dict[str, Any]:
    """The training summary: the finished training of this request if there is one, else a
    new training."""
    train = request.train_request()
    trained = finished_training(train)
    if trained is not None:
        say(f"[1/{n}] reusing the trained {request.model} in {request.root / 'model'}")
    else:
        say(f"[1/{n}] training {request.model} on {train.data.name}")
        trained = train_model(train)
    say(f"      test accuracy {_fmt(trained['test']['accuracy'])}, AUC "
        f"{_fmt(trained['test']['auc'])}")
    return trained


def _defence_done(store: Store, root: Path) -> bool:
    """True when this folder's denoiser was trained, defended and attacked adaptively, all
    completed, after the model's own training."""
    folder = str((root / "denoiser").resolve())
    trained = [r for r in store.runs(TRAIN_DENOISER_COMMAND)
               if isinstance(r.get("model"), dict) and r["model"].get("dir") == folder]
    if not trained or trained[-1]["status"] != "completed" or not (root / "denoiser").is_dir():
        return False
    later = [r for r in store.runs() if r["id"] > trained[-1]["id"]]
    commands = {r["command"] for r in later if r["status"] == "completed"}
    return {DEFEND_COMMAND, ADAPTIVE_COMMAND} <= commands and all(
        r["status"] == "completed" for r in later if r["command"].startswith(DEFEND_COMMAND))


def defence_step(request: DemoRequest, say: Callable[[str], None],
                 show_progress: bool) -> dict[str, Any]:
    """The denoiser step: train the autoencoder, defend, attack adaptively; the ``defend``
    summary."""
    threads = torch.get_num_threads()
    # Small convolutions on busy cores: one thread is many times faster than two contending.
    torch.set_num_threads(1)
    try:
        return _defence_step(request, say, show_progress)
    finally:
        torch.set_num_threads(threads)


def _defence_step(request: DemoRequest, say: Callable[[str], None],
                  show_progress: bool) -> dict[str, Any]:
    root = request.root
    say("[3/5] denoising defence: training an impulse autoencoder")
    start = time.perf_counter()
    config = DenoiserTrainConfig(seed=request.seed, **DEMO_TRAIN)
    trained = train_denoiser_and_save(DenoiserRequest(request.dataset, config, root / "denoiser",
                                                      request.db, request.device))
    say(f"      impulse recall {trained['val']['mask_recall']:.3f} on noisy validation images; "
        "evaluating it and the 3x3 median against the attacks, then attacking both")
    adaptive = AdaptiveConfig(seed=request.seed, **DEMO_ADAPTIVE)
    summary = run_defend(DefendRequest(request.db, root / "model",
                                       (str(root / "denoiser"), "median3"), adaptive=adaptive,
                                       out=root / "defence", device=request.device),
                         show_progress=show_progress)
    for s in summary["defences"]:
        rate = "-" if s["recovery_rate"] is None else f"{100 * s['recovery_rate']:.0f} %"
        cost = s["clean_accuracy_cost"]
        say(f"      {s['label']}: recovers {s['recovered']}/{s['fooled']} fooled images ({rate}), "
            f"clean accuracy cost {'-' if cost is None else f'{100 * cost:.1f}'} points")
    for a in summary["adaptive"]:
        pgd = (a.get("pgd-linf") or {}).get(f"{8 / 255:.6g}")
        ens = (a.get("ensemble-linf") or {}).get(f"{8 / 255:.6g}")
        pct = lambda v: "-" if v is None else f"{100 * v:.0f} %"  # noqa: E731
        who = "no defence" if a["label"] == "none" else a["label"]
        say(f"      attacks that see it, {who}: robust accuracy at 8/255 under PGD {pct(pgd)}, "
            f"under the ensemble {pct(ens)} (one-pixel {pct(a.get('onepixel'))}, "
            f"n = {a['images']})")
    for warning in summary["warnings"]:
        say(f"      warning: {warning}")
    say(f"      denoiser step done in {time.perf_counter() - start:.0f} s")
    return summary
