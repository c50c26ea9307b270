"""Shared helpers for medrobust's benchmarks: cached models, image selection, query counting.

Nothing here is part of the package; benchmarks import it as a sibling module
(``from common import ...``) because they are run as scripts from the project root.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medrobust.data import ImageDataset, load_dataset
from medrobust.models.checkpoint import load_classifier, read_meta
from medrobust.models.classifier import Classifier
from medrobust.training.evaluate import evaluate_classifier
from medrobust.training.trainer import TrainConfig, save_trained, train_classifier

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_CACHE = BENCH_DIR / ".cache"
DEFAULT_DATA_DIR = BENCH_DIR.parent.parent / "shared" / "data"
#: ../shared/data, or where MEDROBUST_SHARED_DATA points (as for the tests)
SHARED_DATA = Path(os.environ.get("MEDROBUST_SHARED_DATA", DEFAULT_DATA_DIR))


def cli(*args: str) -> dict[str, Any]:
    """One ``medrobust`` command with ``--json``, as a user runs it; its summary (a failure
    stops the benchmark with the command's last error lines)."""
    import subprocess
    import sys

    print("$ medrobust " + " ".join(args), flush=True)
    proc = subprocess.run([sys.executable, "-m", "medrobust.cli.main", *args, "--json"],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(args)}\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def train_once(out: Path, *args: str) -> None:
    """``medrobust train ... --out OUT`` unless OUT already holds a checkpoint: ``train``
    retrains a finished model (a new checkpoint, so every attack on it would start over), and
    a benchmark that is rerun must attack the model its earlier results came from."""
    if not (Path(out) / "meta.json").is_file():
        cli("train", *args, "--out", str(out))


def git_commit() -> str:
    """The short commit a result was measured at ("" outside a git checkout)."""
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=BENCH_DIR, check=False).stdout.strip()
    except OSError:
        return ""


# --- environment ------------------------------------------------------------------------------
def set_threads(n: int) -> None:
    """Pin torch's intra-op threads (and the BLAS/OpenMP hint for anything started later)."""
    torch.set_num_threads(n)
    os.environ.setdefault("OMP_NUM_THREADS", str(n))


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def machine_info(device: str, packages: Sequence[str] = ()) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, load, threads, library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {p: _version(p) for p in ("medrobust", "torch", "numpy", "scipy", *packages)},
    }
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def load_average() -> list[float] | None:
    return [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None


# --- models ------------------------------------------------------------------------------------
def cached_model(dataset: str, data_dir: str | Path, *, cache_dir: str | Path = DEFAULT_CACHE,
                 model: str = "smallcnn", width: int | None = None, epochs: int = 10,
                 seed: int = 0, device: str = "cpu", batch_size: int | None = None
                 ) -> tuple[Classifier, dict[str, Any]]:
    """A trained classifier for ``dataset`` from the cache, training it there first if absent.

    Training goes through medrobust's own API (``train_classifier`` + ``save_trained``) on the
    train split with validation-based selection; test accuracy is recorded in the checkpoint.
    ``batch_size`` is the loaded Classifier's forward batch (medrobust pads to it exactly).
    Returns the classifier and a summary (test accuracy, best epoch, training seconds, path).
    """
    kwargs = {} if width is None else {"width": int(width)}
    tag = f"{dataset}-{model}" + (f"-w{width}" if width is not None else "") + f"-e{epochs}-s{seed}"
    ckpt = Path(cache_dir) / tag
    if not (ckpt / "meta.json").is_file():
        train = load_dataset(dataset, "train", data_dir=data_dir)
        val = load_dataset(dataset, "val", data_dir=data_dir)
        test = load_dataset(dataset, "test", data_dir=data_dir)
        config = TrainConfig(model=model, model_kwargs=kwargs, epochs=epochs, seed=seed)
        print(f"[bench] training {tag} on {len(train)} images (cached afterwards in {ckpt})",
              flush=True)
        result = train_classifier(train, val, config, device=device)
        test_metrics = evaluate_classifier(result.classifier, test)
        test_metrics.pop("dataset", None)
        save_trained(result, config, train, ckpt, extra={"test": test_metrics})
    meta = read_meta(ckpt)
    clf = load_classifier(ckpt, device=device, batch_size=batch_size)
    test_m = meta.get("metrics", {}).get("test", {})
    summary = {
        "checkpoint": str(ckpt),
        "model": meta["model"],
        "model_kwargs": meta.get("model_kwargs", {}),
        "epochs": meta.get("train_config", {}).get("epochs"),
        "best_epoch": meta.get("best_epoch"),
        "train_seconds": round(float(meta.get("train_seconds", 0.0)), 1),
        "val_accuracy": meta.get("metrics", {}).get("val", {}).get("accuracy"),
        "test_accuracy": test_m.get("accuracy"),
        "test_auc": test_m.get("auc"),
    }
    return clf, summary


# --- images ------------------------------------------------------------------------------------
def pick_correct(clf: Classifier, ds: ImageDataset, n: int, seed: int
                 ) -> tuple[np.ndarray, dict[str, Any]]:
    """Indices of ``n`` correctly classified images, seeded, balanced over classes (round robin).

    Misclassified images are skipped for every method alike, so all methods attack the same set.
    """
    pred = clf.predict(ds.images)
    correct = pred == ds.labels
    rng = np.random.default_rng(seed)
    pools = [list(rng.permutation(np.flatnonzero(correct & (ds.labels == k))))
             for k in range(ds.num_classes)]
    chosen: list[int] = []
    while len(chosen) < n and any(pools):
        for pool in pools:
            if pool and len(chosen) < n:
                chosen.append(int(pool.pop(0)))
    info = {"test_images": len(ds), "correct": int(correct.sum()),
            "accuracy": float(correct.mean())}
    return np.asarray(chosen, dtype=np.int64), info


# --- measuring ---------------------------------------------------------------------------------
class QueryCounter:
    """Counts the samples (rows) and calls that pass through ``module.forward``.

    A forward pre-hook, so it sees every evaluation whichever library makes it; nothing about the
    module changes. Use as a context manager, or ``attach``/``detach``.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.rows = 0
        self.calls = 0
        self._handle: Any = None

    def _hook(self, _module: nn.Module, args: tuple[Any, ...]) -> None:
        self.rows += int(args[0].shape[0])
        self.calls += 1

    def attach(self) -> QueryCounter:
        if self._handle is None:
            self._handle = self.module.register_forward_pre_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def reset(self) -> tuple[int, int]:
        out = (self.rows, self.calls)
        self.rows = self.calls = 0
        return out

    def __enter__(self) -> QueryCounter:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


@contextmanager
def stopwatch() -> Iterator[dict[str, float]]:
    """``with stopwatch() as t: ...`` then ``t["seconds"]`` (perf_counter wall clock)."""
    out = {"seconds": 0.0}
    start = time.perf_counter()
    try:
        yield out
    finally:
        out["seconds"] = time.perf_counter() - start


def median(values: Sequence[float]) -> float | None:
    vals = [v for v in values if v is not None and np.isfinite(v)]
    return float(statistics.median(vals)) if vals else None


def changed_pixels(original: np.ndarray, adversarial: np.ndarray, atol: float = 1e-6) -> int:
    """Number of (row, column) positions where any channel differs; both (H,W,C) float [0,1]."""
    diff = np.abs(np.asarray(adversarial, np.float64) - np.asarray(original, np.float64)) > atol
    return int(diff.any(axis=-1).sum())


# --- output ------------------------------------------------------------------------------------
def write_json(path: str | Path, data: Any) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return p


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON-able: {type(obj)}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
