"""Denoising defences on a store's one-pixel attacks, and training the denoiser they use.

``medrobust defend`` and ``demo`` both come here: ``run_defend`` evaluates each defence (a
trained denoiser folder or a filter name) on the newest one-pixel run against a model, optionally
attacks the defended model itself and draws the clean / attacked / denoised / difference grid;
``train_denoiser_and_save`` trains the autoencoder (``train-denoiser``; against a frozen
classifier for the stability objectives, which it records with the denoiser). Every option is
checked before the store is opened, so a bad one records no run; every run resumes after a kill.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.attacks.projection import check_budget
from medrobust.campaigns.adaptive_defence import AdaptiveConfig, evaluate_adaptive
from medrobust.campaigns.base import CampaignOutcome
from medrobust.campaigns.defence import evaluate_defence
from medrobust.campaigns.train import DataRequest, check_outputs
from medrobust.data import ImageDataset
from medrobust.defences.autoencoder import ImpulseAutoencoder
from medrobust.defences.base import Denoiser
from medrobust.defences.grid import save_defence_grid
from medrobust.defences.registry import make_denoiser
from medrobust.defences.source import AttackedSet, attacked_set, find_onepixel_run
from medrobust.defences.storage import load_autoencoder, save_denoiser
from medrobust.defences.table import (
    ACCURACY_COLUMNS,
    QUALITY_COLUMNS,
    accuracy_rows,
    adaptive_columns,
    adaptive_rows,
    masking_warnings,
    quality_rows,
)
from medrobust.defences.training import (
    DenoiserTrainConfig,
    config_dict,
    load_frozen_classifier,
    start_weights,
    train_denoiser,
)
from medrobust.errors import ConfigError, MedrobustError
from medrobust.models import Classifier, load_classifier, read_meta
from medrobust.models.checkpoint import model_input_size
from medrobust.store import Store, check_store_path
from medrobust.training.resume import weights_digest
from medrobust.utils.device import resolve_device
from medrobust.utils.validation import check_writable

GRID_NAME = "defence_grid.png"
MAX_GRID_ROWS = 6
MAX_GRID_DEFENCES = 4
TRAIN_DENOISER_COMMAND = "train-denoiser"


@dataclass(frozen=True)
class DefendRequest:
    """One ``defend`` job: the store holding the one-pixel run, the attacked model, the defences
    (denoiser folders or filter names), and what else to do with them."""

    store: str | Path
    model_dir: str | Path
    denoisers: tuple[str, ...]
    #: the one-pixel run to defend (None: the newest on ``model_dir``)
    run_id: int | None = None
    #: clean accuracy on the first N images of the split (None: all)
    clean_limit: int | None = None
    #: also attack the defended model itself (None: do not)
    adaptive: AdaptiveConfig | None = None
    #: folder for the image grid (None: no grid)
    out: str | Path | None = None
    device: str = "auto"
    resume: bool = True

    def validate(self) -> None:
        """The checks that need no model: the output folder, the store, the limits."""
        if self.out is not None:
            check_writable("--out", self.out, folder=True)
        if not Path(self.store).is_file():
            raise MedrobustError(f"no store at {self.store}")
        check_store_path(self.store)
        if self.clean_limit is not None and self.clean_limit < 1:
            raise ConfigError("--clean-limit must be at least 1")
        if self.adaptive is not None:
            self.adaptive.validate()


def draw_grid(path: Path, attacked: AttackedSet, denoisers: list[Denoiser]) -> str | None:
    """The clean / attacked / denoised / difference grid of the first fooled images."""
    chosen = [j for j, s in enumerate(attacked.status) if s == "success"][:MAX_GRID_ROWS]
    shown = [d for d in denoisers if d.name != "none"][:MAX_GRID_DEFENCES]
    if not chosen or not shown:
        return None
    sel = np.asarray(chosen)
    adv = attacked.adversarial[sel]
    names = attacked.dataset.class_names
    titles = [f"#{attacked.indices[j]} {names[attacked.labels[j]]}" for j in sel]
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_defence_grid(str(path), attacked.clean[sel], adv,
                             {d.name: d.denoise(adv) for d in shown}, titles)


def run_defend(request: DefendRequest, *, show_progress: bool = True,
               executor: Any = None) -> dict[str, Any]:
    """The body of ``defend``; also used by ``demo``. Returns the JSON summary."""
    # Everything is checked before the store is opened: a bad option records no run.
    request.validate()
    dev = resolve_device(request.device)
    clf = load_classifier(request.model_dir, dev)
    if request.adaptive is not None:
        size = model_input_size(read_meta(request.model_dir))
        if size is not None:
            for eps in request.adaptive.l2_eps:
                check_budget("--l2 budget", eps, "l2", shape=(clf.channels, *size))
    denoisers = [make_denoiser(s, dev) for s in request.denoisers]
    with Store(request.store) as store:
        run = find_onepixel_run(store, request.model_dir, request.run_id)
        attacked = attacked_set(store, run)
        if len(attacked) == 0:
            raise MedrobustError(f"run {run['id']} has no attacked images (all were skipped or "
                                 "none finished)")
        limit = request.clean_limit
        clean_idx = None if limit is None else list(range(min(limit, len(attacked.dataset))))
        results = [evaluate_defence(store, clf, d, attacked, clean_idx, resume=request.resume,
                                    show_progress=show_progress, executor=executor)
                   for d in denoisers]
        adaptive_out: list[CampaignOutcome] = []
        if request.adaptive is not None:
            order = [make_denoiser("none")] + [d for d in denoisers if d.name != "none"]
            adaptive_out = [evaluate_adaptive(store, clf, d, attacked, request.adaptive,
                                              resume=request.resume, show_progress=show_progress,
                                              executor=executor)
                            for d in order]
        grid = (draw_grid(Path(request.out) / GRID_NAME, attacked, denoisers)
                if request.out is not None else None)
    return defend_summary(request.store, run["id"], results, adaptive_out, grid)


def defend_summary(store_path: str | Path, source_run: int, results: list[CampaignOutcome],
                   adaptive_out: list[CampaignOutcome], grid: str | None) -> dict[str, Any]:
    """The JSON summary of ``defend``: each defence's and adaptive run's summary, and the tables
    the command prints."""
    defences = [{"run_id": r.run_id, "resumed": r.resumed, **r.summary} for r in results]
    adaptive_s = [{"run_id": a.run_id, **a.summary} for a in adaptive_out]
    return {"store": str(store_path), "source_run": source_run, "defences": defences,
            "adaptive": adaptive_s, "grid": grid,
            "table": {"columns": ACCURACY_COLUMNS, "rows": accuracy_rows(defences)},
            "quality_table": {"columns": QUALITY_COLUMNS, "rows": quality_rows(defences)},
            "adaptive_table": {"columns": adaptive_columns(adaptive_s),
                               "rows": adaptive_rows(adaptive_s)},
            "warnings": masking_warnings(adaptive_s)}


@dataclass(frozen=True)
class DenoiserRequest:
    """One ``train-denoiser`` job: the data (a named dataset), the hyper-parameters, the folder
    to write and the run store."""

    data: DataRequest
    config: DenoiserTrainConfig
    out: str | Path
    store: str | Path
    device: str = "auto"


def open_split(data: DataRequest, split: str) -> ImageDataset:
    """A split of the named dataset for no task in particular (a denoiser learns any images;
    the demo attacks its classifier's test split), with every option of the request."""
    return data.load(split)


def train_denoiser_and_save(request: DenoiserRequest) -> dict[str, Any]:
    """The body of ``train-denoiser``; also used by ``demo``. Returns the JSON summary."""
    check_outputs(request.out, request.store)
    config = request.config
    config.validate()
    device = resolve_device(request.device)
    # the stability objectives' classifier is loaded (and checked) before a run is recorded
    clf = None if not config.classifier_aware else load_frozen_classifier(config.classifier,
                                                                          device)
    train_ds = open_split(request.data, "train")
    val_ds = open_split(request.data, "val")
    record = None if clf is None else classifier_record(config.classifier, clf, train_ds)
    init, init_record = start_record(config, train_ds)
    params = config_dict(config) | ({} if record is None else
                                    {"classifier_weights": record["weights_digest"]}) | (
        {} if init_record is None else {"init_weights": init_record["weights_digest"]})
    folder = str(Path(request.out).resolve())
    with Store(request.store) as store, store.tracked_run(
            TRAIN_DENOISER_COMMAND, params, model={"dir": folder, "model": "denoiser"},
            dataset=train_ds.spec, resume="unfinished") as (run_id, _):
        result = train_denoiser(train_ds, val_ds, config, device, classifier=clf, init=init)
        meta = {"dataset": train_ds.spec, "train_config": config_dict(config),
                "history": result.history, "best_epoch": result.best_epoch,
                "metrics": {"val": result.val_metrics}, "train_seconds": result.seconds}
        extra = ({} if record is None else {"objective": config.objective, "classifier": record}
                 ) | ({} if init_record is None else {"init": init_record})
        save_denoiser(result.model, folder, {**meta, **extra})
        summary = {"denoiser": folder, "dataset": train_ds.spec, "train_seconds": result.seconds,
                   "best_epoch": result.best_epoch, "val": result.val_metrics, **extra}
        store.finish_run(run_id, "completed", summary)
    summary["run_id"] = run_id
    return summary


def start_record(config: DenoiserTrainConfig, data: ImageDataset
                 ) -> tuple[ImpulseAutoencoder | None, dict[str, Any] | None]:
    """The denoiser a warm-started run begins from (``--init``), checked to be the network the
    run trains before a run is recorded, and what the result records of it (its folder, the
    objective it was trained with and its weights digest)."""
    if config.init is None:
        return None, None
    init, meta = load_autoencoder(config.init)
    state = start_weights(config, data.channels, init)
    assert state is not None
    trained = meta.get("train_config") or {}
    return init, {"dir": str(Path(config.init).resolve()),
                  "objective": trained.get("objective", "mse"),
                  "noise": trained.get("noise", "impulse"), "weights_digest": weights_digest(state)}


def classifier_record(ckpt_dir: str | Path, classifier: Classifier, data: ImageDataset
                      ) -> dict[str, Any]:
    """What a stability-trained denoiser records of the classifier it was trained against
    (its folder, model and weights digest: the denoiser serves that classifier, and a folder
    retrained since holds another), after checking it fits the data."""
    meta = read_meta(ckpt_dir)
    size = model_input_size(meta)
    if size is not None and tuple(size) != tuple(data.size):
        raise ConfigError(f"the classifier {ckpt_dir} was trained on {size[0]}x{size[1]} images, "
                          f"the data is {data.size[0]}x{data.size[1]} (set --size)")
    if classifier.channels != data.channels:
        raise ConfigError(f"the classifier {ckpt_dir} takes {classifier.channels} channel(s), "
                          f"the data has {data.channels}")
    return {"dir": str(Path(ckpt_dir).resolve()), "model": meta.get("model"),
            "saved_at": meta.get("saved_at"),
            "weights_digest": weights_digest(classifier.model.state_dict())}
