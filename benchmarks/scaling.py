"""Scaling of campaigns over Ray workers: measured here, projected to a cluster.

Measures, on this machine and in one run (so the ratios compare like with like):

* the one-pixel campaign and a confidence map in process with 2 torch threads, and on Ray with
  2 workers x 1 thread, 1 worker x 1 thread and 1 worker x 2 threads (throughput and the
  2-vs-1-worker ratio; which threads layout to default to);
* Ray's per-job overhead (trivial jobs through the same executor);
* the per-pixel cost of a full step-5 map (140,608 colours per pixel) on a 64x64 RGB model, and
  from it the projected time of a full 64x64 map (576 million scores) on N workers;
* the equality check on a simulated two-node cluster (``ray.cluster_utils.Cluster``, two
  raylets): Ray rows equal local rows, the checkpoint shipped as bytes.

Run: ``.venv/bin/python benchmarks/scaling.py [--quick] [--repeats 3]``; writes
benchmarks/results/scaling.json (``scaling_quick.json`` with --quick). The layouts run in
interleaved rounds and medians are reported; the load average at start and end is recorded,
since other processes on the machine share the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medrobust.analysis.confidence_map import colour_grid, confidence_map
from medrobust.attacks import OnePixel
from medrobust.campaigns.confidence_map import MAP_TABLE, run_map_campaign
from medrobust.campaigns.executor import RayExecutor, Work
from medrobust.campaigns.onepixel import ONEPIXEL_TABLE, run_onepixel_campaign
from medrobust.data import load_dataset
from medrobust.models import load_classifier
from medrobust.store import Store
from medrobust.training import TrainConfig, save_trained, train_classifier

RESULTS = Path(__file__).resolve().parent / "results"
VOLATILE = {"seconds", "recorded_at", "run_id", "npz", "figure"}


def checkpoint(root: Path, size: int) -> Path:
    """A narrow smallcnn on synthetic RGB data of ``size`` (weights do not change the cost)."""
    out = root / f"ckpt{size}"
    if not (out / "meta.json").is_file():
        train = load_dataset("synthetic", "train", size=size, n=200, seed=3)
        val = load_dataset("synthetic", "val", size=size, n=60, seed=3)
        cfg = TrainConfig(model="smallcnn", model_kwargs={"width": 8}, epochs=1, seed=0)
        save_trained(train_classifier(train, val, cfg), cfg, train, out)
    return out


def rows(db: Path, table: Any) -> dict[str, dict[str, Any]]:
    with Store(db) as store:
        return {r["item"]: {k: v for k, v in r.items() if k not in VOLATILE}
                for r in store.rows(table)}


def onepixel_run(db: Path, ckpt: Path, n: int, attack: dict[str, Any], executor: Any,
                 batch: int) -> float:
    db.unlink(missing_ok=True)
    clf = load_classifier(ckpt)
    ds = load_dataset("synthetic", "test", size=16, n=max(n, 60), seed=3)
    t0 = time.perf_counter()
    with Store(db) as store:
        run_onepixel_campaign(store, clf, ckpt, ds, OnePixel(clf, **attack), list(range(n)),
                              batch_images=batch, show_progress=False, executor=executor)
    return time.perf_counter() - t0


def map_run(db: Path, out: Path, ckpt: Path, images: list[int], step: int, executor: Any,
            tile: int) -> float:
    db.unlink(missing_ok=True)
    clf = load_classifier(ckpt)
    ds = load_dataset("synthetic", "test", size=16, n=60, seed=3)
    t0 = time.perf_counter()
    with Store(db) as store:
        run_map_campaign(store, clf, ckpt, ds, images, out, step=step, show_progress=False,
                         executor=executor, tile_pixels=tile)
    return time.perf_counter() - t0


# trivial work for the per-job overhead (defined in __main__: Ray ships it by value)
def _noop_context(model: Any, data: Any, params: dict[str, Any]) -> None:
    return None


def _noop(ctx: Any, job: Any, emit: Any) -> tuple[list[Any], None]:
    return [], None


def overhead(ckpt: Path, jobs: int, workers: int) -> dict[str, float]:
    """Seconds per trivial job through RayExecutor (ray already initialised), after warm-up."""
    work = Work(compute=_noop, local=lambda: None, remote=_noop_context, params={},
                model_dir=ckpt, data={"images": np.zeros((1, 1, 1, 1), np.uint8)})
    ex = RayExecutor(workers=workers)
    t0 = time.perf_counter()
    ex.run(work, [0] * workers, lambda *a: None)  # actor start-up + model load
    startup = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex.run(work, list(range(jobs)), lambda *a: None)
    total = time.perf_counter() - t0  # the actors are live: this is the per-job cost
    ex.close()
    return {"startup_seconds": startup, "jobs": jobs, "seconds_per_job": total / jobs}


def per_pixel_cost(ckpt64: Path, pixels: int, threads: int) -> dict[str, Any]:
    """Seconds per pixel of a step-5 map (140,608 colours) on a 64x64 RGB image."""
    torch.set_num_threads(threads)
    clf = load_classifier(ckpt64)
    ds = load_dataset("synthetic", "test", size=64, n=4, seed=3)
    # pixels spread over the image: border pixels have smaller cones
    rng = np.random.default_rng(0)
    flat = rng.choice(64 * 64, size=pixels, replace=False)
    chosen = [(int(p % 64), int(p // 64)) for p in flat]
    t0 = time.perf_counter()
    confidence_map(clf, ds.images[0], int(ds.labels[0]), step=5, pixels=chosen)
    sec = (time.perf_counter() - t0) / pixels
    n_col = colour_grid(5, 3).shape[0]
    return {"threads": threads, "pixels_measured": pixels, "colours": n_col,
            "seconds_per_pixel": sec, "scores_per_second": n_col / sec}


def project(sec_per_pixel: float, job_overhead: float, startup: float
            ) -> list[dict[str, Any]]:
    """A full step-5 64x64 RGB map (4096 pixels x 140,608 colours = 576 million scores) on N
    single-thread workers, each on a core of its own: tiles of at most 256 pixels, at least 4 per
    worker; time = start-up + rounds of tiles x (tile pixels x seconds per pixel + per-job
    overhead)."""
    pixels = 64 * 64
    out = []
    for n in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        tile = max(1, min(256, pixels // (4 * n)))
        tiles = -(-pixels // tile)
        rounds = -(-tiles // n)
        seconds = startup + rounds * (tile * sec_per_pixel + job_overhead)
        out.append({"workers": n, "tile_pixels": tile, "tiles": tiles, "hours": seconds / 3600})
    return out


def cluster_equality(ckpt: Path, n: int, attack: dict[str, Any], root: Path) -> dict[str, Any]:
    import ray
    from ray.cluster_utils import Cluster

    onepixel_run(root / "c_local.db", ckpt, n, attack, None, 3)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        nodes = len([x for x in ray.nodes() if x["Alive"]])
        seconds = onepixel_run(root / "c_ray.db", ckpt, n, attack,
                               RayExecutor(address=cluster.address, workers=2), 2)
        equal = rows(root / "c_ray.db", ONEPIXEL_TABLE) == rows(root / "c_local.db",
                                                                 ONEPIXEL_TABLE)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return {"nodes": nodes, "workers": 2, "images": n, "rows_equal_local": equal,
            "checkpoint": "bytes through the object store", "seconds": seconds}


def _median(values: list[float]) -> float:
    return float(np.median(values))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (about 2 minutes)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="rounds of every layout, interleaved; medians are reported")
    args = ap.parse_args()
    import ray

    quick = args.quick
    n_img = 8 if quick else 16
    attack = {"population": 40 if quick else 100, "generations": 5 if quick else 10, "seed": 1}
    map_images, map_step = ([0, 1], 64) if quick else ([0, 1], 32)
    root = Path(tempfile.mkdtemp(prefix="medrobust-scaling-"))
    ckpt, ckpt64 = checkpoint(root, 16), checkpoint(root, 64)
    result: dict[str, Any] = {"quick": quick, "repeats": args.repeats,
                              "machine": {"cpus": os.cpu_count(),
                                          "platform": platform.platform()},
                              "load_average_at_start": list(os.getloadavg())}
    torch.set_num_threads(2)
    map_run(root / "warm.db", root / "warm", ckpt, [5], 128, None, 64)  # imports, first figure
    # The actors of every layout stay up between rounds (5 CPUs' worth of reservations); only
    # one layout works at a time, so Ray is told of 8 logical CPUs while the machine has 2.
    ray.init(address="local", num_cpus=8, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    layouts = {"1x1": (1, 1), "2x1": (2, 1), "1x2": (1, 2)}
    times: dict[str, dict[str, list[float]]] = {name: {"onepixel": [], "map": []}
                                                for name in ("local", *layouts)}
    equal = {name: {"onepixel": True, "map": True} for name in layouts}
    try:
        ov = overhead(ckpt, 40 if quick else 200, 2)
        executors = {name: RayExecutor(workers=w, threads_per_worker=t)
                     for name, (w, t) in layouts.items()}
        for name, ex in executors.items():  # actors up and the model loaded: steady state
            onepixel_run(root / f"warm_{name}.db", ckpt, 2 * layouts[name][0], attack, ex, 1)
        # Interleaved rounds: every layout once per round, so a burst of load elsewhere on the
        # machine hits all of them alike; medians over the rounds.
        for _ in range(args.repeats):
            torch.set_num_threads(2)
            times["local"]["onepixel"].append(
                onepixel_run(root / "op_local.db", ckpt, n_img, attack, None, 4))
            times["local"]["map"].append(map_run(root / "m_local.db", root / "m_local", ckpt,
                                                 map_images, map_step, None, 64))
            base_rows = rows(root / "op_local.db", ONEPIXEL_TABLE)
            base_maps = rows(root / "m_local.db", MAP_TABLE)
            for name, ex in executors.items():
                times[name]["onepixel"].append(onepixel_run(root / f"op_{name}.db", ckpt, n_img,
                                                            attack, ex, 2))
                times[name]["map"].append(map_run(root / f"m_{name}.db", root / f"m_{name}",
                                                  ckpt, map_images, map_step, ex, 64))
                equal[name]["onepixel"] &= rows(root / f"op_{name}.db",
                                                ONEPIXEL_TABLE) == base_rows
                equal[name]["map"] &= rows(root / f"m_{name}.db", MAP_TABLE) == base_maps
        for ex in executors.values():
            ex.close()
    finally:
        ray.shutdown()
    n_col = colour_grid(map_step, 3).shape[0]
    map_scores = len(map_images) * 16 * 16 * n_col
    med = {name: {k: _median(v) for k, v in t.items()} for name, t in times.items()}
    result["onepixel"] = {"images": n_img, "attack": attack}
    result["map"] = {"images": map_images, "step": map_step, "size": "16x16 RGB",
                     "tile_pixels": 64, "scores": map_scores}
    result["seconds"] = times
    result["median_seconds"] = med
    result["throughput"] = {name: {"onepixel_images_per_second": n_img / m["onepixel"],
                                   "map_scores_per_second": map_scores / m["map"]}
                            for name, m in med.items()}
    result["rows_equal_local"] = equal
    result["ray_overhead"] = ov
    result["speedup_2_vs_1_worker"] = {
        k: med["1x1"][k] / med["2x1"][k] for k in ("onepixel", "map")}
    result["threads_choice"] = {
        "onepixel_2x1_over_1x2": med["1x2"]["onepixel"] / med["2x1"]["onepixel"],
        "map_2x1_over_1x2": med["1x2"]["map"] / med["2x1"]["map"],
        "onepixel_2x1_over_local_2_threads": med["local"]["onepixel"] / med["2x1"]["onepixel"],
        "map_2x1_over_local_2_threads": med["local"]["map"] / med["2x1"]["map"]}
    # --- per-pixel cost of a full step-5 map, and the projection -----------------------------
    cost = per_pixel_cost(ckpt64, 2 if quick else 6, 1)
    result["step5_64x64"] = {**cost, "scores_total": 64 * 64 * cost["colours"],
                             "projection": project(cost["seconds_per_pixel"],
                                                   ov["seconds_per_job"], ov["startup_seconds"])}
    result["cluster_two_raylets"] = cluster_equality(ckpt, 6 if quick else 12, attack, root)
    result["load_average_at_end"] = list(os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / ("scaling_quick.json" if quick else "scaling.json")
    path.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
