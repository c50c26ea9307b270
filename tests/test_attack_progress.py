"""``progress=True`` on any attack: a tqdm bar on stderr that moves while the attack works.

The API stays quiet by default (scripts, campaigns), ``MEDROBUST_QUIET`` silences it like the
CLI's bars, and the setting changes no result and no recorded parameter (a run's fingerprint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import medrobust.attacks.base as attack_base
from medrobust.attacks import (
    APGD,
    APGDT,
    ASMA,
    IFGSM,
    PGD,
    Attack,
    AttackEnsemble,
    OnePixel,
    Square,
    misclassified,
)
from medrobust.attacks.restarts import Restarts
from medrobust.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread_module")

N = 5


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 3)).eval()


class _Segmenter(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 5 * (x[:, :1] - 0.5)
        return torch.cat([-fg, fg], dim=1)


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(N, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    return x, torch.tensor([0, 1, 2, 0, 1])


#: name -> (build(progress, model) -> attack, the label its bar shows)
CASES: dict[str, tuple[Callable[..., Attack], str]] = {
    "pgd": (lambda p, m: PGD(m, eps=0.05, steps=6, batch_size=2, progress=p), "pgd"),
    "pgd-early-stop": (lambda p, m: PGD(m, eps=0.3, steps=8, batch_size=2,
                                        early_stop=misclassified, progress=p), "pgd"),
    "ifgsm": (lambda p, m: IFGSM(m, eps=0.05, steps=6, progress=p), "ifgsm"),
    "apgd": (lambda p, m: APGD(m, eps=0.05, steps=6, restarts=2, batch_size=2, progress=p),
             "apgd-ce"),
    "apgd-t": (lambda p, m: APGDT(m, eps=0.05, steps=6, n_target_classes=2, progress=p),
               "apgd-t-dlr"),
    "square": (lambda p, m: Square(m, eps=0.05, max_queries=30, batch_size=2, progress=p),
               "square"),
    "restarts": (lambda p, m: Restarts(PGD(m, eps=0.05, steps=3), 3, progress=p), "pgd-r3"),
    "ensemble": (lambda p, m: AttackEnsemble(m, eps=0.05, steps=4, max_queries=20,
                                             progress=p), "apgd-ce"),
}


def _run(name: str, progress: bool) -> Any:
    build, _ = CASES[name]
    x, y = _batch()
    return build(progress, _linear())(x, y)


class _Recorder:
    """Stands in for tqdm: remembers the total and every update of each bar it makes."""

    def __init__(self) -> None:
        self.bars: list[dict[str, Any]] = []

    def __call__(self, iterable: Any = None, **kwargs: Any) -> Any:
        rec = self

        class Bar:
            def __init__(self) -> None:
                self.info = {"total": kwargs.get("total"), "desc": kwargs.get("desc"),
                             "disable": kwargs.get("disable"), "updates": [], "closed": False}
                rec.bars.append(self.info)

            def update(self, n: float = 1) -> None:
                self.info["updates"].append(n)

            def close(self) -> None:
                self.info["closed"] = True

        return Bar()


@pytest.fixture
def loud(monkeypatch):
    """Progress on, as outside the test suite (conftest silences every bar)."""
    monkeypatch.delenv("MEDROBUST_QUIET", raising=False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bar_on_stderr_only_with_progress(name, loud, capsys):
    _, label = CASES[name]
    _run(name, progress=False)
    assert capsys.readouterr().err == ""
    _run(name, progress=True)
    err = capsys.readouterr().err
    assert f"{label}:" in err and "img" in err, err


def test_onepixel_bar_on_stderr_only_with_progress(tiny_classifier, tiny_synthetic, loud,
                                                   capsys):
    _, _, test = tiny_synthetic
    x, y = test.images[:4], test.labels[:4]
    OnePixel(tiny_classifier, population=12, generations=3, seed=0)(x, y)
    assert capsys.readouterr().err == ""
    OnePixel(tiny_classifier, population=12, generations=3, seed=0, progress=True)(x, y)
    err = capsys.readouterr().err
    assert "one-pixel:" in err and "img" in err, err


def test_asma_bar_on_stderr_only_with_progress(loud, capsys):
    x = torch.full((2, 1, 5, 5), 0.3)
    target = torch.ones(2, 5, 5, dtype=torch.long)
    ASMA(_Segmenter(), iterations=5, eps=0.5)(x, target)
    assert capsys.readouterr().err == ""
    ASMA(_Segmenter(), iterations=5, eps=0.5, progress=True)(x, target)
    assert "ASMA:" in capsys.readouterr().err


def test_quiet_environment_silences_progress(monkeypatch, capsys):
    monkeypatch.setenv("MEDROBUST_QUIET", "1")
    _run("pgd", progress=True)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["pgd", "pgd-early-stop", "ifgsm", "apgd", "apgd-t", "square",
                                  "restarts"])
def test_bar_moves_every_iteration_and_ends_full(name, loud, monkeypatch):
    """Counted in images, moved many times per batch (per step or query, not per batch), and
    at 100 % at the end even when images stop early."""
    rec = _Recorder()
    monkeypatch.setattr(attack_base, "progress_bar_on_stderr", rec)
    result = _run(name, progress=True)
    bars = [b for b in rec.bars if not b["disable"]]
    assert len(bars) == 1 and bars[0]["closed"]
    bar = bars[0]
    assert bar["total"] == N
    assert sum(bar["updates"]) == pytest.approx(N)
    assert all(u > 0 for u in bar["updates"])
    if name == "pgd-early-stop":  # images froze before their last step, yet the bar is full
        assert int(result.steps.min()) < 8
    else:
        batches = 3 if name not in ("ifgsm", "apgd-t", "restarts") else 1
        assert len(bar["updates"]) > batches  # finer than one update per batch


def test_onepixel_bar_moves_every_generation_and_ends_full(tiny_classifier, tiny_synthetic,
                                                            loud, monkeypatch):
    _, _, test = tiny_synthetic
    rec = _Recorder()
    monkeypatch.setattr(attack_base, "progress_bar_on_stderr", rec)
    result = OnePixel(tiny_classifier, population=12, generations=4, seed=0,
                      progress=True)(test.images[:6], test.labels[:6])
    (bar,) = rec.bars
    assert bar["total"] == 6 and not bar["disable"] and bar["closed"]
    assert sum(bar["updates"]) == pytest.approx(6)
    if any(s != "skipped" for s in result.status):
        assert len(bar["updates"]) > 6  # generations move it, not only finished images


def test_progress_changes_no_result_and_no_recorded_parameter(loud, capsys):
    for name in ("pgd-early-stop", "apgd", "square"):
        quiet, shown = _run(name, progress=False), _run(name, progress=True)
        assert torch.equal(quiet.adversarial, shown.adversarial)
        assert torch.equal(quiet.success, shown.success)
    on, off = PGD(_linear(), progress=True), PGD(_linear())
    assert on.params() == off.params() and "progress" not in on.params()
    assert on.get_params()["progress"] is True and off.get_params()["progress"] is False
    assert on.progress is True and off.progress is False
    capsys.readouterr()


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_progress_must_be_a_bool(bad):
    with pytest.raises(ConfigError, match="progress must be True or False"):
        PGD(_linear(), progress=bad)
    with pytest.raises(ConfigError, match="progress must be True or False"):
        Square(_linear(), progress=bad)


def test_numpy_bool_is_accepted():
    assert PGD(_linear(), progress=np.bool_(True)).progress is True


def test_ensemble_passes_progress_to_its_default_members():
    ens = AttackEnsemble(_linear(), eps=0.05, progress=True)
    assert [m.progress for m in ens.attacks] == [True, True, True]
    assert not any(m.progress for m in AttackEnsemble(_linear(), eps=0.05).attacks)
