"""One-pixel campaigns: every image lands in the store, and a killed campaign resumes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import ONEPIXEL_TABLE, run_onepixel_campaign
from medrobust.data import load_dataset
from medrobust.models import load_classifier
from medrobust.store import Store

SRC = Path(__file__).resolve().parents[1] / "src"
N = 8
ATTACK = {"population": 20, "generations": 4, "seed": 5}


def _campaign(db: Path, ckpt: Path, batch_images: int = 3):
    clf = load_classifier(ckpt)
    test = load_dataset("synthetic", "test", size=16, n=60, seed=3)
    with Store(db) as store:
        return run_onepixel_campaign(store, clf, ckpt, test, OnePixel(clf, **ATTACK),
                                     list(range(N)), batch_images=batch_images,
                                     show_progress=False)


def _rows(db: Path) -> dict[str, dict]:
    with Store(db) as store:
        return {r["item"]: r for r in store.rows(ONEPIXEL_TABLE)}


def test_resume_after_kill_loses_and_repeats_nothing(tmp_path, checkpoint):
    killed_db = tmp_path / "killed.db"
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(SRC)!r})
        from medrobust.campaigns.onepixel import run_onepixel_campaign
        from medrobust.attacks import OnePixel
        from medrobust.data import load_dataset
        from medrobust.models import load_classifier
        from medrobust.store import Store
        import medrobust.campaigns.onepixel as campaign_module

        done = []
        original = campaign_module.result_row
        def counting_row(*args, **kwargs):
            row = original(*args, **kwargs)
            if len(done) == 3:
                os._exit(9)  # hard kill mid-batch: no cleanup, no finish_run
            done.append(1)
            return row
        campaign_module.result_row = counting_row
        clf = load_classifier({str(checkpoint)!r})
        test = load_dataset("synthetic", "test", size=16, n=60, seed=3)
        with Store({str(killed_db)!r}) as store:
            run_onepixel_campaign(store, clf, {str(checkpoint)!r}, test,
                                  OnePixel(clf, **{ATTACK!r}), list(range({N})),
                                  batch_images=3, show_progress=False)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    before = _rows(killed_db)
    assert len(before) == 3

    outcome = _campaign(killed_db, checkpoint)
    assert outcome.resumed and outcome.computed_now == N - 3
    after = _rows(killed_db)
    assert sorted(after, key=int) == [str(i) for i in range(N)]
    for key, row in before.items():
        assert after[key]["recorded_at"] == row["recorded_at"], "finished items were recomputed"

    # The resumed campaign gives exactly what an uninterrupted one gives.
    fresh_db = tmp_path / "fresh.db"
    _campaign(fresh_db, checkpoint, batch_images=8)
    fresh = _rows(fresh_db)
    for key in fresh:
        for col in ("status", "pixels", "colours", "queries", "final_scores", "h"):
            assert fresh[key][col] == after[key][col], (key, col)


def test_rerun_of_completed_campaign_attacks_nothing(tmp_path, checkpoint):
    db = tmp_path / "s.db"
    first = _campaign(db, checkpoint)
    assert first.computed_now == N and not first.resumed
    second = _campaign(db, checkpoint)
    assert second.resumed and second.computed_now == 0
    assert second.summary["images"] == N
    assert second.summary["attacked"] + second.summary["skipped"] == N
    with Store(db) as store:
        assert store.get_run(first.run_id)["status"] == "completed"
