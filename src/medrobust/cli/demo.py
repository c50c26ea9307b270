"""``medrobust demo``: the main job end to end — train, attack, analyse, report."""

from __future__ import annotations

import time
from pathlib import Path

import click

from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import run_onepixel_campaign
from medrobust.campaigns.train import DataRequest, TrainRequest, finished_training, train_model
from medrobust.cli.common import common_options, dataset_options, emit, fmt, open_dataset
from medrobust.cli.defend import demo_defence_step
from medrobust.errors import ConfigError
from medrobust.models import load_classifier
from medrobust.store import Store
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
@click.option("--width", type=int, default=None, hidden=True,
              help="smallcnn width (tests: a tiny model).")
@click.option("--skip-defence", is_flag=True, hidden=True,
              help="Leave out the denoiser step (tests: a demo in seconds).")
@common_options
def demo(dataset: str | None, data_dir: str | None, size: int | None, no_verify: bool, out: str,
         model_name: str, epochs: int | None, limit: int, population: int, generations: int,
         width: int | None, skip_defence: bool, as_json: bool, seed: int, device: str) -> None:
    """Train on the embedded synthetic default (or --dataset), attack, analyse, write a report.

    Rerunning the same command into the same --out resumes: a finished training is reused (its
    checkpoint, so every later run keeps its fingerprint and resumes), finished items are not
    recomputed, and the report shows each run once.
    """
    from medrobust.analysis.study import run_study
    from medrobust.report import build_report

    start = time.perf_counter()
    name = dataset or "synthetic"
    # Every option is checked before any training: a typo costs a second, not minutes.
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {epochs}")
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    if generations < 1:
        raise ConfigError(f"--generations must be at least 1, got {generations}")
    if population < 4:  # DE/rand/1 draws three distinct partners per member
        raise ConfigError(f"--population must be at least 4, got {population}")
    test = open_dataset(name, "test", data_dir, size, no_verify)  # unknown names fail here
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    db = root / "medrobust.db"
    say = (lambda msg: None) if as_json else (lambda msg: click.echo(msg, err=True))

    kwargs = dict(DEMO_MODEL_KWARGS.get(model_name, {}))
    if width is not None:
        kwargs["width"] = width
    request = TrainRequest("classification", DataRequest(name, data_dir, size, not no_verify),
                           root / "model", db,
                           {"model": model_name, "model_kwargs": kwargs,
                            "epochs": epochs or DEMO_EPOCHS.get(name, 12), "seed": seed},
                           device)
    trained = finished_training(request)
    if trained is not None:
        say(f"[1/4] reusing the trained {model_name} in {root / 'model'}")
    else:
        say(f"[1/4] training {model_name} on {name}")
        trained = train_model(request)
    say(f"      test accuracy {fmt(trained['test']['accuracy'])}, AUC {fmt(trained['test']['auc'])}")

    say(f"[2/4] one-pixel attack on {limit} test images (population {population}, "
        f"{generations} generations)")
    clf = load_classifier(root / "model", resolve_device(device))
    attack = OnePixel(clf, population=population, generations=generations, seed=seed)
    with Store(db) as store:
        outcome = run_onepixel_campaign(store, clf, root / "model", test, attack,
                                        list(range(min(limit, len(test)))),
                                        show_progress=not as_json)
        say(f"      success rate {fmt(outcome.summary['success_rate'])} "
            f"({outcome.summary['successes']}/{outcome.summary['attacked']})")
        if skip_defence:
            pass
        elif trained.get("reused") and _defence_done(store, root):
            say("[2+] denoising defence: already evaluated for this model")
        else:
            demo_defence_step(root, name, data_dir, size, no_verify, db, device, seed, say,
                              show_progress=not as_json)
        say("[3/4] analysing attack colours, locations and periodicity")
        study = run_study(store, root / "analysis", run_id=outcome.run_id)
        say("[4/4] writing the report")
        report_path = build_report(store, root)
    summary = {"report": str(Path(report_path).resolve()), "store": str(db.resolve()),
               "train": {"test": trained["test"], "checkpoint": trained["checkpoint"],
                         "reused": bool(trained.get("reused"))},
               "attack": {**outcome.summary, "run_id": outcome.run_id,
                          "resumed": outcome.resumed, "attacked_now": outcome.computed_now},
               "periodicity": study.get("periodicity"),
               "seconds": time.perf_counter() - start}
    emit(summary, as_json, lambda: click.echo(f"report: {summary['report']}"))


def _defence_done(store: Store, root: Path) -> bool:
    """True when this folder's denoiser was trained, defended and attacked adaptively, all
    completed, after the model's own training."""
    folder = str((root / "denoiser").resolve())
    trained = [r for r in store.runs("train-denoiser")
               if isinstance(r.get("model"), dict) and r["model"].get("dir") == folder]
    if not trained or trained[-1]["status"] != "completed" or not (root / "denoiser").is_dir():
        return False
    later = [r for r in store.runs() if r["id"] > trained[-1]["id"]]
    commands = {r["command"] for r in later if r["status"] == "completed"}
    return {"defend", "defend adaptive"} <= commands and all(
        r["status"] == "completed" for r in later if r["command"].startswith("defend"))
