"""Every command on a GPU (``--device cuda``), and GPU results that agree with the CPU's.

Skipped without CUDA, so CI (CPU only) never depends on a GPU; run on a GPU machine with
``pytest -m gpu tests/test_gpu.py``. Each task trains for an epoch on tiny data, then every
attack, map, defence and robust-training command that applies runs on the GPU; where the GPU
can be checked against the CPU (maps, the one-pixel attack's two engines) it is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_json
from test_detection import _voc
from test_landmarks import make_folder as landmark_folder
from test_segmentation import make_folder as seg_folder

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA device")]

GPU = ("--device", "cuda")


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory) -> tuple[Path, str]:
    from cli_util import CapturedOutput

    root = tmp_path_factory.mktemp("gpu_cls")
    db = str(root / "s.db")
    with CapturedOutput() as cap:
        out = run_json(cap, "train", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                       "--width", "8", "--out", str(root / "m"), "--store", db, *GPU)
    assert 0 <= out["test"]["accuracy"] <= 1
    return root / "m", db


def test_classifier_commands_run_on_the_gpu(classifier_ckpt, capsys, tmp_path):
    ckpt, db = classifier_ckpt
    assert run_json(capsys, "evaluate", "--model", str(ckpt), "--store", db, *GPU)["accuracy"] >= 0
    attack = ("attack", "onepixel", "--model", str(ckpt), "--limit", "6", "--population", "32",
              "--generations", "3", "--no-resume", *GPU)
    fast = run_json(capsys, *attack, "--engine", "fast", "--store", db)
    ref = run_json(capsys, *attack, "--engine", "reference", "--store", str(tmp_path / "r.db"))
    assert fast["images"] == ref["images"] == 6
    assert fast["successes"] == ref["successes"]  # both engines agree on the GPU too
    for name in ("pgd", "ifgsm"):
        out = run_json(capsys, "attack", name, "--model", str(ckpt), "--limit", "4", "--eps",
                       "8/255", "--steps", "3", "--store", db, *GPU)
        assert out["images"] == 4
    den = tmp_path / "den"
    run_json(capsys, "train-denoiser", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
             "--max-train", "64", "--out", str(den), "--store", db, *GPU)
    out = run_json(capsys, "defend", "--model", str(ckpt), "--denoiser", f"{den},median3",
                   "--clean-limit", "16", "--adaptive", "--adaptive-limit", "4", "--attacks",
                   "onepixel,pgd-linf,square-linf", "--square-queries", "20",
                   "--onepixel-population", "16", "--onepixel-generations", "2",
                   "--pgd-steps", "3", "--store", db, *GPU)
    assert out["adaptive"][0]["label"] == "none" and len(out["adaptive"]) == 3
    for row in out["adaptive"]:  # every attack at every budget, within [0, its clean accuracy]
        assert set(row["pgd-linf"]) == set(row["square-linf"]) and len(row["pgd-linf"]) == 4
        assert all(0 <= v <= row["clean"] for v in row["pgd-linf"].values())
    out = run_json(capsys, "evaluate", "--model", str(ckpt), "--attack", "pgd,apgd-ce",
                   "--linf", "4/255", "--steps", "3", "--limit", "4", "--store", db, *GPU)
    assert [c["attack"] for c in out["cells"]] == ["pgd", "apgd-ce"]
    assert all(c["images"] == 4 and c["attacked"] <= c["clean"] for c in out["cells"])


def test_maps_on_the_gpu_equal_the_cpu_maps(classifier_ckpt, capsys, tmp_path):
    ckpt, _ = classifier_ckpt
    maps = {}
    for where, dev in (("gpu", "cuda"), ("cpu", "cpu")):
        out = run_json(capsys, "map", "--model", str(ckpt), "--index", "2", "--step", "51",
                       "--out", str(tmp_path / where), "--store", str(tmp_path / f"{where}.db"),
                       "--device", dev)
        assert out["maps"][0]["passes"] == 16 * 16 * 216
        maps[where] = np.load(tmp_path / where / "map_2.npz")
    for field in ("min", "max", "mean"):
        assert np.abs(maps["gpu"][field] - maps["cpu"][field]).max() < 1e-5, field
    assert np.array_equal(maps["gpu"]["success"], maps["cpu"]["success"])


def test_robust_training_runs_on_the_gpu(classifier_ckpt, capsys, tmp_path):
    ckpt, _ = classifier_ckpt
    out = run_json(capsys, "train", "--dataset", "synthetic", "--size", "16", "--epochs", "1",
                   "--width", "8", "--robust", "adaptive-margin", "--delta", "0.1",
                   "--xi-from", str(ckpt), "--out", str(tmp_path / "am"), "--store",
                   str(tmp_path / "s.db"), *GPU)
    assert 0 <= out["test"]["accuracy"] <= 1


def test_segmentation_and_asma_run_on_the_gpu(capsys, tmp_path):
    root = seg_folder(tmp_path / "data", 16, [(30, 26), (36, 36)], colour=True, seed=2)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "unet")
    run_json(capsys, "train", "--task", "segmentation", "--dataset", "segfolder", "--data-dir",
             str(root), "--size", "24", "--epochs", "1", "--batch-size", "8", "--out", ck,
             "--store", db, *GPU)
    out = run_json(capsys, "attack", "asma", "--task", "segmentation", "--model", ck, "--split",
                   "train", "--limit", "2", "--iterations", "3", "--target-mode", "erase-one",
                   "--store", db, *GPU)
    assert out["attacked_now"] == 2
    out = run_json(capsys, "attack", "pgd", "--task", "segmentation", "--model", ck, "--dataset",
                   "segfolder", "--data-dir", str(root), "--split", "train", "--limit", "2",
                   "--eps", "4/255", "--steps", "2", "--store", db, *GPU)
    assert out["mean_linf"] <= 4 / 255 + 1e-6


def test_landmarks_run_on_the_gpu(capsys, tmp_path):
    landmark_folder(tmp_path / "lm", n=16, h=24, w=20)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "m")
    out = run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
                   str(tmp_path / "lm"), "--size", "24", "--epochs", "1", "--width", "2",
                   "--out", ck, "--store", db, *GPU)
    assert np.isfinite(out["test"]["mre"])
    out = run_json(capsys, "attack", "pgd", "--model", ck, "--split", "test", "--norm", "l2",
                   "--eps", "2", "--steps", "2", "--store", db, *GPU)
    assert np.isfinite(out["adv_mre"])


def test_detection_runs_on_the_gpu(capsys, tmp_path):
    pytest.importorskip("pycocotools")
    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0)]
             for k in range(8)}
    _voc(tmp_path / "voc", boxes, {"train": [f"i{k}" for k in range(5)], "val": ["i5", "i6"],
                                   "test": ["i7"]})
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "m")
    out = run_json(capsys, "train", "--task", "detection", "--dataset", "voc", "--data-dir",
                   str(tmp_path / "voc"), "--size", "32", "--epochs", "1", "--width", "4",
                   "--out", ck, "--store", db, *GPU)
    assert 0 <= out["test"]["map"] <= 1
    out = run_json(capsys, "attack", "pgd", "--model", ck, "--split", "test", "--norm", "l2",
                   "--eps", "2", "--steps", "2", "--store", db, *GPU)
    assert out["images"] >= 1


def test_ray_workers_holding_the_gpu_give_the_local_gpu_rows(classifier_ckpt, capsys, tmp_path):
    """--gpus-per-worker: two Ray actors share the GPU (half each) and return the rows the
    in-process GPU run writes. Had a worker run on the CPU instead, its float scores would
    differ in the last bits and the rows with them."""
    ray = pytest.importorskip("ray")
    from medrobust.campaigns.onepixel import ONEPIXEL_TABLE
    from medrobust.store import Store

    ckpt, _ = classifier_ckpt
    args = ("attack", "onepixel", "--model", str(ckpt), "--limit", "6", "--population", "32",
            "--generations", "3", "--batch-images", "2", *GPU)
    run_json(capsys, *args, "--store", str(tmp_path / "local.db"))
    try:
        out = run_json(capsys, *args, "--store", str(tmp_path / "ray.db"), "--executor", "ray",
                       "--address", "local", "--workers", "2", "--gpus-per-worker", "0.5")
        assert ray.cluster_resources().get("GPU", 0) >= 1
    finally:
        ray.shutdown()
    assert out["images"] == 6
    volatile = {"seconds", "recorded_at", "run_id"}
    rows = {}
    for name in ("local", "ray"):
        with Store(tmp_path / f"{name}.db") as store:
            rows[name] = {r["item"]: {k: v for k, v in r.items() if k not in volatile}
                          for r in store.rows(ONEPIXEL_TABLE)}
    assert len(rows["local"]) == 6 and rows["ray"] == rows["local"]
