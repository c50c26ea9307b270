"""A run's duration, images per second and resumes, recorded by the store over its attempts.

The report used to take a run's duration as its last end minus its first start, so a 40 s
campaign rerun 20 minutes later (nothing left to compute) read "20.3 min", its images per
second "-" and "Resumed 1 time(s)". The store now adds each attempt's own seconds when it ends
(a hard-killed attempt: until its last heartbeat), counts the items every attempt records, and
counts a resume only when its attempt recorded something. Stores from before (schema version
2) still open, keep what their rows tell and say where the split over attempts is unknown.
"""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import medrobust.store.database as database
from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import run_onepixel_campaign
from medrobust.models import load_classifier
from medrobust.report import build_report
from medrobust.report.blocks import Section, Table, num
from medrobust.report.context import ReportContext
from medrobust.report.sections import (
    attack_summary_section,
    provenance_section,
    resumed_text,
    run_duration,
    run_rate,
)
from medrobust.store import ResultTable, Store, run_fingerprint
from medrobust.store.database import SCHEMA_VERSION

pytestmark = pytest.mark.usefixtures("one_thread_module")

TABLE = ResultTable("items", {"v": "REAL"})
START = 1_800_000_000.0  # 2027-01-15, a fixed epoch for the controlled clock


class Clock:
    """The store's clock (epoch seconds and ISO timestamps), frozen at ``now`` when set, else
    the real clock moved by ``offset``: a rerun "20 minutes later" without waiting for it."""

    def __init__(self) -> None:
        self.now: float | None = None
        self.offset = 0.0

    def time(self) -> float:
        return self.now if self.now is not None else time.time() + self.offset

    def utc_now(self) -> str:
        return datetime.fromtimestamp(self.time(), timezone.utc).isoformat(
            timespec="microseconds")


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(database, "time", SimpleNamespace(time=c.time, sleep=time.sleep))
    monkeypatch.setattr(database, "utc_now", c.utc_now)
    return c


def _table(section: Section, caption: str) -> Table:
    found = [b for b in _blocks(section) if isinstance(b, Table) and b.caption == caption]
    assert len(found) == 1, [getattr(b, "caption", None) for b in _blocks(section)]
    return found[0]


def _blocks(section: Section) -> list[Any]:
    out = list(section.blocks)
    for sub in section.subsections:
        out += _blocks(sub)
    return out


def _appendix(store: Store, tmp_path: Path) -> dict[int, dict[str, str]]:
    """Per run id: the appendix's Duration and Resumed cells."""
    runs = store.runs()
    section = provenance_section(ReportContext(store=store, out_dir=tmp_path, runs=runs))
    out: dict[int, dict[str, str]] = {}
    for row in _table(section, "Runs").rows:
        out[int(row[0])] = {"duration": row[4]}
    for row in _table(section, "Settings of each run (long lists abbreviated)").rows:
        out[int(row[0])]["resumed"] = row[2]
    return out


def _seconds(text: str) -> float:
    value, unit = text.split()[:2]
    return float(value) * {"s": 1, "min": 60, "h": 3600}[unit]


# -- a one-pixel campaign run, then rerun 20 minutes later with nothing left -----------------------

def test_rerun_with_nothing_left_keeps_duration_rate_and_no_resume(clock, checkpoint,
                                                                    tiny_synthetic, tmp_path):
    _, _, test = tiny_synthetic
    clf = load_classifier(checkpoint)
    attack = OnePixel(clf, population=16, generations=3, seed=0)
    with Store(tmp_path / "s.db") as store:
        first = run_onepixel_campaign(store, clf, checkpoint, test, attack, list(range(4)),
                                      show_progress=False)
        clock.offset = 20 * 60.0
        again = run_onepixel_campaign(store, clf, checkpoint, test, attack, list(range(4)),
                                      show_progress=False)
        assert again.run_id == first.run_id and again.resumed and again.computed_now == 0
        run = store.get_run(first.run_id)
        # the bug's setting: first start to last end spans the 20 minutes between the attempts
        span = (datetime.fromisoformat(run["ended_at"])
                - datetime.fromisoformat(run["started_at"])).total_seconds()
        assert span >= 20 * 60
        assert run["resumed_count"] == 1 and run["work_resumes"] == 0
        assert run["computed_items"] == 4
        assert 0 < run["active_seconds"] < 60
        appendix = _appendix(store, tmp_path)[first.run_id]
        assert _seconds(appendix["duration"]) < 60, appendix
        assert appendix["resumed"] == "no; rerun 1 time(s) with nothing left to compute"
        # images per second over the attempt that computed them, not "-" after the rerun
        # the campaign's own figure: the rate of the session that did the work, kept
        assert again.summary["images_per_second"] == first.summary["images_per_second"]
        rate = run_rate(run)
        assert rate == pytest.approx(4 / run["active_seconds"])
        ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
        overall = _table(attack_summary_section(ctx), "Overall")
        assert overall.rows[0][-1] == num(rate, 2) != "-"
        page = build_report(store, tmp_path / "report").read_text()
    assert "rerun 1 time(s) with nothing left to compute" in page


# -- attempts with a controlled clock --------------------------------------------------------------

def test_interrupted_then_resumed_run_sums_its_attempts(clock, tmp_path):
    clock.now = START
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {"n": 4})
        clock.now += 10
        store.put_many(TABLE, run_id, [(0, {"v": 0.0}), (1, {"v": 1.0})])
        clock.now += 10
        store.finish_run(run_id, "interrupted")  # Ctrl-C after 20 s
        clock.now += 3600  # an hour later, the same command resumes
        assert store.start_run("campaign", {"n": 4}) == (run_id, True)
        clock.now += 5
        store.put_many(TABLE, run_id, [(2, {"v": 2.0}), (3, {"v": 3.0})])
        clock.now += 3
        store.finish_run(run_id, "completed")
        run = store.get_run(run_id)
        assert run["active_seconds"] == pytest.approx(28.0)
        assert (run["computed_items"], run["resumed_count"], run["work_resumes"]) == (4, 1, 1)
        assert run_rate(run) == pytest.approx(4 / 28)
        appendix = _appendix(store, tmp_path)[run_id]
    assert appendix == {"duration": "28 s", "resumed": "1 time(s)"}


def test_killed_attempt_counts_until_its_last_heartbeat(clock, tmp_path):
    """A ``kill -9`` leaves the run 'running'; the resume adds the seconds it ran until its
    last sign of life (recording an item beats the heart), not the hours until the resume."""
    clock.now = START
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {})
        clock.now += 30
        store.put(TABLE, run_id, 0, {"v": 0.0})
        clock.now += 7200  # killed right after; resumed two hours later
        assert store.start_run("campaign", {}) == (run_id, True)
        run = store.get_run(run_id)
        assert run["status"] == "running" and run["active_seconds"] == pytest.approx(30.0)
        assert run_duration(run) == "30 s before this attempt"
        assert run_rate(run) is None  # the open attempt's seconds are not in yet
        clock.now += 12
        store.put(TABLE, run_id, 1, {"v": 1.0})
        store.finish_run(run_id, "completed")
        run = store.get_run(run_id)
    assert run["active_seconds"] == pytest.approx(42.0)
    assert (run["computed_items"], run["work_resumes"]) == (2, 1)
    assert resumed_text(run) == "1 time(s)"


def test_finishing_a_finished_run_again_adds_no_time(clock, tmp_path):
    clock.now = START
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {})
        clock.now += 5
        store.finish_run(run_id, "completed")
        clock.now += 500
        store.finish_run(run_id, "completed", {"note": "summary replaced later"})
        assert store.get_run(run_id)["active_seconds"] == pytest.approx(5.0)


def test_several_reruns_and_one_resume_are_told_apart(clock, tmp_path):
    clock.now = START
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {})
        store.put(TABLE, run_id, 0, {"v": 0.0})
        clock.now += 4
        store.finish_run(run_id, "interrupted")
        for _ in range(2):  # reruns that find nothing to do
            clock.now += 100
            store.start_run("campaign", {})
            clock.now += 1
            store.finish_run(run_id, "completed")
        clock.now += 100
        store.start_run("campaign", {})
        store.put(TABLE, run_id, 1, {"v": 1.0})
        clock.now += 6
        store.finish_run(run_id, "completed")
        run = store.get_run(run_id)
    assert run["active_seconds"] == pytest.approx(12.0)
    assert resumed_text(run) == "1 time(s); rerun 2 time(s) with nothing left to compute"


def test_runs_that_record_no_items_count_every_resume(clock, tmp_path):
    """Training and evaluation keep no per-item rows: nothing tells an idle rerun apart."""
    clock.now = START
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("train", {}, resume="unfinished")
        store.finish_run(run_id, "interrupted")
        store.start_run("train", {}, resume="unfinished")
        clock.now += 9
        store.finish_run(run_id, "completed", {"train_seconds": 8.25})
        run = store.get_run(run_id)
    assert resumed_text(run) == "1 time(s)"
    assert run_duration(run) == "8 s training"


# -- a store written before the store recorded attempts -------------------------------------------

V2_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, command TEXT NOT NULL, params TEXT NOT NULL,
  fingerprint TEXT NOT NULL, code_version TEXT, model TEXT, dataset TEXT, started_at TEXT NOT NULL,
  ended_at TEXT, status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed',
  'interrupted')), summary TEXT, host TEXT, resumed_count INTEGER NOT NULL DEFAULT 0,
  last_resumed_at TEXT, owner_host TEXT, owner_pid INTEGER, heartbeat REAL);
CREATE INDEX runs_by_fingerprint ON runs (fingerprint, id);
CREATE INDEX runs_by_command ON runs (command, id);
CREATE TABLE result_tables (name TEXT PRIMARY KEY, columns TEXT NOT NULL,
  declared_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO store_meta VALUES ('schema_version', '2');
CREATE TABLE items (run_id INTEGER NOT NULL REFERENCES runs(id), item TEXT NOT NULL, v REAL,
  recorded_at TEXT NOT NULL, PRIMARY KEY (run_id, item));
INSERT INTO result_tables VALUES ('items', '{"v": "REAL"}', 'then', 'then');
INSERT INTO runs (command, params, fingerprint, started_at, ended_at, status, resumed_count)
  VALUES ('campaign', '{"n": 1}', '{fp1}', '2026-11-20T10:00:00.000000+00:00',
          '2026-11-20T10:00:40.000000+00:00', 'completed', 0);
INSERT INTO runs (command, params, fingerprint, started_at, ended_at, status, resumed_count,
  last_resumed_at)
  VALUES ('campaign', '{"n": 2}', '{fp2}', '2026-11-20T10:00:00.000000+00:00',
          '2026-11-20T10:20:18.000000+00:00', 'completed', 1, '2026-11-20T10:20:17.000000+00:00');
INSERT INTO items VALUES (1, '0', 0.0, 'then'), (1, '1', 1.0, 'then'), (2, '0', 0.0, 'then');
"""


def test_version_2_store_is_upgraded_and_still_reports(tmp_path):
    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(V2_SCHEMA.replace("{fp1}", run_fingerprint("campaign", {"n": 1}))
                       .replace("{fp2}", run_fingerprint("campaign", {"n": 2})))
    conn.commit()
    conn.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION
        never, resumed = store.get_run(1), store.get_run(2)
        # one attempt from start to end: exactly what the old rows tell
        assert never["active_seconds"] == pytest.approx(40.0, abs=0.01)
        assert (never["computed_items"], never["work_resumes"]) == (2, 0)
        # a resumed run's attempts were never recorded: unknown, not guessed
        assert resumed["active_seconds"] is None and resumed["work_resumes"] is None
        assert resumed["computed_items"] == 1
        appendix = _appendix(store, tmp_path)
        assert appendix[1] == {"duration": "40 s", "resumed": "no"}
        assert appendix[2]["duration"] == ("20.3 min from first start to last end "
                                           "(time per attempt not recorded)")
        assert appendix[2]["resumed"] == "1 time(s)"
        assert run_rate(never) == pytest.approx(2 / 40, rel=1e-3) and run_rate(resumed) is None
        build_report(store, tmp_path / "report")
        # an upgraded run carries on like a new one: a resume that computes adds its time
        assert store.start_run("campaign", {"n": 1}) == (1, True)
        store.put(TABLE, 1, 2, {"v": 2.0})
        store.finish_run(1, "completed")
        run = store.get_run(1)
        assert 40.0 <= run["active_seconds"] < 50.0
        assert (run["computed_items"], run["work_resumes"]) == (3, 1)
    with Store(db) as store:  # a second open finds the current version: nothing is redone
        assert store.get_run(1)["computed_items"] == 3
