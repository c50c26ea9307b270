"""One way to train any task: ``medrobust train`` and ``demo`` both come here.

The task (``medrobust.tasks``) says which options it takes, how it trains, scores and saves;
this module opens the three splits, checks before the run opens what would otherwise fail
inside it, records the run (a killed one is taken over by the same command, which resumes from
the last finished epoch in the checkpoint folder) and writes the checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from medrobust.data import load_dataset
from medrobust.data.registry import check_classes_apply
from medrobust.errors import ConfigError
from medrobust.models.checkpoint import read_meta, save_model
from medrobust.store import Store, check_store_path, run_fingerprint
from medrobust.tasks import TASKS, Task, get_task
from medrobust.training.resume import EpochState
from medrobust.utils.device import resolve_device
from medrobust.utils.validation import check_writable


@dataclass(frozen=True)
class DataRequest:
    """Which data to open: a registered dataset (None: the task's first), where, at what size."""

    name: str | None = None
    data_dir: str | None = None
    size: int | None = None
    verify: bool = True
    #: classes to keep, in label order (datasets that can pick them, e.g. BCCD)
    classes: tuple[str, ...] | None = None
    #: files with intensities beyond 8 bits (DICOM, NIfTI): the window "centre,width" mapped
    #: to 0..255, and the axis 3D volumes are sliced along (None: the loader's defaults)
    window: str | None = None
    axis: str | None = None

    def open(self, task: Task, split: str) -> Any:
        """A split for ``task``: a dataset another task lists is refused, naming that task."""
        name = self.name or task.datasets[0]
        owner = next((t.name for t in TASKS.values() if name in t.datasets), None)
        if name not in task.datasets and owner is not None:
            raise ConfigError(f"{task.name} trains on {', '.join(task.datasets)}, not {name!r} "
                              f"(a {owner} dataset: use --task {owner})")
        return replace(self, name=name).load(split)

    def load(self, split: str) -> Any:
        """The split of the named dataset with every option of the request."""
        if self.name is None:
            raise ConfigError("--dataset is required")
        options: dict[str, Any] = {"size": self.size}
        if not self.verify:
            options["verify"] = False
        check_classes_apply(self.name, self.classes)
        if self.classes is not None:
            options["classes"] = tuple(self.classes)
        for key in ("window", "axis"):
            if getattr(self, key) is not None:
                options[key] = getattr(self, key)
        return load_dataset(self.name, split, data_dir=self.data_dir, **options)


@dataclass(frozen=True)
class TrainRequest:
    """One training job: the task, its data, the options the user set (absent or None: the
    task's default), the checkpoint folder and the run store."""

    task: str
    data: DataRequest
    out: str | Path
    store: str | Path
    options: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"


def resolve(request: TrainRequest) -> tuple[Task, dict[str, Any]]:
    """The task and every training option, checked before any data is opened."""
    task = get_task(request.task)
    start = None
    xi_from = request.options.get("xi_from")
    if xi_from:
        meta = read_meta(xi_from)
        # a checkpoint of another task gets its own message from the robust options' check
        start = meta if meta.get("task", "classification") == task.name else None
    options = task.training_options({**request.options, "out_dir": str(request.out)}, start)
    task.check_size(request.data.size)
    return task, options


def check_outputs(out: str | Path, store_path: str | Path) -> None:
    """The checkpoint folder and the store must be writable (and the store a medrobust one)
    before data is loaded or a run is recorded."""
    check_writable("--out", out, folder=True)
    check_store_path(store_path)


def run_record(task: Task, options: dict[str, Any], out: str | Path
               ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(params, model) a training run is recorded with: what identifies it for a resume."""
    checkpoint = str(Path(out).resolve())
    return ({"task": task.name, **options},
            {"dir": checkpoint, "model": task.model_name(options), "task": task.name})


def train_model(request: TrainRequest) -> dict[str, Any]:
    """Train on train, select on val, score test, save the checkpoint, record the run; the
    JSON summary (``run_id`` added). A stopped run is resumed by the same request."""
    check_outputs(request.out, request.store)
    task, options = resolve(request)
    train_ds, val_ds, test_ds = (request.data.open(task, s) for s in ("train", "val", "test"))
    task.check_training(train_ds, val_ds, options)
    params, model_record = run_record(task, options, request.out)
    with Store(request.store) as store, store.tracked_run(
            "train", params, model=model_record, dataset=train_ds.spec,
            resume="unfinished") as (run_id, _):
        model, trained = task.train(train_ds, val_ds, options, resolve_device(request.device))
        test = task.evaluate(model, test_ds)
        test.pop("dataset", None)  # the summary names the dataset once
        meta = task.saved_meta(trained, train_ds, options, test)
        save_model(model, request.out, meta)
        EpochState(request.out, None).clear()
        summary = {"checkpoint": model_record["dir"], "task": task.name,
                   "model": model_record["model"], "dataset": train_ds.spec,
                   "train_seconds": trained["train_seconds"],
                   **({"train_cpu_seconds": trained["train_cpu_seconds"]}
                      if "train_cpu_seconds" in trained else {}),
                   "epochs": options.get("epochs"), "epochs_run": trained["epochs_run"],
                   "best_epoch": trained["best_epoch"],
                   "sizes": {"train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
                   "val": trained["val"], "test": test,
                   **({"robust": meta["robust"]} if "robust" in meta else {})}
        store.finish_run(run_id, "completed", summary)
    summary["run_id"] = run_id
    return summary


def finished_training(request: TrainRequest) -> dict[str, Any] | None:
    """The summary of a completed training of exactly this request whose checkpoint is still
    the one it wrote (``reused`` set), else None; ``demo`` reuses it.

    Retraining would write a new checkpoint (a new ``saved_at``), which changes the fingerprint
    of every later run: attacks would start over and the report would list everything twice.
    """
    out = Path(request.out)
    if not Path(request.store).is_file() or not (out / "meta.json").is_file():
        return None
    task, options = resolve(request)
    train_ds = request.data.open(task, "train")
    params, model_record = run_record(task, options, out)
    fingerprint = run_fingerprint("train", params, model_record, train_ds.spec)
    with Store(request.store) as store:
        run = store.find_run(fingerprint, status="completed")
        later = [r for r in store.runs("train") if run is not None and r["id"] > run["id"]
                 and isinstance(r.get("model"), dict)
                 and r["model"].get("dir") == model_record["dir"]]
    if run is None or not isinstance(run.get("summary"), dict):
        return None
    summary = run["summary"]
    if summary.get("checkpoint") != model_record["dir"] or "test" not in summary:
        return None
    if later or read_meta(out).get("saved_at") is None:  # rewritten since: trust nothing
        return None
    return {**summary, "run_id": run["id"], "reused": True}
