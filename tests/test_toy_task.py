"""A fifth task is added by registering it: train, evaluate, attack, the attacked protocol and the
report then serve it with no edit anywhere else (issue 23's test of the task registry).

The toy task regresses each synthetic image's mean brightness with a four-filter network; its
whole definition is this file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from safetensors.torch import load_file
from torch import nn

from medrobust.models.base import PixelModel
from medrobust.models.checkpoint import WEIGHTS, read_meta
from medrobust.tasks import CurveMetric, Task, TaskReport, register_task, unregister_task
from medrobust.tasks.robust import with_robust

NAME = "toy-brightness"


class Regressor(PixelModel):
    """One number per image from float [0,1] images."""

    task = NAME

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalise(x))


def _network(channels: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))


def _brightness(ds: Any, idx: Any = slice(None)) -> torch.Tensor:
    return torch.from_numpy(np.asarray(ds.images)[idx].astype(np.float32).mean(axis=(1, 2, 3))
                            / 255.0)


def _train(train_ds: Any, val_ds: Any, o: dict[str, Any], device: str
           ) -> tuple[Regressor, dict[str, Any]]:
    torch.manual_seed(o["seed"])
    model = Regressor(_network(train_ds.channels), mean=[0.5] * train_ds.channels,
                      std=[0.25] * train_ds.channels, device=device)
    x, y = model.to_tensor(train_ds.images), _brightness(train_ds)
    opt = torch.optim.Adam(model.parameters(), lr=o["lr"])
    start, history = time.perf_counter(), []
    for epoch in range(1, o["epochs"] + 1):
        model.train()
        loss = ((model(x)[:, 0] - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({"epoch": epoch, "loss": loss.item()})
    model.eval()
    return model, {"best_epoch": o["epochs"], "epochs_run": o["epochs"],
                   "val": _evaluate(model, val_ds), "train_seconds": time.perf_counter() - start,
                   "model_kwargs": {}, "history": history, "robust": {"method": "none"}}


def _evaluate(model: Regressor, ds: Any) -> dict[str, Any]:
    with torch.no_grad():
        pred = model(model.to_tensor(ds.images))[:, 0].cpu()
    return {"n": len(ds), "mae": float((pred - _brightness(ds)).abs().mean())}


def _load(ckpt: str | Path, device: Any = "cpu", **_: Any) -> Regressor:
    meta = read_meta(ckpt)
    model = Regressor(_network(meta["channels"]), mean=meta["mean"], std=meta["std"])
    model.model.load_state_dict(load_file(str(Path(ckpt) / WEIGHTS)))
    return model.to(device).eval()


def _rows(model: Regressor, ds: Any, idx: np.ndarray, clean: torch.Tensor, adv: torch.Tensor
          ) -> list[dict[str, Any]]:
    truth = _brightness(ds, idx)
    with torch.no_grad():
        before, after = model(clean)[:, 0].cpu(), model(adv)[:, 0].cpu()
    return [{"metric": "mae", "unit": "", "clean_metric": float(abs(before[j] - truth[j])),
             "adv_metric": float(abs(after[j] - truth[j])), "clean_extra": None,
             "adv_extra": None, "clean_pred": float(before[j]), "adv_pred": float(after[j])}
            for j in range(len(idx))]


def _summary(rows: list[dict[str, Any]], ds: Any) -> dict[str, Any]:
    return {"images": len(rows), "clean_mae": float(np.mean([r["clean_metric"] for r in rows])),
            "adv_mae": float(np.mean([r["adv_metric"] for r in rows]))}


TOY = Task(
    name=NAME, wrapper=Regressor, datasets=("synthetic",), train=_train, evaluate=_evaluate,
    headline="mae", default_model="toy-net", load=_load, lower_is_better=True,
    options=with_robust({"epochs": 30, "lr": 0.05, "seed": 0}),
    loss_terms=lambda model, out, y: {"total": (out[:, 0] - y.to(out.device)) ** 2},
    attack_targets=lambda ds, idx: _brightness(ds, idx), attack_rows=_rows,
    attack_summary=_summary, network=lambda tr, va, o: _network(tr.channels),
    describe=lambda m: f"n={m['n']} MAE {m['mae']:.4f}",
    describe_attack=lambda s: f"MAE {s['clean_mae']:.4f} -> {s['adv_mae']:.4f}",
    report=TaskReport(9, "Brightness: absolute error", "MAE",
                      (CurveMetric("mae", "absolute error", (("clean_mae", "adv_mae"),),
                                   upper=None),)))


@pytest.fixture
def toy_task():
    register_task(TOY)
    try:
        yield TOY
    finally:
        unregister_task(NAME)


def test_a_registered_task_trains_evaluates_attacks_and_reports(toy_task, tmp_path, capsys):
    db, model = str(tmp_path / "s.db"), str(tmp_path / "m")
    trained = run_json(capsys, "train", "--task", NAME, "--dataset", "synthetic", "--size", "16",
                       "--epochs", "40", "--out", model, "--store", db)
    assert trained["task"] == NAME and trained["epochs_run"] == 40
    assert read_meta(model)["task"] == NAME
    clean = run_json(capsys, "evaluate", "--model", model, "--store", db)
    assert clean["mae"] == pytest.approx(trained["test"]["mae"], rel=1e-5)

    attack = ["--model", model, "--limit", "12", "--norm", "l2", "--steps", "5", "--store", db]
    small = run_json(capsys, "attack", "pgd", *attack, "--eps", "0.5")
    large = run_json(capsys, "attack", "pgd", *attack, "--eps", "4")
    assert small["table"] == "task_attack_results" and small["images"] == 12
    # PGD raises the squared error it differentiates, more with the larger budget
    assert small["clean_mae"] < small["adv_mae"] < large["adv_mae"]
    assert large["mean_l2"] <= 4 + 1e-5
    code, _, err = run_cli(capsys, "attack", "pgd", *attack, "--eps", "1", "--targeted")
    assert code == 2 and f"--targeted does not apply to {NAME} models" in err

    protocol = run_json(capsys, "evaluate", "--model", model, "--attack", "pgd,ifgsm", "--l2",
                        "0.5,2", "--steps", "3", "--ifgsm-steps", "3", "--limit", "8",
                        "--store", db)
    assert len(protocol["cells"]) == 4

    out = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = Path(out["report"]).read_text()
    # the task's own section, with the budget curve of its two PGD runs
    assert "Brightness: absolute error" in html and "PGD L2, 5 steps" in html


def test_a_registered_task_is_refused_data_of_another_task(toy_task, tmp_path, capsys):
    code, _, err = run_cli(capsys, "train", "--task", NAME, "--dataset", "segfolder",
                           "--data-dir", str(tmp_path), "--out", str(tmp_path / "m"),
                           "--store", str(tmp_path / "s.db"))
    assert code == 2 and f"{NAME} trains on synthetic, not 'segfolder'" in err
    assert not (tmp_path / "s.db").exists()
