"""``medrobust evaluate``: a checkpoint's metrics on a split, clean or under the attack protocol.

Without ``--attack``: accuracy, AUC, recall and confusion (classifiers), Dice (segmenters), MRE
and SDR (landmarks) or COCO mAP (detectors). With ``--attack pgd,ifgsm --l2 0.5,1,2``: the
protocol of Ma & Liang (every attack at every budget through the task's loss, one table with
averages), each attack a resumable campaign in the store.
"""

from __future__ import annotations

from pathlib import Path

import click

from medrobust.cli.common import (
    DEFAULT_STORE,
    check_model_size,
    common_options,
    dataset_options,
    emit,
    executor_options,
    open_model_dataset,
    option_given,
)
from medrobust.cli.evaluate_protocol import protocol_settings, run_protocol
from medrobust.errors import ConfigError
from medrobust.models import read_meta
from medrobust.models.loading import checkpoint_task, load_model
from medrobust.store import Store, check_store_path
from medrobust.tasks import get_task
from medrobust.utils.device import resolve_device


@click.command()
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Checkpoint folder.")
@dataset_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--attack", "attacks", default=None,
              help="Comma-separated attacks for the protocol: pgd, ifgsm, pgd-restarts, "
                   "square and ensemble (every task); apgd-ce, apgd-t (classifiers); apgd (APGD "
                   "on the task's loss, other tasks). Square is black-box (on classifiers the "
                   "margin, elsewhere the task's own per-image metric). The ensemble: on "
                   "classifiers AutoAttack's (robust only if it survives every member); on "
                   "other tasks the worst case per image, by the task's metric, of PGD, IFGSM, "
                   "APGD on each of the task's other losses (segmentation: SEA's and CosPGD's; "
                   "landmarks: soft-argmax and CosPGD; detection: TOG's and DAG) and Square, "
                   "about 3x PGD's cost.")
@click.option("--l2", "l2_levels", default=None,
              help="L2 budgets on the [0,1] scale, comma-separated (default 0.5,1,2).")
@click.option("--linf", "linf_levels", default=None,
              help="Linf budgets instead, comma-separated, e.g. 1/255,2/255,4/255.")
@click.option("--steps", type=click.IntRange(1), default=100, show_default=True,
              help="PGD / APGD steps.")
@click.option("--ifgsm-steps", type=click.IntRange(1), default=10, show_default=True)
@click.option("--restarts", type=click.IntRange(1), default=5, show_default=True,
              help="Random starts of pgd-restarts.")
@click.option("--queries", type=click.IntRange(1), default=1000, show_default=True,
              help="Square's query budget per image.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate the first N images.")
@click.option("--batch-images", type=click.IntRange(1), default=16, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start new runs even if matching ones exist.")
@common_options
@executor_options
def evaluate(model_dir: str, dataset: str | None, data_dir: str | None, size: int | None,
             no_verify: bool, split: str, store_path: str, attacks: str | None,
             l2_levels: str | None, linf_levels: str | None, steps: int, ifgsm_steps: int,
             restarts: int, queries: int, limit: int | None, batch_images: int,
             no_resume: bool, as_json: bool, seed: int, device: str,
             executor: object = None) -> None:
    """Evaluate a checkpoint on a dataset split, clean or under the attack protocol."""
    check_store_path(store_path)
    meta = read_meta(model_dir)
    check_model_size(size, meta)
    protocol_only = {"--l2": l2_levels, "--linf": linf_levels, "--limit": limit}
    if attacks is not None:
        settings = protocol_settings(attacks, l2_levels, linf_levels, steps, ifgsm_steps,
                                     restarts, queries, seed, batch_images)
        run_protocol(model_dir, meta, dataset, data_dir, size, no_verify, split, store_path,
                     settings, limit, not no_resume, as_json, device, executor)
        return
    if executor is not None:
        raise ConfigError("--executor ray runs the attack protocol: add --attack pgd,ifgsm")
    given = [flag for flag, value in protocol_only.items() if value is not None] + [
        f"--{name.replace('_', '-')}" for name in ("steps", "ifgsm_steps", "restarts", "queries",
                                                   "batch_images", "no_resume")
        if option_given(name)]
    if given:
        raise ConfigError(f"{given[0]} belongs to the attack protocol: add --attack pgd,ifgsm")
    _evaluate_clean(model_dir, meta, dataset, data_dir, size, no_verify, split, store_path,
                    as_json, device)


def _evaluate_clean(model_dir: str, meta: dict, dataset: str | None, data_dir: str | None,
                    size: int | None, no_verify: bool, split: str, store_path: str,
                    as_json: bool, device: str) -> None:
    """Any task's checkpoint scored by its task (accuracy and AUC, Dice, MRE and SDR, mAP)."""
    task = get_task(checkpoint_task(model_dir))
    model = load_model(model_dir, resolve_device(device))
    ds = open_model_dataset(meta, model, dataset, split, data_dir, size, no_verify)
    metrics = task.evaluate(model, ds)
    with Store(store_path) as store:
        model_info = {"dir": str(Path(model_dir).resolve()), "model": meta.get("model"),
                      "task": task.name, "class_names": meta.get("class_names")}
        run_id, _ = store.start_run("evaluate", {"split": split, "task": task.name},
                                    model=model_info, dataset={**ds.spec, "split": split},
                                    resume=False)
        store.finish_run(run_id, "completed", metrics)
    metrics["run_id"] = run_id
    assert task.describe is not None
    emit(metrics, as_json, lambda: click.echo(f"{ds.name} {split}: {task.describe(metrics)}"))
