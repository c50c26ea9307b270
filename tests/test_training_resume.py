"""Resuming robust training: the saved xi replaces calibration (no pass over the data on
resume), and the weights a run starts from (``--xi-from``) are part of the resume key, for each
of the three resume paths (``loop.fit``: classifier and segmenter; landmarks; detection)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from test_detection import _toy_dataset
from test_landmarks import make_folder

from medrobust.data import load_dataset
from medrobust.errors import CheckpointError
from medrobust.models import build_model
from medrobust.models.centernet import centernet
from medrobust.models.landmark_unet import landmark_unet
from medrobust.training import TrainConfig, train_classifier
from medrobust.training.detection import train_detector
from medrobust.training.landmarks import train_landmark_model
from medrobust.training.resume import EpochState, weights_digest
from medrobust.training.robust import AdaptiveMargin, RobustConfig

pytestmark = pytest.mark.usefixtures("one_thread_module")

Weights = dict[str, torch.Tensor]
ROBUST = RobustConfig("adaptive-margin", delta=0.2, steps=2)
EPOCHS = 2


@dataclass
class Case:
    """One trainer: ``run(state_dir, init)`` trains EPOCHS epochs and returns the network's
    weights; ``init()`` gives starting weights for its network."""

    run: Callable[[Path, Weights | None], Weights]
    init: Callable[[], Weights]


def _seeded(build: Callable[[], torch.nn.Module]) -> Weights:
    torch.manual_seed(123)
    return {k: v.clone() for k, v in build().state_dict().items()}


def _classification(tmp: Path) -> Case:
    train, val = (load_dataset("synthetic", s, size=16, n=n, seed=3)
                  for s, n in (("train", 48), ("val", 16)))
    config = TrainConfig(model="smallcnn", model_kwargs={"width": 4}, epochs=EPOCHS,
                         batch_size=24, seed=5)
    return Case(lambda d, init: train_classifier(train, val, config, robust=ROBUST, init=init,
                                                 state_dir=d).classifier.model.state_dict(),
                lambda: _seeded(lambda: build_model("smallcnn", train.channels,
                                                    train.num_classes, width=4)))


def _landmarks(tmp: Path) -> Case:
    make_folder(tmp / "lm", n=8, h=24, w=20)
    train, val = (load_dataset("landmarks", s, data_dir=tmp / "lm", size=24)
                  for s in ("train", "val"))
    return Case(lambda d, init: train_landmark_model(
        train, val, epochs=EPOCHS, batch_size=4, width=2, robust=ROBUST, init=init,
        state_dir=d)[0].model.state_dict(),
        lambda: _seeded(lambda: landmark_unet(train.channels, train.num_landmarks, width=2)))


def _detection(tmp: Path) -> Case:
    train, val = _toy_dataset(8, 0), _toy_dataset(4, 1)
    return Case(lambda d, init: train_detector(
        train, val, epochs=EPOCHS, batch_size=4, seed=0, width=4, robust=ROBUST, init=init,
        state_dir=d)[0].state_dict(),
        lambda: _seeded(lambda: centernet(train.channels, train.num_classes, width=4)))


CASES = {"classification": _classification, "landmarks": _landmarks, "detection": _detection}


def killed_after_epoch(monkeypatch: pytest.MonkeyPatch, run: Callable[[], object],
                       epoch: int = 1) -> None:
    """Call ``run`` until the state of ``epoch`` is written, then stop it as a kill would."""
    save = EpochState.save

    def stop(self, payload, info):
        save(self, payload, info)
        if info["epoch"] == epoch:
            raise KeyboardInterrupt

    monkeypatch.setattr(EpochState, "save", stop)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(EpochState, "save", save)


def _killed_after_epoch_one(monkeypatch: pytest.MonkeyPatch, case: Case, state_dir: Path,
                            init: Weights | None) -> None:
    killed_after_epoch(monkeypatch, lambda: case.run(state_dir, init))


def _count_calibrations(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    calibrate = AdaptiveMargin.calibrate

    def counted(self, model, batches):
        calls.append(1)
        return calibrate(self, model, batches)

    monkeypatch.setattr(AdaptiveMargin, "calibrate", counted)
    return calls


def _same(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(torch.equal(v, b[k]) for k, v in a.items())


@pytest.mark.parametrize("task", list(CASES))
def test_a_resumed_run_is_not_calibrated_again(task, tmp_path, monkeypatch) -> None:
    """xi calibration is a full pass over the training data whose result the saved state
    replaces: a fresh run calibrates once, a resumed one not at all, and ends the same."""
    case = CASES[task](tmp_path)
    init = case.init()
    calls = _count_calibrations(monkeypatch)
    whole = case.run(tmp_path / "whole", init)
    assert len(calls) == 1
    _killed_after_epoch_one(monkeypatch, case, tmp_path / "cut", init)
    assert len(calls) == 2
    resumed = case.run(tmp_path / "cut", init)
    assert len(calls) == 2, "the resumed run calibrated xi again"
    assert _same(whole, resumed)


@pytest.mark.parametrize("task", list(CASES))
def test_other_starting_weights_never_resume_a_state(task, tmp_path, monkeypatch) -> None:
    """Another --xi-from checkpoint (here: the same network with one weight nudged) is another
    run: its saved state is refused rather than continued from the other start's epoch."""
    case = CASES[task](tmp_path)
    init = case.init()
    name = next(k for k, v in init.items() if v.is_floating_point())
    other = {**init, name: init[name] + 1e-3}
    _killed_after_epoch_one(monkeypatch, case, tmp_path / "cut", init)
    for start in (other, None):
        with pytest.raises(CheckpointError, match="other settings"):
            case.run(tmp_path / "cut", start)
    case.run(tmp_path / "cut", {k: v.clone() for k, v in init.items()})  # same content resumes


def test_weights_digest_follows_content_not_identity() -> None:
    a = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "n": torch.tensor(3)}
    assert weights_digest(a) == weights_digest({k: v.clone() for k, v in a.items()})
    changed = [{**a, "w": a["w"] + 1e-6}, {**a, "w": a["w"].double()},
               {**a, "w": a["w"].view(3, 2)}, {"v": a["w"], "n": a["n"]}]
    digests = {weights_digest(c) for c in changed}
    assert len(digests) == len(changed) and weights_digest(a) not in digests
    assert weights_digest({"b": torch.ones(2, dtype=torch.bfloat16)})  # numpy has no bfloat16


def test_a_state_without_starting_weights_keeps_its_key(tmp_path) -> None:
    """Runs that start from no checkpoint keep the key they always had, so the states they
    wrote before the starting weights joined the key still resume."""
    settings = {"epochs": 2, "robust": None}
    before = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    assert EpochState(tmp_path, settings).fingerprint == before
    with_init = EpochState(tmp_path, settings, {"w": torch.zeros(2)})
    assert with_init.fingerprint != EpochState(tmp_path, settings).fingerprint
