"""``medrobust demo``: the main job end to end — train, attack, analyse, report."""

from __future__ import annotations

import time
from pathlib import Path

import click

from medrobust.attacks import OnePixel
from medrobust.attacks.campaign import run_onepixel_campaign
from medrobust.cli.common import common_options, dataset_options, emit, fmt, open_dataset
from medrobust.cli.defend import demo_defence_step
from medrobust.cli.train import train_and_save
from medrobust.models import load_classifier
from medrobust.store import Store
from medrobust.training import TrainConfig
from medrobust.utils.device import resolve_device

# Defaults that keep the demo within a few CPU minutes: a narrow smallcnn (a quarter of the
# default's cost per query) and fewer epochs on the easy synthetic data.
DEMO_EPOCHS = {"synthetic": 6}
DEMO_MODEL_KWARGS = {"smallcnn": {"width": 16}}


@click.command()
@dataset_options()
@click.option("--out", type=click.Path(file_okay=False), default="medrobust-demo",
              show_default=True, help="Folder for the model, store, analysis and report.")
@click.option("--model", "model_name", default="smallcnn", show_default=True)
@click.option("--epochs", type=int, default=None, help="Default: 6 (synthetic) or 12.")
@click.option("--limit", type=int, default=16, show_default=True, help="Test images attacked.")
@click.option("--population", type=int, default=400, show_default=True)
@click.option("--generations", type=int, default=100, show_default=True)
@common_options
def demo(dataset: str | None, data_dir: str | None, size: int | None, no_verify: bool, out: str,
         model_name: str, epochs: int | None, limit: int, population: int, generations: int,
         as_json: bool, seed: int, device: str) -> None:
    """Train on the embedded synthetic default (or --dataset), attack, analyse, write a report."""
    from medrobust.analysis.study import run_study
    from medrobust.report import build_report

    start = time.perf_counter()
    name = dataset or "synthetic"
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    db = root / "medrobust.db"
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))

    say(f"[1/4] training {model_name} on {name}")
    config = TrainConfig(model=model_name, model_kwargs=DEMO_MODEL_KWARGS.get(model_name, {}),
                         epochs=epochs or DEMO_EPOCHS.get(name, 12), seed=seed)
    trained = train_and_save(name, data_dir, size, no_verify, config, root / "model", device, db)
    say(f"      test accuracy {fmt(trained['test']['accuracy'])}, AUC {fmt(trained['test']['auc'])}")

    say(f"[2/4] one-pixel attack on {limit} test images (population {population}, "
        f"{generations} generations)")
    clf = load_classifier(root / "model", resolve_device(device))
    test = open_dataset(name, "test", data_dir, size, no_verify)
    attack = OnePixel(clf, population=population, generations=generations, seed=seed)
    with Store(db) as store:
        outcome = run_onepixel_campaign(store, clf, root / "model", test, attack,
                                        list(range(min(limit, len(test)))),
                                        show_progress=not as_json)
        say(f"      success rate {fmt(outcome.summary['success_rate'])} "
            f"({outcome.summary['successes']}/{outcome.summary['attacked']})")
        demo_defence_step(root, name, data_dir, size, no_verify, db, device, seed, say,
                          show_progress=not as_json)
        say("[3/4] analysing attack colours, locations and periodicity")
        study = run_study(store, root / "analysis", run_id=outcome.run_id)
        say("[4/4] writing the report")
        report_path = build_report(store, root)
    summary = {"report": str(Path(report_path).resolve()), "store": str(db.resolve()),
               "train": {"test": trained["test"], "checkpoint": trained["checkpoint"]},
               "attack": outcome.summary, "periodicity": study.get("periodicity"),
               "seconds": time.perf_counter() - start}
    emit(summary, as_json, lambda: click.echo(f"report: {summary['report']}"))
