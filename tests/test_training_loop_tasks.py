"""The shared epoch loop (``training.loop.train_epochs``) under the landmark and detection
trainers: a wall-clock budget (``minutes``) that ends a run early says so in one line, the bar
counts the epochs that fit rather than all those planned, and the run keeps its best epoch.

A budget depends on the machine's speed, so most tests here use a clock whose every reading
advances one second (epochs of equal length); one uses the real clock with a budget too small
for more than the one epoch that always runs.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch
from test_detection import _toy_dataset
from test_landmarks import make_folder
from test_training_resume import killed_after_epoch

from medrobust.data import load_dataset
from medrobust.training import loop
from medrobust.training.detection import train_detector
from medrobust.training.landmarks import train_landmark_model

pytestmark = pytest.mark.usefixtures("one_thread_module")

STOP = "stopped after epoch"


class TickingClock(loop.Clock):
    """Every reading of the wall clock is one second after the previous one."""

    def __init__(self, offset: float = 0.0, cpu_offset: float = 0.0) -> None:
        super().__init__(offset, cpu_offset)
        self.now = offset

    def wall(self) -> float:
        self.now += 1.0
        return self.now


@pytest.fixture
def bars(monkeypatch: pytest.MonkeyPatch) -> list:
    """The loop's bars, drawn into a buffer (so their counts move) with progress on; the stop
    line still goes to stderr."""
    made: list = []
    real = loop.progress

    def spy(**kwargs):
        bar = real(file=io.StringIO(), disable=False, **kwargs)
        made.append(bar)
        return bar

    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)
    monkeypatch.setattr(loop, "progress", spy)
    return made


@pytest.fixture(scope="module")
def landmarks(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lm") / "lm"
    make_folder(root, n=8, h=24, w=20)
    return tuple(load_dataset("landmarks", s, data_dir=root, size=24) for s in ("train", "val"))


def _stop_lines(err: str) -> list[str]:
    return [ln.rsplit("\r", 1)[-1].strip() for ln in err.splitlines() if STOP in ln]


def _landmark_run(landmarks, **kw):
    train, val = landmarks
    return train_landmark_model(train, val, batch_size=4, width=2, **kw)


def test_a_landmark_budget_stops_early_and_says_so(landmarks, bars, monkeypatch, capsys) -> None:
    monkeypatch.setattr(loop, "Clock", TickingClock)
    epochs, minutes = 20, 0.5
    _, history = _landmark_run(landmarks, epochs=epochs, minutes=minutes)
    ran = len(history)
    assert 1 < ran < epochs, "30 ticking seconds fit several epochs but not all 20"
    assert history[-1]["seconds"] <= 60 * minutes  # the next epoch would have overrun
    best = min(history, key=lambda r: r["val_mre"])["epoch"]  # the first of equals
    assert [r["improved"] for r in history].count(True) >= 1 and history[best - 1]["improved"]
    lines = _stop_lines(capsys.readouterr().err)
    assert lines == [f"stopped after epoch {ran} of {epochs}: the 0.5-minute limit was reached; "
                     f"the best validation epoch ({best}) is kept"]
    (bar,) = bars
    assert bar.unit == "epoch" and bar.n == bar.total == ran, "the bar promised all epochs"


def test_the_kept_weights_are_the_named_epoch(landmarks, bars, monkeypatch, capsys) -> None:
    """The stop line's best epoch is the one whose weights come back: its validation MRE."""
    from medrobust.training.landmarks import evaluate_landmarks

    monkeypatch.setattr(loop, "Clock", TickingClock)
    model, history = _landmark_run(landmarks, epochs=20, minutes=0.5, lr=3e-3)
    best = int(_stop_lines(capsys.readouterr().err)[0].rsplit("(", 1)[1].split(")")[0])
    assert evaluate_landmarks(model, landmarks[1])["mre"] == history[best - 1]["val_mre"]


def test_a_budget_that_is_not_reached_changes_nothing(landmarks, bars, capsys) -> None:
    """Landmark training's schedule follows the steps, so an ample budget trains the same
    numbers as none, to the last bit (same data, same batches), and says nothing."""
    model, history = _landmark_run(landmarks, epochs=2, minutes=60.0)
    again, plain = _landmark_run(landmarks, epochs=2)
    assert len(history) == 2 and STOP not in capsys.readouterr().err
    drop = {"seconds", "cpu_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in history] == \
        [{k: v for k, v in r.items() if k not in drop} for r in plain]
    for name, value in model.model.state_dict().items():
        assert torch.equal(value, again.model.state_dict()[name]), name


def test_the_real_clock_always_runs_one_epoch(landmarks, capsys, monkeypatch) -> None:
    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)
    _, history = _landmark_run(landmarks, epochs=5, minutes=1e-5)
    assert [r["epoch"] for r in history] == [1]
    err = capsys.readouterr().err
    assert _stop_lines(err) == ["stopped after epoch 1 of 5: the 1e-05-minute limit was "
                                "reached; the best validation epoch (1) is kept"]
    assert err.endswith("is kept\n"), "the stop line is the last thing written, on its own"


def test_quiet_runs_print_no_stop_line(landmarks, capsys, monkeypatch) -> None:
    """``--json`` silences the bars; it silences the stop line with them."""
    monkeypatch.setattr(loop, "Clock", TickingClock)
    _, history = _landmark_run(landmarks, epochs=20, minutes=0.5)
    assert len(history) < 20 and capsys.readouterr().err == ""


def test_a_detection_budget_stops_validated(bars, monkeypatch, capsys) -> None:
    """The detector validates every ``eval_every`` epochs and always at the last one: when the
    budget ends the run, the epoch it ends on is validated, and ``stopped_by`` says minutes."""
    monkeypatch.setattr(loop, "Clock", TickingClock)
    train, val = _toy_dataset(8, 0), _toy_dataset(4, 1)
    epochs = 40
    _, history = train_detector(train, val, epochs=epochs, batch_size=4, seed=0, width=4,
                                eval_every=3, minutes=1.0)
    rows = history["epochs"]
    assert 1 < len(rows) < epochs and history["stopped_by"] == "minutes"
    assert len(rows) % 3, "this budget should end the run between two validations"
    assert "val_map" in rows[-1], "the epoch the budget ended on was not validated"
    assert all(("val_map" in r) == (r["epoch"] % 3 == 0) for r in rows[:-1])
    # the schedule follows the clock: annealed to its floor although most steps never ran
    assert rows[-1]["lr"] < 0.1 * 2e-3 < rows[0]["lr"]
    (line,) = _stop_lines(capsys.readouterr().err)
    assert line == (f"stopped after epoch {len(rows)} of {epochs}: the 1-minute limit was "
                    f"reached; the best validation epoch ({history['best_epoch']}) is kept")
    (bar,) = bars
    assert bar.n == bar.total == len(rows)


def test_a_resumed_run_after_a_budget_stop_trains_no_further(landmarks, tmp_path: Path,
                                                             monkeypatch, capsys) -> None:
    """Killed after the budget ended the run but before its checkpoint was written, the same
    command gives back the stopped run (no more epochs) and says so again."""
    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)
    monkeypatch.setattr(loop, "Clock", TickingClock)
    kw = dict(epochs=20, minutes=0.5, state_dir=tmp_path / "run")
    first, whole = _landmark_run(landmarks, **{**kw, "state_dir": tmp_path / "whole"})
    ran = len(whole)
    killed_after_epoch(monkeypatch, lambda: _landmark_run(landmarks, **kw), epoch=ran)
    capsys.readouterr()
    model, again = _landmark_run(landmarks, **kw)
    assert [r["epoch"] for r in again] == list(range(1, ran + 1))
    assert [r["val_mre"] for r in again] == [r["val_mre"] for r in whole]
    assert len(_stop_lines(capsys.readouterr().err)) == 1
    for name, value in first.model.state_dict().items():
        assert torch.equal(value, model.model.state_dict()[name]), name
