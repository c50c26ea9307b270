"""Executors: Ray workers give the rows the in-process run gives, whatever the chunking; a worker
killed mid-chunk is retried with the same result; a driver killed between chunks resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from cli_util import run_cli

from medrobust.analysis.confidence_map import ConfidenceMap
from medrobust.attacks import OnePixel
from medrobust.attacks.pgd import PGD
from medrobust.campaigns.confidence_map import MAP_TABLE, run_map_campaign
from medrobust.campaigns.onepixel import ONEPIXEL_TABLE, run_onepixel_campaign
from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE, run_task_attack_campaign
from medrobust.data import load_dataset
from medrobust.models import load_classifier
from medrobust.store import Store
from medrobust.tasks import get_task

SRC = Path(__file__).resolve().parents[1] / "src"
ATTACK = {"population": 20, "generations": 4, "seed": 5}
N = 8
#: what differs between two runs of the same work: times and where files went
VOLATILE = {"seconds", "recorded_at", "run_id", "npz", "figure"}


def _test_split():
    return load_dataset("synthetic", "test", size=16, n=60, seed=3)


def _rows(db: Path, table) -> dict[str, dict]:
    with Store(db) as store:
        return {r["item"]: {k: v for k, v in r.items() if k not in VOLATILE}
                for r in store.rows(table)}


def _onepixel(db: Path, ckpt: Path, executor=None, batch_images: int = 3, n: int = N):
    clf = load_classifier(ckpt)
    with Store(db) as store:
        return run_onepixel_campaign(store, clf, ckpt, _test_split(), OnePixel(clf, **ATTACK),
                                     list(range(n)), batch_images=batch_images,
                                     show_progress=False, executor=executor)


def _gradient(db: Path, ckpt: Path, executor=None, batch_images: int = 4):
    clf = load_classifier(ckpt)
    ds = _test_split()
    task = get_task("classification")
    att = PGD(clf, loss=task.attack_loss(clf), eps=8 / 255, steps=3, random_start=True, seed=2,
              batch_size=batch_images)
    info = {"dir": str(ckpt)}
    with Store(db) as store:
        return run_task_attack_campaign(store, task, clf, info, ds, att, "attack pgd",
                                        {"attack": att.params()}, list(range(N)),
                                        batch_images=batch_images, show_progress=False,
                                        executor=executor)


def _map(db: Path, ckpt: Path, out: Path, executor=None, tile: int | None = None):
    clf = load_classifier(ckpt)
    with Store(db) as store:
        return run_map_campaign(store, clf, ckpt, _test_split(), [0, 3], out, step=64,
                                show_progress=False, executor=executor, tile_pixels=tile)


def _maps_equal(a: Path, b: Path, indices=(0, 3)) -> bool:
    for i in indices:
        x, y = ConfidenceMap.load(a / f"map_{i}.npz"), ConfidenceMap.load(b / f"map_{i}.npz")
        for k in ("min", "max", "mean", "argmin_colour", "argmax_colour", "success"):
            if not np.array_equal(getattr(x, k), getattr(y, k), equal_nan=True):
                return False
        if (x.clean_score, x.passes, x.score_name) != (y.clean_score, y.passes, y.score_name):
            return False
    return True


def test_executor_ray_without_ray_is_one_line(capsys, monkeypatch, checkpoint, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code, _, err = run_cli(capsys, "attack", "onepixel", "--model", str(checkpoint),
                           "--store", str(tmp_path / "s.db"), "--executor", "ray")
    assert code != 0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'medrobust[ray]'" in lines[0], err
    assert not (tmp_path / "s.db").exists()


def test_ray_options_need_executor_ray(capsys, checkpoint, tmp_path):
    code, _, err = run_cli(capsys, "map", "--model", str(checkpoint), "--out", str(tmp_path),
                           "--workers", "2")
    assert code != 0 and "--workers applies to --executor ray" in err


# ----------------------------------------------------------------------------- Ray itself

@pytest.fixture(scope="module")
def ray_local():
    """A private 2-CPU Ray instance for this module (skipped when Ray is absent)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_rows_equal_local_rows_for_any_workers_and_chunking(tmp_path, checkpoint, ray_local):
    from medrobust.campaigns.executor import RayExecutor

    _onepixel(tmp_path / "local.db", checkpoint)
    local = _rows(tmp_path / "local.db", ONEPIXEL_TABLE)
    assert len(local) == N
    for workers, batch in ((2, 2), (1, 5)):
        db = tmp_path / f"ray{workers}.db"
        out = _onepixel(db, checkpoint, RayExecutor(workers=workers), batch_images=batch)
        assert out.computed_now == N
        assert _rows(db, ONEPIXEL_TABLE) == local, (workers, batch)
    # gradient attacks with random starts: streams keyed by dataset index, not by chunk
    _gradient(tmp_path / "g_local.db", checkpoint, batch_images=3)  # the same batch shapes
    _gradient(tmp_path / "g_ray.db", checkpoint, RayExecutor(workers=2), batch_images=3)
    assert _rows(tmp_path / "g_ray.db", TASK_ATTACK_TABLE) == \
        _rows(tmp_path / "g_local.db", TASK_ATTACK_TABLE)


@pytest.mark.slow
def test_ray_map_tiles_merge_exactly(tmp_path, checkpoint, ray_local):
    from medrobust.campaigns.executor import RayExecutor

    _map(tmp_path / "local.db", checkpoint, tmp_path / "local")
    local = _rows(tmp_path / "local.db", MAP_TABLE)
    for tile in (7, 100):  # many tiles per image (rounded to packing groups), and few
        name = f"tiles{tile}"
        _map(tmp_path / f"{name}.db", checkpoint, tmp_path / name, RayExecutor(workers=2), tile)
        assert _rows(tmp_path / f"{name}.db", MAP_TABLE) == local, tile
        assert _maps_equal(tmp_path / "local", tmp_path / name)
        assert not list((tmp_path / name).glob("*.partial.npz"))


def _worker_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::Worker"):
                pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_worker_killed_mid_chunk_is_retried_with_the_same_rows(tmp_path, checkpoint, ray_local):
    from medrobust.campaigns.executor import RayExecutor

    _onepixel(tmp_path / "local.db", checkpoint, n=12)
    killed: list[int] = []

    def kill_one_busy_worker() -> None:
        deadline = time.time() + 60
        while time.time() < deadline and not killed:
            pids = _worker_pids()
            if pids:
                time.sleep(1.0)  # let it start a chunk
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.05)

    killer = threading.Thread(target=kill_one_busy_worker, daemon=True)
    killer.start()
    out = _onepixel(tmp_path / "ray.db", checkpoint, RayExecutor(workers=2, retries=3),
                    batch_images=3, n=12)
    killer.join(timeout=5)
    assert killed, "no worker was killed"
    assert out.computed_now == 12
    assert _rows(tmp_path / "ray.db", ONEPIXEL_TABLE) == _rows(tmp_path / "local.db",
                                                               ONEPIXEL_TABLE)


@pytest.mark.slow
def test_driver_killed_between_chunks_resumes_only_the_missing(tmp_path, checkpoint, ray_local):
    """A driver joined to the cluster is killed (SIGKILL) once some chunks are committed; the
    rerun computes exactly the missing images, and the rows equal an uninterrupted run's."""
    from medrobust.campaigns.executor import RayExecutor

    n = 12
    _onepixel(tmp_path / "local.db", checkpoint, n=n)
    db = tmp_path / "ray.db"
    address = ray_local.get_runtime_context().gcs_address
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(SRC)!r})
        from medrobust.attacks import OnePixel
        from medrobust.campaigns.executor import RayExecutor
        from medrobust.campaigns.onepixel import run_onepixel_campaign
        from medrobust.data import load_dataset
        from medrobust.models import load_classifier
        from medrobust.store import Store
        clf = load_classifier({str(checkpoint)!r})
        ds = load_dataset("synthetic", "test", size=16, n=60, seed=3)
        with Store({str(db)!r}) as store:
            run_onepixel_campaign(store, clf, {str(checkpoint)!r}, ds,
                                  OnePixel(clf, **{ATTACK!r}), list(range({n})),
                                  batch_images=2, show_progress=False,
                                  executor=RayExecutor(address={address!r}, workers=1))
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        before = 0
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                before = len(_rows(db, ONEPIXEL_TABLE))
                if before >= 2:
                    break
            time.sleep(0.1)
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    before = len(_rows(db, ONEPIXEL_TABLE))
    assert 2 <= before < n, before
    out = _onepixel(db, checkpoint, RayExecutor(workers=2), batch_images=2, n=n)
    assert out.resumed and out.computed_now == n - before
    assert _rows(db, ONEPIXEL_TABLE) == _rows(tmp_path / "local.db", ONEPIXEL_TABLE)


@pytest.mark.slow
def test_two_node_cluster_gives_the_local_rows(tmp_path, checkpoint):
    """Two raylets on this machine (ray.cluster_utils.Cluster); the checkpoint travels as bytes
    through the object store, as it would to another machine."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    from medrobust.campaigns.executor import RayExecutor

    _onepixel(tmp_path / "local.db", checkpoint)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2
        ex = RayExecutor(address=cluster.address, workers=2)
        _onepixel(tmp_path / "ray.db", checkpoint, ex, batch_images=2)
        assert _rows(tmp_path / "ray.db", ONEPIXEL_TABLE) == _rows(tmp_path / "local.db",
                                                                   ONEPIXEL_TABLE)
    finally:
        ray.shutdown()
        cluster.shutdown()
