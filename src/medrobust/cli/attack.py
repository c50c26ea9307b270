"""``medrobust attack ...``: attack campaigns over a dataset split, recorded in the store."""

from __future__ import annotations

from typing import Any

import click

from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import run_onepixel_campaign
from medrobust.cli.common import (
    DEFAULT_STORE,
    check_model_size,
    common_options,
    dataset_options,
    emit,
    executor_options,
    fmt,
    open_dataset,
    option_given,
)
from medrobust.errors import ConfigError
from medrobust.models import load_classifier, read_meta
from medrobust.store import Store, check_store_path
from medrobust.tasks.classification import resolve_targets
from medrobust.utils.device import resolve_device
from medrobust.utils.validation import check_range


@click.group()
def attack() -> None:
    """Attack a model over a dataset split (results land in the store and resume after a kill)."""


def check_target_options(targeted: bool) -> None:
    """``--target`` without ``--targeted`` would be silently ignored."""
    if not targeted and option_given("target"):
        raise ConfigError("--target needs --targeted (without it the attack is untargeted)")


@attack.command(short_help="One-pixel (k-pixel) attack by differential evolution.")
@click.option("--model", "model_dir", required=True, type=click.Path(), help="Checkpoint folder.")
@dataset_options()
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--limit", type=int, default=None, help="Attack the first N images of the split.")
@click.option("--targeted", is_flag=True, help="Targeted attack (see --target).")
@click.option("--target", default="next", show_default=True,
              help="Targeted: class name, index, or 'next' (label + 1).")
@click.option("--pixels", type=int, default=1, show_default=True, help="Pixels changed (k).")
@click.option("--population", type=int, default=400, show_default=True,
              help="Candidate pixels (x, y, colour) per image that differential evolution "
                   "evolves (the paper: 400).")
@click.option("--generations", type=int, default=100, show_default=True,
              help="Evolution rounds; each scores the whole population once (the paper: 100).")
@click.option("--f", "f_", type=float, default=0.5, show_default=True, help="DE mutation factor.")
@click.option("--crossover", type=float, default=None, help="Crossover rate (default: none).")
@click.option("--strategy", type=click.Choice(["rand1", "best1"]), default="rand1",
              show_default=True)
@click.option("--init", type=click.Choice(["normal", "uniform"]), default="normal",
              show_default=True)
@click.option("--direction", type=click.Choice(["auto", "pos2neg", "neg2pos"]), default="auto",
              show_default=True, help="Sigmoid models: which way to push the score.")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="Sigmoid models: success threshold.")
@click.option("--partial", is_flag=True,
              help="Sigmoid models: the paper's partial success (below 0.9 / above 0.1).")
@click.option("--engine", type=click.Choice(["fast", "reference"]), default="fast",
              show_default=True, help="Candidate scorer (fast = exact receptive-field cones).")
@click.option("--batch-images", type=int, default=32, show_default=True,
              help="Images whose populations are scored together.")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start a new run even if one matches.")
@common_options
@executor_options
def onepixel(model_dir: str, dataset: str | None, data_dir: str | None, size: int | None,
             no_verify: bool, split: str, limit: int | None, targeted: bool, target: str,
             pixels: int, population: int, generations: int, f_: float, crossover: float | None,
             strategy: str, init: str, direction: str, threshold: float, partial: bool,
             engine: str, batch_images: int, store_path: str, no_resume: bool, as_json: bool,
             seed: int, device: str, executor: Any = None) -> None:
    """One-pixel (k-pixel) attack by differential evolution, batched across images."""
    # Every option is checked before the run is opened, so a bad one records nothing.
    check_store_path(store_path)
    check_range("--batch-images", batch_images, 1)
    if limit is not None and limit < 1:
        raise ConfigError("--limit must be at least 1")
    check_target_options(targeted)
    if partial and option_given("threshold"):
        raise ConfigError("--partial sets the thresholds (0.9 / 0.1): drop --threshold")
    meta = read_meta(model_dir)
    check_model_size(size, meta)
    clf = load_classifier(model_dir, resolve_device(device))
    if clf.head != "sigmoid":
        for flag, used in (("--partial", partial), ("--threshold", option_given("threshold"))):
            if used:
                raise ConfigError(f"{flag} applies to sigmoid (single-score) models; this one "
                                  f"scores {clf.num_classes} classes with softmax")
    thr: Any = (0.9, 0.1) if partial else threshold
    att = OnePixel(clf, pixels=pixels, population=population, generations=generations, f=f_,
                   crossover=crossover, strategy=strategy, init=init, direction=direction,
                   threshold=thr, engine=engine, seed=seed)
    ds = open_dataset(dataset, split, data_dir, size, no_verify, meta.get("dataset"),
                      model_channels=clf.channels)
    att.check_images((ds.channels, *ds.images.shape[1:3]))
    indices = list(range(len(ds) if limit is None else min(limit, len(ds))))
    targets = resolve_targets(target, ds, indices) if targeted else None
    if targets is not None:
        indices = [i for i in indices if i in targets]
    with Store(store_path) as store:
        outcome = run_onepixel_campaign(store, clf, model_dir, ds, att, indices, targets,
                                        batch_images=batch_images, resume=not no_resume,
                                        show_progress=not as_json, executor=executor)
    summary = {"run_id": outcome.run_id, "resumed": outcome.resumed,
               "attacked_now": outcome.computed_now, "store": store_path, **outcome.summary}

    def human() -> None:
        s = summary
        verb = "resumed" if s["resumed"] else "ran"
        click.echo(f"{verb} run {s['run_id']}: {s['images']} images, {s['skipped']} skipped "
                   f"(already misclassified), {s['attacked']} attacked")
        click.echo(f"success rate {fmt(s['success_rate'])}  mean queries "
                   f"{fmt(s['mean_queries'], 0)}  images/s {fmt(s['images_per_second'], 2)}")
        for d, r in s["by_direction"].items():
            click.echo(f"  {d:>24}: {r['successes']}/{r['attacked']} "
                       f"({fmt(r['success_rate'])}), mean queries {fmt(r['mean_queries'], 0)}")
        click.echo(f"results in {store_path} (table onepixel_results)")

    emit(summary, as_json, human)


