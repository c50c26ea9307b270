"""``medrobust train``: parse the options and hand them to the one training flow.

``campaigns.train`` does the work for every task in the registry; options the user did not set
are left out, so each task's own defaults apply (a U-Net trains 20 epochs, a classifier 15).
"""

from __future__ import annotations

from typing import Any

import click

from medrobust.campaigns.train import TrainRequest, train_model
from medrobust.cli.common import (
    DEFAULT_STORE,
    TaskChoice,
    common_options,
    data_request,
    dataset_options,
    emit,
)
from medrobust.cli.robust_options import DeltaType, robust_options
from medrobust.models.registry import available_models
from medrobust.tasks import DEFAULT_TASK, TASKS, get_task
from medrobust.training.robust import KEEP, METHODS, XI_RULES

#: command-line parameter -> the task option it sets (each task refuses those it does not take)
TRAIN_OPTIONS = {"model_name": "model", "padding": "padding", "width": "width",
                 "epochs": "epochs", "batch_size": "batch_size", "lr": "lr",
                 "augment": "augment", "minutes": "minutes", "heatmap_loss": "heatmap_loss",
                 "noise_sd": "noise_sd"}


def _defaults(option: str) -> str:
    """'classification 15, segmentation 20, ...': each task's default for ``option``."""
    return ", ".join(f"{t.name} {t.options[option]}" for t in TASKS.values()
                     if option in t.options)


@click.command()
@click.option("--task", type=TaskChoice(), default=DEFAULT_TASK, show_default=True,
              help="segmentation: a U-Net on image+mask data (--dataset segfolder); landmarks: "
                   "the multi-task landmark U-Net (--dataset landmarks, a landmark folder); "
                   "detection: a CenterNet detector (--dataset bccd-detection or voc).")
@dataset_options(required=True)
@click.option("--model", "model_name", default=None,
              help=f"classification / segmentation: zoo model ({', '.join(available_models())}) "
                   "or module:factory (default: smallcnn; unet).")
@click.option("--padding", type=click.Choice(["keras", "symmetric"]), default=None,
              help="mitosisnet only: Keras-style or symmetric padding.")
@click.option("--width", type=click.IntRange(1), default=None,
              help="smallcnn / mitosisnet: channels of the first stage (their defaults: 32 and "
                   "16); landmarks / detection: the network's base width.")
@click.option("--epochs", type=int, default=None,
              help=f"Training epochs (default: {_defaults('epochs')}).")
@click.option("--batch-size", type=int, default=None,
              help=f"Default: {_defaults('batch_size')}.")
@click.option("--lr", type=float, default=None, help=f"Default: {_defaults('lr')}.")
@click.option("--augment", type=click.Choice(["auto", "flips", "shift", "none"]), default=None,
              help="classification: auto (the dataset's policy), flips, shift or none; "
                   "segmentation: flips (default) or none.")
@click.option("--noise-sd", type=click.FloatRange(0), default=None,
              help="classification and segmentation: Gaussian noise (std on the [0,1] scale) "
                   "on every training image, the base model of randomized smoothing or "
                   "SegCertify (certify --sigma the same).")
@click.option("--minutes", type=click.FloatRange(0, min_open=True), default=None,
              help="landmarks / detection: wall-clock training budget (the best validation "
                   "epoch so far is kept).")
@click.option("--heatmap-loss", type=click.Choice(["bce", "dice"]), default=None,
              help="landmarks: heatmap loss (default bce, the original; dice: the paper's "
                   "variant).")
@click.option("--robust", type=click.Choice(list(METHODS)), default="none", show_default=True,
              help="Robust training objective: vat (Madry PGD at --eps), teat (temporal "
                   "ensembling at --eps) or adaptive-margin (per-sample margins grown by "
                   "--delta; needs --xi-from). Budgets are L2 on the [0,1] pixel scale.")
@click.option("--eps", type=float, default=None,
              help="vat / teat: the L2 training budget on the [0,1] pixel scale (per-pixel RMS "
                   "in grey levels = eps / sqrt(C*H*W) * 255).")
@click.option("--delta", type=DeltaType(), default=None,
              help="adaptive-margin: the margin step D (margins start at D), L2 on [0,1]; auto: "
                   "search it on the validation split over 1/32..1/2 of the --select-eps budget "
                   "(five short runs from --xi-from, scored by the mean of clean and attacked "
                   "validation; recorded in delta_search.json).")
@click.option("--delta-search-epochs", type=int, default=None,
              help="adaptive-margin with --delta auto: epochs per candidate D (default a "
                   "quarter of --epochs, at least 1).")
@click.option("--alpha", type=float, default=None,
              help="vat / adaptive-margin: inner PGD step multiplier, step = alpha * budget / "
                   "steps (default 4; the authors: 4 for segmentation, 5 for detection).")
@click.option("--xi", type=click.Choice(list(XI_RULES)), default=None,
              help="adaptive-margin: threshold rule on the clean training losses of --xi-from "
                   "(default mean+2std; segmentation uses its mean clean Dice instead).")
@click.option("--max-margin", type=float, default=None,
              help="adaptive-margin: cap on the margins (L2 on [0,1]; default none).")
@click.option("--refine-margins", is_flag=True,
              help="adaptive-margin: bisect the boundary between the last correct and first "
                   "wrong inner iterate (10 steps) so margins can shrink to it, and train a "
                   "failed sample's noisy loss on that boundary point (the authors' landmark "
                   "code).")
@click.option("--keep", type=click.Choice(list(KEEP)), default=None,
              help="vat / teat / adaptive-margin: the epoch whose weights are saved: final "
                   "(default, as the authors' code), best-clean (best clean validation, "
                   "standard training's rule) or best-robust (best validation under PGD-10 at "
                   "the --select-eps budget).")
@click.option("--select-eps", type=float, default=None,
              help="vat / teat / adaptive-margin: L2 budget on [0,1] of the cheap validation "
                   "attack (PGD-10) of --keep best-robust, --delta auto and the final epoch's "
                   "record (default: --eps, else --max-margin, else a per-pixel RMS of 2 grey "
                   "levels).")
@click.option("--clean-weight", type=float, default=None,
              help="vat: the clean loss's share of the training loss, in [0, 1] (default 0: "
                   "adversarial images only, as Madry and the authors' code).")
@click.option("--xi-from", type=click.Path(file_okay=False), default=None,
              help="Checkpoint folder of a trained standard model of the same task: robust "
                   "training fine-tunes from it, and adaptive margins calibrate xi on its clean "
                   "training losses.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Checkpoint folder to write (an unfinished run there is resumed).")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True,
              help="SQLite run store.")
@common_options
def train(task: str, dataset: str | None, data_dir: str | None, size: int | None,
          no_verify: bool, out: str, store_path: str, as_json: bool, seed: int, device: str,
          **options: Any) -> None:
    """Train a classifier, segmenter, landmark model or detector (--task) and save it as
    safetensors + JSON metadata; --robust trains it adversarially (VAT, TEAT or adaptive
    margins). Killed runs resume from the last finished epoch when run again."""
    given = {TRAIN_OPTIONS[k]: v for k, v in options.items() if k in TRAIN_OPTIONS}
    given.update({k: v for k, v in robust_options(options).items() if v is not None})
    request = TrainRequest(task, data_request(dataset, data_dir, size, no_verify),
                           out, store_path, {**given, "seed": seed}, device)
    summary = train_model(request)

    def human() -> None:
        click.echo(f"trained {summary['model']} ({task}) in {summary['train_seconds']:.0f}s "
                   f"(best epoch {summary['best_epoch']} of {summary['epochs_run']}) -> "
                   f"{summary['checkpoint']}")
        click.echo(f"test {get_task(task).describe(summary['test'])} "
                   f"({summary['sizes']['test']} images)")

    emit(summary, as_json, human)
