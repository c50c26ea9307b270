"""Tests of the SQLite run store: runs, resume, result tables, crash safety and export."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medrobust.errors import MedrobustError
from medrobust.store import (
    Campaign,
    ResultTable,
    Store,
    StoreError,
    export_runs,
    export_table,
    run_fingerprint,
)
from medrobust.store.database import SCHEMA_VERSION

SRC = Path(__file__).resolve().parents[1] / "src"

SCORES = ResultTable(
    "scores", {"correct": "INTEGER", "margin": "REAL", "label": "TEXT", "probs": "JSON"}
)


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "ws" / "runs.sqlite") as s:
        yield s


def test_store_creates_parent_dirs_and_schema(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "medrobust.db"
    with Store(path) as s:
        assert path.exists()
        assert s.schema_version == SCHEMA_VERSION == 3
        assert s.tables() == []
        assert s.runs() == []
        assert s.latest_run() is None
    with pytest.raises(StoreError, match="closed"):
        s.runs()


def test_store_error_is_a_medrobust_error() -> None:
    assert issubclass(StoreError, MedrobustError)


def test_not_a_database_gives_one_line_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.db"
    bogus.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(StoreError, match="not a medrobust store / corrupt") as info:
        Store(bogus)
    assert "\n" not in str(info.value)


def test_run_lifecycle_and_json_roundtrip(store: Store) -> None:
    params = {"eps": 8 / 255, "steps": np.int64(10), "norms": ("linf", "l2"), "nested": {"a": [1]}}
    model = {"name": "smallcnn", "checkpoint": "ckpt/a.safetensors"}
    dataset = {"name": "pcam", "split": "test", "n": 128}
    run_id, resumed = store.start_run("attack", params, model=model, dataset=dataset)
    assert resumed is False
    run = store.get_run(run_id)
    assert run["status"] == "running"
    assert run["params"] == {"eps": 8 / 255, "steps": 10, "norms": ["linf", "l2"],
                             "nested": {"a": [1]}}
    assert run["model"] == model and run["dataset"] == dataset
    assert run["command"] == "attack"
    assert run["fingerprint"] == run_fingerprint("attack", params, model, dataset)
    assert run["code_version"].startswith(__import__("medrobust").__version__)
    assert run["started_at"].endswith("+00:00") and run["ended_at"] is None
    assert run["summary"] is None and run["resumed_count"] == 0

    summary = {"robust_accuracy": np.float32(0.25), "per_eps": np.array([0.9, 0.5])}
    store.finish_run(run_id, summary=summary)
    run = store.get_run(run_id)
    assert run["status"] == "completed" and run["ended_at"] >= run["started_at"]
    assert run["summary"] == {"robust_accuracy": 0.25, "per_eps": [0.9, 0.5]}

    other, _ = store.start_run("evaluate", {"split": "val"})
    store.finish_run(other, "failed")
    assert [r["id"] for r in store.runs()] == [run_id, other]
    assert [r["id"] for r in store.runs("attack")] == [run_id]
    assert store.latest_run()["id"] == other
    assert store.latest_run("attack")["id"] == run_id
    assert store.latest_run(status="failed")["id"] == other
    assert store.latest_run("attack", status="failed") is None

    with pytest.raises(StoreError, match="status"):
        store.finish_run(run_id, "done")
    with pytest.raises(StoreError, match="no run with id 999"):
        store.get_run(999)
    with pytest.raises(StoreError, match="no run with id 999"):
        store.finish_run(999)
    with pytest.raises(StoreError, match="params"):
        store.start_run("attack", {"bad": object()})


def test_finish_without_summary_keeps_previous_summary(store: Store) -> None:
    run_id, _ = store.start_run("train", {"epochs": 1})
    store.finish_run(run_id, "interrupted", {"epoch": 0})
    store.finish_run(run_id, "completed")
    assert store.get_run(run_id)["summary"] == {"epoch": 0}


def test_fingerprint_resume_same_id_different_params_new(store: Store) -> None:
    first, resumed = store.start_run("attack", {"eps": 0.1, "steps": 5}, model={"name": "m"})
    assert not resumed
    started = store.get_run(first)["started_at"]
    store.finish_run(first, "interrupted")

    # Same content, different key order: same fingerprint.
    again, resumed = store.start_run("attack", {"steps": 5, "eps": 0.1}, model={"name": "m"})
    assert (again, resumed) == (first, True)
    run = store.get_run(first)
    assert run["status"] == "running" and run["ended_at"] is None
    assert run["started_at"] == started
    assert run["resumed_count"] == 1 and run["last_resumed_at"] >= started

    third, resumed = store.start_run("attack", {"eps": 0.1, "steps": 5}, model={"name": "m"})
    assert (third, resumed) == (first, True)
    assert store.get_run(first)["resumed_count"] == 2

    new_params, resumed = store.start_run("attack", {"eps": 0.2, "steps": 5}, model={"name": "m"})
    assert new_params != first and not resumed
    new_model, resumed = store.start_run("attack", {"eps": 0.1, "steps": 5}, model={"name": "n"})
    assert new_model not in (first, new_params) and not resumed
    new_command, resumed = store.start_run("evaluate", {"eps": 0.1, "steps": 5},
                                           model={"name": "m"})
    assert new_command not in (first, new_params, new_model) and not resumed
    assert len(store.runs()) == 4


def test_resume_false_always_new_and_resume_takes_latest(store: Store) -> None:
    params = {"seed": 0}
    ids = [store.start_run("train", params, resume=False) for _ in range(3)]
    assert [resumed for _, resumed in ids] == [False, False, False]
    assert len({run_id for run_id, _ in ids}) == 3
    run_id, resumed = store.start_run("train", params)
    assert resumed and run_id == ids[-1][0]


def test_tracked_run_marks_status(store: Store) -> None:
    with store.tracked_run("evaluate", {"x": 1}) as (ok_id, _):
        pass
    assert store.get_run(ok_id)["status"] == "completed"

    with pytest.raises(RuntimeError), store.tracked_run("evaluate", {"x": 2}) as (bad_id, _):
        raise RuntimeError("boom")
    run = store.get_run(bad_id)
    assert run["status"] == "failed" and run["summary"] == {"error": "RuntimeError: boom"}

    with store.tracked_run("evaluate", {"x": 3}) as (own_id, _):
        store.finish_run(own_id, summary={"acc": 0.5})
    assert store.get_run(own_id)["summary"] == {"acc": 0.5}


def test_guard_marks_interrupted_or_failed_and_reraises(store: Store) -> None:
    run_id, _ = store.start_run("attack onepixel", {"n": 1})
    with pytest.raises(KeyboardInterrupt), store.guard(run_id):
        raise KeyboardInterrupt
    assert store.get_run(run_id)["status"] == "interrupted"
    again, resumed = store.start_run("attack onepixel", {"n": 1})
    assert (again, resumed) == (run_id, True)
    with pytest.raises(ValueError), store.guard(run_id):
        raise ValueError("bad pixel")
    run = store.get_run(run_id)
    assert run["status"] == "failed" and run["summary"]["error"] == "ValueError: bad pixel"
    with store.guard(run_id):
        pass
    assert store.get_run(run_id)["status"] == "failed"  # a clean exit leaves the status alone


def test_put_rows_roundtrip_numpy_and_lists(store: Store) -> None:
    run_id, _ = store.start_run("attack", {})
    store.put(SCORES, run_id, 0, {
        "correct": np.int64(1),
        "margin": np.float32(0.125),
        "label": "tumour",
        "probs": np.array([0.25, 0.75], dtype=np.float32),
    })
    store.put(SCORES, run_id, "img_7", {
        "correct": np.bool_(False),
        "margin": np.float64(-1.5),
        "probs": [[1, 2], {"k": np.int32(3)}, (4, 5)],
    })
    store.put("scores", run_id, np.int64(3), {"probs": np.float64(0.5), "correct": 2.0})
    rows = store.rows("scores", run_id)
    assert [r["item"] for r in rows] == ["0", "img_7", "3"]
    assert rows[0]["run_id"] == run_id
    assert rows[0]["correct"] == 1 and isinstance(rows[0]["correct"], int)
    assert rows[0]["margin"] == pytest.approx(0.125) and isinstance(rows[0]["margin"], float)
    assert rows[0]["label"] == "tumour"
    assert rows[0]["probs"] == [0.25, 0.75]
    assert rows[1]["correct"] == 0 and rows[1]["label"] is None
    assert rows[1]["probs"] == [[1, 2], {"k": 3}, [4, 5]]
    assert rows[2]["probs"] == 0.5 and rows[2]["correct"] == 2 and rows[2]["margin"] is None
    assert all(r["recorded_at"].endswith("+00:00") for r in rows)

    # put replaces the whole row of an item.
    store.put(SCORES, run_id, 0, {"margin": 9.0})
    row = store.rows(SCORES, run_id, where={"item": 0})
    assert len(row) == 1 and row[0]["margin"] == 9.0 and row[0]["probs"] is None

    assert [r["item"] for r in store.rows(SCORES, where={"label": None})] == ["img_7", "3", "0"]
    with pytest.raises(StoreError, match="no column 'nope' to filter"):
        store.rows(SCORES, where={"nope": 1})


def test_put_many_is_one_transaction(store: Store) -> None:
    run_id, _ = store.start_run("attack", {})
    count = store.put_many(SCORES, run_id, ((i, {"margin": float(i)}) for i in range(5)))
    assert count == 5
    assert store.done_items(SCORES, run_id) == {"0", "1", "2", "3", "4"}
    bad = [(10, {"margin": 1.0}), (11, {"margni": 2.0})]
    with pytest.raises(StoreError, match="'margni'"):
        store.put_many(SCORES, run_id, bad)
    assert "10" not in store.done_items(SCORES, run_id)
    assert store.put_many(SCORES, run_id, []) == 0


def test_unknown_column_and_bad_values_rejected(store: Store) -> None:
    run_id, _ = store.start_run("attack", {})
    with pytest.raises(StoreError, match="no column 'acuracy'") as info:
        store.put(SCORES, run_id, 1, {"acuracy": 0.5})
    assert "\n" not in str(info.value)
    with pytest.raises(StoreError, match="'correct' is INTEGER"):
        store.put(SCORES, run_id, 1, {"correct": 0.5})
    with pytest.raises(StoreError, match="'label' is TEXT"):
        store.put(SCORES, run_id, 1, {"label": 3})
    with pytest.raises(StoreError, match="'probs'"):
        store.put(SCORES, run_id, 1, {"probs": object()})
    with pytest.raises(StoreError, match="item must be a str or int"):
        store.put(SCORES, run_id, 1.5, {"margin": 1.0})
    with pytest.raises(StoreError, match="no run with id 42"):
        store.put(SCORES, 42, 1, {"margin": 1.0})
    with pytest.raises(StoreError, match="no result table 'missing'"):
        store.put("missing", run_id, 1, {"margin": 1.0})
    assert store.rows(SCORES) == []


@pytest.mark.parametrize(
    ("name", "columns", "message"),
    [
        ("bad name", {"a": "REAL"}, "not a valid identifier"),
        ("1abc", {"a": "REAL"}, "not a valid identifier"),
        ("runs", {"a": "REAL"}, "reserved"),
        ("t", {"item": "TEXT"}, "reserved"),
        ("t", {"a;drop": "REAL"}, "not a valid identifier"),
        ("t", {"a": "FLOAT"}, "INTEGER, REAL, TEXT, JSON"),
        ("t", {}, "non-empty"),
        ("t", {"a": "REAL", "A": "REAL"}, "twice"),
    ],
)
def test_result_table_validation(name: str, columns: dict, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        ResultTable(name, columns)


def test_result_table_is_frozen_and_copies_columns() -> None:
    columns = {"a": "real"}
    table = ResultTable("t", columns)
    columns["b"] = "TEXT"
    assert table.columns == {"a": "REAL"}
    assert table.key == "item"
    with pytest.raises(AttributeError):
        table.name = "u"  # type: ignore[misc]


def test_table_extension_by_alter(tmp_path: Path) -> None:
    path = tmp_path / "runs.db"
    v1 = ResultTable("attack_items", {"success": "INTEGER"})
    v2 = ResultTable("attack_items", {"success": "INTEGER", "l2": "REAL", "trace": "JSON"})
    with Store(path) as store:
        run_id, _ = store.start_run("attack", {})
        store.put(v1, run_id, "a", {"success": 1})
        assert store.ensure_table(v2).columns == v2.columns
        cols = [r[1] for r in store.connection.execute("PRAGMA table_info(attack_items)")]
        assert {"l2", "trace"} <= set(cols)
        store.put(v2, run_id, "b", {"success": 0, "l2": 0.3, "trace": [1, 2]})
        rows = store.rows("attack_items", run_id)
        assert rows[0] == {**rows[0], "item": "a", "success": 1, "l2": None, "trace": None}
        assert rows[1]["trace"] == [1, 2]
        # Old code declaring fewer columns still works and does not shrink the declaration.
        store.put(v1, run_id, "c", {"success": 1})
        assert store.table("attack_items").columns == v2.columns
        with pytest.raises(StoreError, match="cannot redeclare it as TEXT"):
            store.ensure_table(ResultTable("attack_items", {"l2": "TEXT"}))
        with pytest.raises(StoreError, match="case-insensitive"):
            store.ensure_table(ResultTable("attack_items", {"L2": "REAL"}))
    with Store(path) as fresh:
        assert fresh.table("attack_items").columns == v2.columns
        assert [r["trace"] for r in fresh.rows("attack_items")] == [None, [1, 2], None]


def test_done_items(store: Store) -> None:
    run_a, _ = store.start_run("attack", {"a": 1})
    run_b, _ = store.start_run("attack", {"b": 1})
    assert store.done_items(SCORES, run_a) == set()
    store.put(SCORES, run_a, 1, {"margin": 0.1})
    store.put(SCORES, run_a, "x", {"margin": 0.2})
    store.put(SCORES, run_b, 2, {"margin": 0.3})
    assert store.done_items(SCORES, run_a) == {"1", "x"}
    assert store.done_items("scores", run_b) == {"2"}
    assert store.tables() == ["scores"]


def test_campaign_pending_record_batches(store: Store) -> None:
    run_id, _ = store.start_run("attack", {})
    campaign = Campaign(store, SCORES, run_id)
    items = [5, 3, "a", 9, 3, 1]
    assert campaign.pending(items) == [5, 3, "a", 9, 1]
    campaign.record(3, {"margin": 1.0})
    campaign.record_many([("a", {"margin": 2.0}), (1, {"margin": 3.0})])
    assert campaign.pending(items) == [5, 9]
    assert campaign.pending(["3", 5]) == [5]
    batches = list(campaign.batches(range(10), 4))
    assert batches == [[0, 2, 4, 5], [6, 7, 8, 9]]
    computed = campaign.run(range(6), lambda i: {"margin": i / 2})
    assert computed == 4  # 0, 2, 4 and 5 were pending
    assert campaign.done() >= {str(i) for i in range(6)}
    with pytest.raises(StoreError, match="no run with id 77"):
        Campaign(store, SCORES, 77)


CHILD = textwrap.dedent(
    """
    import os, sys
    src, db, n, k = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    sys.path.insert(0, src)
    from medrobust.store import Campaign, ResultTable, Store

    table = ResultTable("crash_items", {"value": "REAL", "pid": "INTEGER", "trace": "JSON"})
    store = Store(db)
    run_id, resumed = store.start_run("campaign", {"n": n})
    assert not resumed
    campaign = Campaign(store, table, run_id)
    for count, item in enumerate(campaign.pending(list(range(n))), start=1):
        campaign.record(item, {"value": item / 2, "pid": os.getpid(), "trace": [item, "child"]})
        if count == k:
            # Die half-way through writing the next item: its transaction is never committed.
            conn = store.connection
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO crash_items (run_id, item, recorded_at) VALUES (?, ?, 'partial')",
                (run_id, str(k)),
            )
            os._exit(1)
    os._exit(0)
    """
)


def test_simulated_crash_resumes_exactly_remaining_items(tmp_path: Path) -> None:
    n, k = 12, 5
    db = tmp_path / "ws" / "crash.db"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(SRC), str(db), str(n), str(k)])
    assert proc.wait(timeout=60) == 1
    child_pid = proc.pid
    table = ResultTable("crash_items", {"value": "REAL", "pid": "INTEGER", "trace": "JSON"})

    with Store(db) as store:
        before = {r["item"]: r for r in store.rows("crash_items")}
        assert sorted(before, key=int) == [str(i) for i in range(k)]
        assert store.latest_run("campaign")["status"] == "running"  # killed, never finished

        run_id, resumed = store.start_run("campaign", {"n": n})
        assert resumed and run_id == store.latest_run("campaign")["id"]
        campaign = Campaign(store, table, run_id)
        assert campaign.pending(list(range(n))) == list(range(k, n))
        for item in campaign.pending(list(range(n))):
            campaign.record(item, {"value": item / 2, "pid": 0, "trace": [item, "parent"]})
        assert campaign.pending(list(range(n))) == []
        store.finish_run(run_id)

        after = store.rows("crash_items", run_id)
        assert len(after) == n
        assert sorted(int(r["item"]) for r in after) == list(range(n))
        by_item = {r["item"]: r for r in after}
        for i in range(k):
            row = by_item[str(i)]
            assert row == before[str(i)]  # untouched: same recorded_at, values, pid
            assert row["pid"] == child_pid and row["trace"] == [i, "child"]
        for i in range(k, n):
            row = by_item[str(i)]
            assert row["pid"] == 0 and row["trace"] == [i, "parent"]
            assert row["recorded_at"] != "partial"
        assert store.get_run(run_id)["resumed_count"] == 1


def test_wal_mode_is_on(tmp_path: Path) -> None:
    path = tmp_path / "wal.db"
    with Store(path) as store:
        assert store.journal_mode == "wal"
        assert store.connection.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert store.connection.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert store.connection.execute("PRAGMA busy_timeout").fetchone()[0] > 0
    raw = sqlite3.connect(path)
    try:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        raw.close()


def test_frame_types_and_json_decoded(store: Store) -> None:
    run_id, _ = store.start_run("attack", {})
    empty = store.frame(SCORES)
    assert list(empty.columns) == ["run_id", "item", *SCORES.columns, "recorded_at"]
    assert len(empty) == 0
    store.put(SCORES, run_id, 1, {"correct": 1, "margin": 0.5, "probs": [0.1, 0.9]})
    store.put(SCORES, run_id, 2, {"label": "x"})
    frame = store.frame(SCORES, run_id)
    assert str(frame["correct"].dtype) == "Int64" and frame["correct"].isna().tolist() == [
        False, True]
    assert frame["margin"].dtype == np.float64
    assert frame["probs"].tolist() == [[0.1, 0.9], None]
    raw = store.frame(SCORES, run_id, decode_json=False)
    assert raw["probs"].tolist() == ["[0.1, 0.9]", None]


def test_csv_and_parquet_export_match(store: Store, tmp_path: Path) -> None:
    run_a, _ = store.start_run("attack", {"a": 1})
    run_b, _ = store.start_run("attack", {"b": 1})
    for i in range(4):
        store.put(SCORES, run_a, i, {"correct": i % 2, "margin": i / 4, "label": f"l{i}",
                                     "probs": np.array([i, 1 - i])})
    store.put(SCORES, run_b, "z", {"margin": 1.0, "probs": {"k": [1, 2]}})
    columns = ["run_id", "item", *SCORES.columns, "recorded_at"]

    csv_path = export_table(store, SCORES, tmp_path / "out" / "scores.csv")
    parquet_path = export_table(store, "scores", tmp_path / "out" / "scores.parquet")
    from_csv = pd.read_csv(csv_path)
    from_parquet = pd.read_parquet(parquet_path)
    for frame in (from_csv, from_parquet):
        assert list(frame.columns) == columns
        assert len(frame) == 5
    assert [json.loads(v) for v in from_parquet["probs"]] == [
        [0, 1], [1, 0], [2, -1], [3, -2], {"k": [1, 2]}]
    assert [json.loads(v) for v in from_csv["probs"]] == [json.loads(v)
                                                         for v in from_parquet["probs"]]
    assert from_parquet["label"].tolist()[:4] == ["l0", "l1", "l2", "l3"]

    only_b = pd.read_parquet(export_table(store, SCORES, tmp_path / "b.parquet", run_id=run_b))
    assert only_b["item"].tolist() == ["z"]
    assert len(pd.read_csv(export_table(store, SCORES, tmp_path / "a.csv", run_id=run_a))) == 4

    with pytest.raises(StoreError, match=r"unknown suffix '\.xlsx'") as info:
        export_table(store, SCORES, tmp_path / "scores.xlsx")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "scores.xlsx").exists()


def test_export_runs(store: Store, tmp_path: Path) -> None:
    run_id, _ = store.start_run("attack", {"eps": [0.1, 0.2]}, model={"name": "m"})
    store.finish_run(run_id, summary={"acc": 0.5})
    store.start_run("train", {"epochs": 2})
    for suffix in (".csv", ".parquet"):
        path = export_runs(store, tmp_path / f"runs{suffix}")
        frame = pd.read_csv(path) if suffix == ".csv" else pd.read_parquet(path)
        assert len(frame) == 2
        assert {"id", "command", "params", "fingerprint", "status", "summary"} <= set(frame.columns)
        assert json.loads(frame["params"][0]) == {"eps": [0.1, 0.2]}
        assert json.loads(frame["summary"][0]) == {"acc": 0.5}
    with pytest.raises(StoreError, match=r"use \.csv or \.parquet"):
        export_runs(store, tmp_path / "runs.json")


def test_fresh_store_decodes_json_columns(tmp_path: Path) -> None:
    path = tmp_path / "ws.db"
    table = ResultTable("analysis_items", {"heatmap": "JSON", "score": "REAL"})
    with Store(path) as first:
        run_id, _ = first.start_run("analyse", {"method": "gradcam"}, dataset={"name": "d"})
        first.put(table, run_id, "img1", {"heatmap": np.eye(2), "score": 0.5})
        # A second Store open at the same time sees tables declared after it opened.
        with Store(path) as concurrent:
            first.put(ResultTable("late", {"v": "JSON"}), run_id, 1, {"v": {"a": 1}})
            assert concurrent.rows("late")[0]["v"] == {"a": 1}
    with Store(path) as fresh:
        assert fresh.tables() == ["analysis_items", "late"]
        rows = fresh.rows("analysis_items")
        assert rows[0]["heatmap"] == [[1.0, 0.0], [0.0, 1.0]]
        assert fresh.frame("analysis_items")["heatmap"][0] == [[1.0, 0.0], [0.0, 1.0]]
        assert fresh.get_run(run_id)["dataset"] == {"name": "d"}
        assert fresh.start_run("analyse", {"method": "gradcam"}, dataset={"name": "d"}) == (
            run_id, True)
