"""A store written by release 0.1.0 (before ``attack pgd`` on classifiers moved to the task-attack
campaign) still opens, reports, and takes new runs beside its old ones.

``tests/data/release_store`` was made by the code at commit 6644430 with::

    medrobust train --dataset synthetic --size 16 --epochs 1 --width 4 --out model --store runs.db
    medrobust attack pgd --model model --limit 6 --eps 8/255 --steps 3 --store runs.db
    medrobust attack pgd --model model --limit 6 --eps 16/255 --steps 3 --store runs.db
    medrobust attack ifgsm --model model --limit 6 --eps 8/255 --steps 3 --targeted --store runs.db
    medrobust evaluate --model model --attack pgd --l2 0.5 --steps 3 --limit 6 --store runs.db

Its classifier attacks are rows of ``gradient_results`` (summary key ``robust_accuracy``); the
protocol's rows are in ``task_attack_results`` without the ``target`` and ``success`` columns.
"""

from __future__ import annotations

import re
import shutil
from html import unescape
from pathlib import Path

import pytest
from cli_util import run_json

from medrobust.store import Store

FIXTURE = Path(__file__).parent / "data" / "release_store"


@pytest.fixture
def old_store(tmp_path: Path) -> Path:
    shutil.copytree(FIXTURE, tmp_path / "old")
    return tmp_path / "old"


def _text(html: str) -> str:
    return re.sub(r"\s+", " ", unescape(re.sub(r"<[^>]+>", " ", html)))


def test_an_old_store_reports_its_classifier_attacks(old_store, capsys):
    out = run_json(capsys, "report", "--store", str(old_store / "runs.db"), "--out",
                   str(old_store / "rep"))
    html = re.sub(r"<style.*?</style>", " ", Path(out["report"]).read_text(), flags=re.S)
    text = _text(html)
    # the glance's table (attack, budget, robust accuracy, n, CI, run) and the budget curves'
    # points (curve, budget, run, images, clean, attacked), as release 0.1.0 wrote them
    for row in ("IFGSM Linf 8/255 16.7 % 6 3-56 % 4", "PGD Linf 8/255 16.7 % 6 3-56 % 2",
                "PGD Linf 16/255 0.0 % 6 0-39 % 3", "PGD L2 0.5 16.7 % 6 3-56 % 6",
                "IFGSM Linf, 3 steps, targeted Linf 8/255 4 6 33.3 % 16.7 %",
                "PGD Linf, 3 steps Linf 16/255 3 6 33.3 % 0.0 %",
                "Run 3: PGD at Linf 16/255", "Run 6: PGD at L2 0.5"):
        assert row in text, row
    # the 16/255 PGD run left no image right: the glance quotes its robust accuracy
    assert "Robust accuracy at the largest Linf 16/255 budget, without defence: 0.0 % (n = 6" in text


def test_a_new_pgd_run_on_an_old_store_gives_the_old_numbers(old_store, capsys):
    """The same attack, model and seed through the new campaign: the old run's robust accuracy
    and, image by image, the same predictions and perturbation sizes (a tolerance, since the
    store was written on another CPU's kernels)."""
    db = str(old_store / "runs.db")
    new = run_json(capsys, "attack", "pgd", "--model", str(old_store / "model"), "--limit", "6",
                   "--eps", "8/255", "--steps", "3", "--store", db)
    assert new["table"] == "task_attack_results" and not new["resumed"]
    with Store(db) as store:
        old = store.get_run(2)
        old_rows = {r["dataset_index"]: r for r in store.rows("gradient_results", run_id=2)}
        rows = {r["dataset_index"]: r for r in store.rows("task_attack_results",
                                                           run_id=new["run_id"])}
        protocol = store.rows("task_attack_results", run_id=6)
    assert new["adv_accuracy"] == pytest.approx(old["summary"]["robust_accuracy"])
    assert new["clean_accuracy"] == pytest.approx(old["summary"]["clean_accuracy"])
    assert new["success_rate"] == pytest.approx(old["summary"]["success_rate"])
    assert sorted(rows) == sorted(old_rows)
    for i, r in rows.items():
        o = old_rows[i]
        assert (r["clean_pred"], r["adv_pred"]) == (o["clean_pred"], o["adv_pred"])
        assert r["l2"] == pytest.approx(o["l2"], abs=1e-4)
        assert r["success"] == o["success"] and r["target"] is None
    # the old protocol rows gained the new columns, empty
    assert protocol and all(r["success"] is None and r["target"] is None for r in protocol)


def test_a_targeted_run_records_each_images_target_and_success(old_store, capsys):
    db = str(old_store / "runs.db")
    new = run_json(capsys, "attack", "ifgsm", "--model", str(old_store / "model"), "--limit", "6",
                   "--eps", "8/255", "--steps", "3", "--targeted", "--store", db)
    with Store(db) as store:
        old = store.get_run(4)
        old_rows = {r["dataset_index"]: r for r in store.rows("gradient_results", run_id=4)}
        rows = store.rows("task_attack_results", run_id=new["run_id"])
    assert sorted(r["dataset_index"] for r in rows) == sorted(old_rows)
    for r in rows:
        o = old_rows[r["dataset_index"]]
        assert r["target"] == o["target"] and r["success"] == o["success"]
        assert r["success"] == int(r["adv_pred"] == r["target"])
    assert new["success_rate"] == pytest.approx(old["summary"]["success_rate"])
