"""Campaigns that survive every way of stopping, and stores/checkpoints that cannot mislead.

Partial confidence maps resume only for the same model and image; SIGTERM is handled like Ctrl-C;
a second process on a live run is refused; every map run ends marked; the demo is idempotent;
corrupt stores give one line.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medrobust.analysis.confidence_map import confidence_map
from medrobust.cli.main import EXIT_SIGTERM, INTERRUPTED
from medrobust.models import Classifier, build_model
from medrobust.store import ResultTable, Store, StoreError, run_fingerprint
from medrobust.store.database import HEARTBEAT_TIMEOUT_S, SCHEMA_VERSION


def _clf(seed: int) -> Classifier:
    torch.manual_seed(seed)
    model = build_model("smallcnn", 1, 2, width=8)
    return Classifier(model, mean=[0.4], std=[0.3], class_names=("n", "p"), batch_size=64)


def _image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (6, 6, 1), dtype=np.uint8)


# -- partial confidence maps --------------------------------------------------------------------

def test_partial_map_of_another_model_is_not_resumed(tmp_path):
    ckpt = tmp_path / "partial.npz"
    confidence_map(_clf(1), _image(0), 0, step=51, pixels=[(0, 0), (1, 0)], checkpoint=ckpt)
    other = _clf(2)
    with pytest.warns(UserWarning, match="another model, image or grid"):
        resumed = confidence_map(other, _image(0), 0, step=51, checkpoint=ckpt)
    fresh = confidence_map(other, _image(0), 0, step=51)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, fresh.min)
    np.testing.assert_array_equal(resumed.max, fresh.max)


def test_partial_map_after_in_place_weight_change_is_not_resumed(tmp_path):
    """Weights changed through ``.data`` (no version bump) or a buffer change a checkpoint too."""
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
    next(clf.model.parameters()).data.mul_(3)
    with pytest.warns(UserWarning, match="another model"):
        resumed = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, confidence_map(clf, _image(0), 0, step=51).min)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
    clf.std.data.add_(0.5)  # a buffer, not a parameter
    with pytest.warns(UserWarning, match="another model"):
        assert confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt).passes == 36 * 6


def test_partial_map_of_another_image_is_not_resumed(tmp_path):
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0), (1, 0)], checkpoint=ckpt)
    with pytest.warns(UserWarning, match="another model, image or grid"):
        resumed = confidence_map(clf, _image(5), 0, step=51, checkpoint=ckpt)
    assert resumed.passes == 36 * 6
    np.testing.assert_array_equal(resumed.min, confidence_map(clf, _image(5), 0, step=51).min)


def _write_wrong_shapes(path):
    z = {k: np.zeros((2, 2)) for k in ("min", "max", "mean", "success", "done")}
    np.savez(path, argmin=np.zeros((2, 2, 1), np.uint8), argmax=np.zeros((2, 2, 1), np.uint8),
             key=np.array("x"), **z)


@pytest.mark.parametrize("corrupt", ["random", "text", "truncated", "keys", "shapes"])
def test_corrupt_partial_map_warns_and_starts_afresh(tmp_path, corrupt):
    ckpt = tmp_path / "partial.npz"
    clf = _clf(1)
    if corrupt == "random":
        ckpt.write_bytes(np.random.default_rng(0).bytes(500))
    elif corrupt == "text":
        ckpt.write_text("not a map\n")
    elif corrupt == "truncated":
        confidence_map(clf, _image(0), 0, step=51, pixels=[(0, 0)], checkpoint=ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:300])
    elif corrupt == "keys":
        np.savez(ckpt, something=np.zeros(3))
    else:
        _write_wrong_shapes(ckpt)
    with pytest.warns(UserWarning, match="partial map .* starting this map afresh"):
        cmap = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert cmap.passes == 36 * 6
    np.testing.assert_array_equal(cmap.min, confidence_map(clf, _image(0), 0, step=51).min)
    # the file was overwritten with a good checkpoint: the next run resumes it silently
    again = confidence_map(clf, _image(0), 0, step=51, checkpoint=ckpt)
    assert again.passes == 0


# -- a trained checkpoint for CLI tests ---------------------------------------------------------

@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> str:
    """A 1-epoch, width-8 smallcnn on 16x16 synthetic images (a few seconds)."""
    from medrobust.cli.main import main

    folder = tmp_path_factory.mktemp("ckpt")
    assert main(["train", "--dataset", "synthetic", "--size", "16", "--epochs", "1", "--width",
                 "8", "--out", str(folder / "model"), "--store", str(folder / "train.db"),
                 "--json"]) == 0
    return str(folder / "model")


def _runs(db) -> list[tuple]:
    """(id, command, status) of every run, read with plain sqlite3 (no schema side effects)."""
    import sqlite3

    if not Path(db).exists():
        return []
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute("SELECT id, command, status FROM runs ORDER BY id").fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One real ``medrobust`` process."""
    return subprocess.run([sys.executable, "-m", "medrobust.cli.main", *args],
                          capture_output=True, text=True, timeout=timeout)


# -- SIGTERM ------------------------------------------------------------------------------------

def test_sigterm_marks_the_run_interrupted_with_one_line(ckpt, tmp_path):
    db = tmp_path / "s.db"
    # step 5 on a 16x16 image is 36M scores: minutes, so the signal lands mid-map
    child = subprocess.Popen(
        [sys.executable, "-m", "medrobust.cli.main", "map", "--model", ckpt, "--index", "0",
         "--step", "5", "--out", str(tmp_path / "maps"), "--store", str(db), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not _runs(db) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.1)
        assert _runs(db), "the map run never started"
        time.sleep(0.5)
        os.kill(child.pid, signal.SIGTERM)
        _out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == EXIT_SIGTERM == 143
    assert err.strip().splitlines() == [INTERRUPTED], err
    assert _runs(db) == [(1, "map", "interrupted")]


def test_sigterm_handler_is_restored_after_main(capsys):
    from medrobust.cli.main import main

    before = signal.getsignal(signal.SIGTERM)
    assert main(["--version"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# -- run ownership -----------------------------------------------------------------------------

HOLDER = textwrap.dedent(
    """
    import sys
    from medrobust.store import Store
    store = Store(sys.argv[1])
    run_id, _ = store.start_run("campaign", {"n": 1})
    print(run_id, flush=True)
    sys.stdin.read()  # hold the run open until the parent closes our stdin
    """
)


def test_second_process_on_a_live_run_is_refused_then_resumes_after_it_dies(tmp_path):
    db = tmp_path / "s.db"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        run_id = int(holder.stdout.readline())
        with Store(db) as store:
            with pytest.raises(StoreError, match=rf"run {run_id} \(campaign\) .* in progress in "
                                                 rf"pid {holder.pid} on this host") as info:
                store.start_run("campaign", {"n": 1})
            assert "\n" not in str(info.value)
            assert store.get_run(run_id)["status"] == "running"
            other, resumed = store.start_run("campaign", {"n": 2})  # another run is fine
            assert not resumed and other != run_id
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    # the holder died without finishing (like kill -9): its run is resumed normally
    with Store(db) as store:
        assert store.get_run(run_id)["status"] == "running"
        assert store.start_run("campaign", {"n": 1}) == (run_id, True)


def test_run_owned_on_another_host_is_refused_until_its_heartbeat_is_stale(tmp_path):
    db = tmp_path / "s.db"
    with Store(db) as store:
        run_id, _ = store.start_run("campaign", {"n": 1})
        store._stop_heartbeat()
        store.connection.execute(
            "UPDATE runs SET owner_host = 'elsewhere', owner_pid = 1, heartbeat = ?",
            (time.time() - 60,))
    with Store(db) as store:
        with pytest.raises(StoreError, match="pid 1 on host elsewhere"):
            store.start_run("campaign", {"n": 1})
        store.connection.execute("UPDATE runs SET heartbeat = ?",
                                 (time.time() - HEARTBEAT_TIMEOUT_S - 5,))
        assert store.start_run("campaign", {"n": 1}) == (run_id, True)


def test_recording_an_item_refreshes_the_heartbeat(tmp_path):
    table = ResultTable("t", {"v": "REAL"})
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {})
        store.connection.execute("UPDATE runs SET heartbeat = 0")
        store.put(table, run_id, 1, {"v": 1.0})
        beat = store.connection.execute("SELECT heartbeat FROM runs").fetchone()[0]
        assert time.time() - beat < 60


V1_SCHEMA = """
CREATE TABLE runs (id INTEGER PRIMARY KEY, command TEXT NOT NULL, params TEXT NOT NULL,
  fingerprint TEXT NOT NULL, code_version TEXT, model TEXT, dataset TEXT, started_at TEXT NOT NULL,
  ended_at TEXT, status TEXT NOT NULL CHECK (status IN ('running', 'completed', 'failed',
  'interrupted')), summary TEXT, host TEXT, resumed_count INTEGER NOT NULL DEFAULT 0,
  last_resumed_at TEXT);
CREATE INDEX runs_by_fingerprint ON runs (fingerprint, id);
CREATE INDEX runs_by_command ON runs (command, id);
CREATE TABLE result_tables (name TEXT PRIMARY KEY, columns TEXT NOT NULL,
  declared_at TEXT NOT NULL, updated_at TEXT NOT NULL);
CREATE TABLE store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO store_meta VALUES ('schema_version', '1');
CREATE TABLE t (run_id INTEGER NOT NULL REFERENCES runs(id), item TEXT NOT NULL, v REAL,
  recorded_at TEXT NOT NULL, PRIMARY KEY (run_id, item));
INSERT INTO result_tables VALUES ('t', '{"v": "REAL"}', 'then', 'then');
"""


def test_version_1_store_is_upgraded_in_place(tmp_path):
    import sqlite3

    db = tmp_path / "old.db"
    conn = sqlite3.connect(db)
    conn.executescript(V1_SCHEMA)
    fp = run_fingerprint("campaign", {"n": 1})
    conn.execute("INSERT INTO runs (command, params, fingerprint, started_at, status) VALUES "
                 "('campaign', ?, ?, 'then', 'running')", ('{"n": 1}', fp))
    conn.execute("INSERT INTO t VALUES (1, '0', 0.5, 'then')")
    conn.commit()
    conn.close()
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 3
        assert store.rows("t") == [{"run_id": 1, "item": "0", "v": 0.5, "recorded_at": "then"}]
        assert store.get_run(1)["status"] == "running"
        assert store.start_run("campaign", {"n": 1}) == (1, True)  # no owner recorded: free
    conn = sqlite3.connect(db)
    owner = conn.execute("SELECT owner_pid, owner_host FROM runs").fetchone()
    conn.close()
    assert owner[0] == os.getpid()


# -- map runs end marked; map options -----------------------------------------------------------

def test_failed_map_run_is_marked_failed(ckpt, tmp_path, capsys):
    from medrobust.cli.main import main

    out = tmp_path / "maps"
    out.mkdir()
    (out / "map_0.npz").mkdir()  # the map cannot be saved where a folder stands
    db = tmp_path / "s.db"
    code = main(["map", "--model", ckpt, "--index", "0", "--step", "255", "--out", str(out),
                 "--store", str(db), "--json"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert _runs(db) == [(1, "map", "failed")]


@pytest.mark.parametrize("args,needle", [
    (("--limit", "-1", "--step", "255"), "error: --limit must be at least 1, got -1"),
    (("--limit", "0", "--step", "255"), "error: --limit must be at least 1, got 0"),
    (("--limit", "2", "--index", "0", "--step", "255"), "error: --limit and --index cannot be used together"),
    (("--index", "400", "--step", "255"), "error: --index 400 is outside the 400 images of synthetic test "
                         "(valid: 0..399)"),
    (("--index", "-1", "--step", "255"), "error: --index -1 is outside the 400 images"),
    (("--index", "0", "--colour-step", "0"), "error: --colour-step must lie in [1, 255], got 0"),
    (("--index", "0", "--step", "300"), "error: --colour-step must lie in [1, 255], got 300"),
    (("--index", "0", "--score-class", "5"), "error: --score-class must lie in 0..1, got 5"),
    (("--index", "0", "--step", "x"), "error: Invalid value for '--colour-step' / '--step'"),
])
def test_bad_map_options_give_one_line_and_record_nothing(ckpt, tmp_path, capsys, args, needle):
    from medrobust.cli.main import main

    db = tmp_path / "s.db"
    code = main(["map", "--model", ckpt, "--out", str(tmp_path / "maps"), "--store", str(db),
                 *args])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(needle), err
    assert _runs(db) == []


# -- corrupt stores -----------------------------------------------------------------------------

def _corrupt_store(kind: str, path: Path) -> None:
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    elif kind == "text":
        path.write_text("runs,id\n1,2\n")
    elif kind == "header-only":
        path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)
    else:  # a real store cut in half
        big = path.with_name("big.db")
        with Store(big) as store:
            run_id, _ = store.start_run("campaign", {})
            store.put_many(ResultTable("t", {"v": "JSON"}), run_id,
                           [(i, {"v": list(range(50))}) for i in range(400)])
            store.finish_run(run_id)
        data = big.read_bytes()
        assert len(data) > 20000
        path.write_bytes(data[: len(data) // 2])


CORRUPT_KINDS = ["random", "text", "header-only", "truncated"]
STORE_COMMANDS = [
    ("report", "--out", "{tmp}/rep"), ("analyze", "--out", "{tmp}/an"),
    ("defend", "--model", "{ckpt}", "--denoiser", "median3"), ("store", "runs"),
    ("store", "export", "--table", "runs", "--out", "{tmp}/x.csv"),
    ("attack", "onepixel", "--model", "{ckpt}", "--limit", "1", "--population", "4",
     "--generations", "1"),
]


@pytest.mark.parametrize("kind", CORRUPT_KINDS)
def test_corrupt_store_file_gives_one_line_and_stays_untouched(ckpt, tmp_path, capsys, kind):
    from medrobust.cli.main import main

    db = tmp_path / "s.db"
    _corrupt_store(kind, db)
    before = db.read_bytes()
    for command in STORE_COMMANDS:
        args = [a.format(tmp=tmp_path, ckpt=ckpt) for a in command]
        code = main([*args, "--store", str(db)])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"error: {db} is not a medrobust store / "
                                                       "corrupt: "), (args, err)
        assert db.read_bytes() == before
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("s.db")) == ["s.db"]


@pytest.mark.parametrize("column", ["summary", "params", "model", "dataset"])
def test_corrupt_json_in_runs_names_the_cell(tmp_path, column):
    db = tmp_path / "s.db"
    with Store(db) as store:
        run_id, _ = store.start_run("campaign", {"n": 1}, model={"m": 1}, dataset={"d": 1})
        store.finish_run(run_id, "completed", {"ok": 1})
        store.connection.execute(f"UPDATE runs SET {column} = '{{bad'")
        with pytest.raises(StoreError, match=rf"corrupt JSON in runs\.{column} of run {run_id} "):
            store.get_run(run_id)
        with pytest.raises(StoreError, match=rf"runs\.{column}"):
            store.runs()


def test_corrupt_json_in_a_result_cell_names_it(tmp_path):
    table = ResultTable("t", {"v": "JSON", "w": "REAL"})
    with Store(tmp_path / "s.db") as store:
        run_id, _ = store.start_run("campaign", {})
        store.put(table, run_id, 7, {"v": [1, 2], "w": 1.0})
        store.connection.execute("UPDATE t SET v = '[1,'")
        with pytest.raises(StoreError, match=rf"corrupt JSON in t\.v of run {run_id}, item 7"):
            store.rows(table)
        assert store.frame(table, decode_json=False)["v"].tolist() == ["[1,"]  # raw stays readable


@pytest.fixture(scope="module")
def attacked_store(ckpt, tmp_path_factory) -> Path:
    """A store holding one small one-pixel run on ``ckpt``."""
    from medrobust.cli.main import main

    db = tmp_path_factory.mktemp("attacked") / "s.db"
    assert main(["attack", "onepixel", "--model", ckpt, "--limit", "2", "--population", "8",
                 "--generations", "2", "--store", str(db), "--json"]) == 0
    return db


@pytest.mark.parametrize("column", ["summary", "params"])
def test_corrupt_json_in_the_store_gives_one_line_in_every_reader(ckpt, attacked_store, tmp_path,
                                                                   capsys, column):
    import shutil
    import sqlite3

    from medrobust.cli.main import main

    db = tmp_path / "s.db"
    shutil.copy(attacked_store, db)
    conn = sqlite3.connect(db)
    conn.execute(f"UPDATE runs SET {column} = '{{bad' WHERE command = 'attack onepixel'")
    conn.commit()
    conn.close()
    capsys.readouterr()
    for command in (("report", "--out", str(tmp_path / "rep")),
                    ("analyze", "--out", str(tmp_path / "an")),
                    ("defend", "--model", ckpt, "--denoiser", "median3"), ("store", "runs")):
        code = main([*command, "--store", str(db)])
        err = capsys.readouterr().err
        assert code == 2, (command, err)
        assert err.strip().splitlines() == [err.strip()] and err.startswith(
            f"error: corrupt JSON in runs.{column} of run 1 ("), (command, err)


def test_store_corrupt_deep_inside_gives_one_line(tmp_path, capsys):
    """Corruption SQLite only meets when it reads the damaged pages (not at open)."""
    from medrobust.cli.main import main

    db = tmp_path / "s.db"
    with Store(db) as store:
        run_id, _ = store.start_run("campaign", {})
        store.put_many(ResultTable("t", {"v": "JSON"}), run_id,
                       [(i, {"v": list(range(50))}) for i in range(400)])
        store.finish_run(run_id)
    data = bytearray(db.read_bytes())
    half = len(data) // 2
    data[half:half + 8192] = np.random.default_rng(0).bytes(8192)
    db.write_bytes(bytes(data))
    code = main(["store", "export", "--table", "t", "--out", str(tmp_path / "t.csv"),
                 "--store", str(db)])
    err = capsys.readouterr().err
    assert code == 2 and err == (f"error: {db} is not a medrobust store / corrupt: database disk "
                                 "image is malformed\n")


# -- the demo is idempotent ---------------------------------------------------------------------

TINY_DEMO = ("--size", "16", "--epochs", "3", "--width", "8", "--limit", "4", "--population",
             "8", "--generations", "2", "--skip-defence")


def test_demo_twice_resumes_and_reports_each_run_once(tmp_path, capsys):
    from cli_util import run_json

    out = tmp_path / "demo"
    first = run_json(capsys, "demo", "--out", str(out), *TINY_DEMO)
    html_first = (out / "report.html").read_text()
    second = run_json(capsys, "demo", "--out", str(out), *TINY_DEMO)
    assert not first["train"]["reused"] and second["train"]["reused"]
    assert second["attack"]["run_id"] == first["attack"]["run_id"]
    assert second["attack"]["resumed"] and second["attack"]["attacked_now"] == 0
    assert second["train"]["test"] == first["train"]["test"]
    runs = _runs(out / "medrobust.db")
    assert [r[1] for r in runs] == ["train", "attack onepixel"]
    assert all(r[2] == "completed" for r in runs)
    html = (out / "report.html").read_text()
    assert html.count("<h2") == html_first.count("<h2")  # no section twice
    headings = [h for h in html.split("<h2")[1:]]
    assert len(headings) == len(set(headings))


@pytest.mark.parametrize("args,needle", [
    (("--epochs", "0"), "error: --epochs must be at least 1, got 0"),
    (("--limit", "0"), "error: --limit must be at least 1, got 0"),
    (("--generations", "0"), "error: --generations must be at least 1, got 0"),
    (("--population", "1"), "error: --population must be at least 4, got 1"),
    (("--dataset", "nosuch"), "error: unknown dataset"),
])
def test_demo_checks_its_options_before_training(tmp_path, capsys, args, needle):
    from medrobust.cli.main import main

    start = time.perf_counter()
    code = main(["demo", "--out", str(tmp_path / "demo"), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(needle) and len(err.strip().splitlines()) == 1, err
    assert time.perf_counter() - start < 10
    assert not (tmp_path / "demo" / "medrobust.db").exists()


# -- a killed train -----------------------------------------------------------------------------

def test_a_killed_train_is_taken_over_by_its_rerun(tmp_path):
    """kill -9 mid-training leaves the run ``running`` with a dead owner; the same command takes
    that run over (one run, resumed once, completed), while a rerun of a finished training is a
    run of its own. (That training itself resumes from its epoch state is tested in
    test_training_resume.py and test_robust_training.py.)"""
    db, out = tmp_path / "s.db", tmp_path / "model"
    args = [sys.executable, "-m", "medrobust.cli.main", "train", "--dataset", "synthetic",
            "--size", "16", "--width", "4", "--epochs", "3", "--batch-size", "64",
            "--out", str(out), "--store", str(db), "--seed", "1"]
    child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not _runs(db) and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.02)
        child.kill()  # SIGKILL: no handler runs, the run stays 'running'
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert _runs(db) == [(1, "train", "running")], "the kill did not land mid-training"
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _runs(db) == [(1, "train", "completed")]
    with Store(db) as store:
        assert store.get_run(1)["resumed_count"] == 1
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _runs(db) == [(1, "train", "completed"), (2, "train", "completed")]


def test_unfinished_resume_mode(tmp_path):
    with Store(tmp_path / "s.db") as store:
        first, _ = store.start_run("train", {"n": 1}, resume="unfinished")
        store.finish_run(first, "failed")
        assert store.start_run("train", {"n": 1}, resume="unfinished") == (first, True)
        store.finish_run(first, "completed")
        second, resumed = store.start_run("train", {"n": 1}, resume="unfinished")
        assert second != first and not resumed
        with pytest.raises(StoreError, match="resume must be"):
            store.start_run("train", {"n": 1}, resume="yes")
