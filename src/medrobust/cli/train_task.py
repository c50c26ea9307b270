"""The body of ``medrobust train --task landmarks|detection``: one path for tasks in the registry.

The task (``medrobust.tasks``) says how it trains and is scored; this file only opens the data,
records the run and saves the checkpoint. Options the user did not set take the task's defaults,
not the classification defaults of ``train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from medrobust.cli.common import check_outputs, emit, open_dataset
from medrobust.errors import ConfigError
from medrobust.models.checkpoint import save_model
from medrobust.store import Store
from medrobust.tasks import get_task
from medrobust.training.resume import EpochState
from medrobust.utils.device import resolve_device

#: ``train``'s options that are also task options (same name, same meaning)
SHARED = ("epochs", "batch_size", "lr", "width", "minutes", "heatmap_loss", "seed")


def task_options(ctx: click.Context, task_name: str) -> dict[str, Any]:
    """The task's options with what the user set on the command line."""
    task = get_task(task_name)
    p = ctx.params

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, None)

    for name in ("padding", "model_name", "augment"):
        if given(name):
            raise ConfigError(f"--{name.replace('_name', '').replace('_', '-')} does not apply "
                              f"to {task_name} training")
    chosen = {k: p[k] for k in SHARED if k in p and (given(k) or k == "seed")}
    if p.get("xi_from") and not given("width"):
        # robust fine-tuning starts from that checkpoint: build its network, not the default
        from medrobust.models import read_meta

        width = (read_meta(p["xi_from"]).get("model_kwargs") or {}).get("width")
        if width is not None:
            chosen["width"] = width
    from medrobust.cli.robust_options import robust_options

    chosen.update({k: v for k, v in robust_options(p).items() if v is not None})
    chosen["out_dir"] = str(p["out"]) if p.get("out") is not None else None
    options = task.check_options(chosen)
    from medrobust.tasks.robust import robust_config

    robust_config(options, task_name)  # bad robust settings stop here, before data is opened
    task.check_size(p.get("size"))
    return options


def train_task_and_save(task_name: str, dataset: str | None, data_dir: str | None,
                        size: int | None, options: dict[str, Any], out: str | Path, device: str,
                        store_path: str | Path) -> dict[str, Any]:
    """Train on train, select on val, score test, save, record; returns the JSON summary."""
    task = get_task(task_name)
    check_outputs(out, store_path)
    name = dataset or task.datasets[0]
    if name not in task.datasets:
        raise ConfigError(f"{task_name} trains on {', '.join(task.datasets)}, not {name!r}")
    # open_dataset passes --classes on (a detector learns those classes, in that order) and
    # refuses it for a dataset that cannot pick classes
    train_ds, val_ds, test_ds = (open_dataset(name, s, data_dir, size, no_verify=False)
                                 for s in ("train", "val", "test"))
    task.check_training(train_ds, val_ds, options)  # what would otherwise fail inside the run
    checkpoint = str(Path(out).resolve())
    params = {"task": task_name, **options}
    with Store(store_path) as store, store.tracked_run(
            "train", params, model={"dir": checkpoint, "model": task.default_model,
                                    "task": task_name},
            dataset=train_ds.spec, resume="unfinished") as (run_id, _):
        model, trained = task.train(train_ds, val_ds, options, resolve_device(device))
        test_metrics = task.evaluate(model, test_ds)
        meta = {"model": task.default_model, "model_kwargs": trained["model_kwargs"],
                "dataset": train_ds.spec, "train": {"options": options,
                                                    "epochs_run": trained["epochs_run"],
                                                    "best_epoch": trained["best_epoch"],
                                                    "seconds": trained["train_seconds"]},
                "val": trained["val"], "test": test_metrics}
        if trained.get("robust", {}).get("method", "none") != "none":
            meta["robust"] = trained["robust"]
        save_model(model, out, meta)
        EpochState(out, None).clear()
        summary = {"checkpoint": checkpoint, "task": task_name, "model": task.default_model,
                   "dataset": train_ds.spec, "train_seconds": trained["train_seconds"],
                   "epochs_run": trained["epochs_run"], "best_epoch": trained["best_epoch"],
                   "sizes": {"train": len(train_ds), "val": len(val_ds), "test": len(test_ds)},
                   "val": trained["val"], "test": test_metrics,
                   **({"robust": meta["robust"]} if "robust" in meta else {})}
        store.finish_run(run_id, "completed", summary)
    summary["run_id"] = run_id
    return summary


def run_train_task(ctx: click.Context, task_name: str, as_json: bool) -> None:
    p = ctx.params
    options = task_options(ctx, task_name)
    summary = train_task_and_save(task_name, p["dataset"], p["data_dir"], p["size"], options,
                                  p["out"], p["device"], p["store_path"])

    def human() -> None:
        click.echo(f"trained {summary['model']} ({task_name}) in {summary['train_seconds']:.0f}s "
                   f"(best epoch {summary['best_epoch']} of {summary['epochs_run']}) -> "
                   f"{summary['checkpoint']}")
        click.echo(f"test {get_task(task_name).describe(summary['test'])} "
                   f"({summary['sizes']['test']} images)")

    emit(summary, as_json, human)
