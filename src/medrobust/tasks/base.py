"""``Task``: what one kind of model needs, said once, so nothing else asks ``if task == ...``.

A task names its datasets and pixel-space wrapper, how it trains (returning the wrapper and a
summary), how it is scored on a split, and its loss as per-sample terms: training, gradient
attacks and adaptive-margin training all differentiate the same terms (a landmark model's
heatmap and offset terms, a detector's heatmap, size and offset terms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from medrobust.models.base import PixelModel
from medrobust.store import ResultTable

#: per-sample loss terms: outputs of the wrapper and the task's targets -> {term: (N,)}, with
#: ``total`` the training objective
LossTerms = Callable[[PixelModel, torch.Tensor, Any], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class CurveMetric:
    """One metric a report shows against the attack budget, and where summaries keep it.

    ``keys`` are (clean, attacked) summary keys, the current schema first: stores written by
    earlier versions used other names for the same numbers, and their runs still report.
    ``{unit}`` in ``key`` and ``label`` is the run's unit (landmarks: mm or px)."""

    key: str
    label: str
    keys: tuple[tuple[str, str], ...]
    percent: bool = False
    #: the top of the metric's axis (None: open, e.g. a radial error)
    upper: float | None = 1.0

    def pair(self, summary: Mapping[str, Any]) -> tuple[str, str] | None:
        """The (clean, attacked) keys this summary uses (None: it holds neither)."""
        return next(((c, a) for c, a in self.keys if a in summary), None)


@dataclass(frozen=True)
class TaskReport:
    """What a report says about a task, so the report itself names no task."""

    #: place among the tasks on the page (lower first)
    order: int
    #: "Segmentation: Dice against the true mask": a section title, the part after ': ' is
    #: what the curves show
    title: str
    #: the headline metric's name ("Dice") and its curves, the headline first
    headline_name: str
    metrics: tuple[CurveMetric, ...]
    #: the headline is a share of images (accuracy): the report gives it with n and a Wilson
    #: interval and judges defences by it; other tasks' metrics are averages
    proportion: bool = False
    #: the headline carries the run's unit ("MRE 2.1 mm")
    has_unit: bool = False
    #: how the report draws attacked images: "gallery" (fooled images with their classes),
    #: "points" (landmarks), "boxes" (detections), "masks" (the segmentation section)
    panel: str = ""
    #: a summary recomputed from rows needs the dataset (detection: mAP pools true boxes)
    summary_needs_data: bool = False

    @property
    def display_name(self) -> str:
        """'Segmentation': the title's part before ': '."""
        return self.title.split(": ", 1)[0]


@dataclass(frozen=True)
class AttackGoals:
    """How a task's gradient attacks aim beyond "away from the truth": targets a user names,
    the goal batch an attack moves towards, when an image is done (early stop), and whether
    the attack reached its goal. Tasks without one take untargeted attacks only."""

    #: (``--target`` text, dataset, indices) -> each image's target (classification: a class)
    choose: Callable[[str, Any, list[int]], dict[int, Any]]
    #: the targets of a batch -> the goal the attack's loss takes
    goal: Callable[[list[Any]], Any]
    #: targeted? -> ``fn(outputs, goal) -> (N,) bool``, the test early stop freezes an image on
    early_stop: Callable[[bool], Callable[[torch.Tensor, Any], torch.Tensor]]
    #: (one attack row, the image's target or None) -> the attack reached its goal
    success: Callable[[Mapping[str, Any], Any], bool]
    #: an untargeted attack can stop an image early (a classifier's misclassification); False
    #: where stopping would under-report the damage it could still do (landmark errors grow
    #: on), so ``--early-stop`` needs ``--targeted`` there
    stops_untargeted: bool = True


@dataclass(frozen=True)
class Certification:
    """How a task's models are certified: a lower bound on robustness beside the attacks'
    upper bounds (``medrobust certify``). The maths lives in ``medrobust.certify``; this says
    which of it the task uses, its rows and how they are summarised."""

    #: the method and its source, for commands and reports
    method: str
    #: one row per image
    table: ResultTable
    #: (model, ``CertifySettings``) -> ``certify_one(dataset, index) -> row`` (the campaign adds
    #: the dataset index and the seconds)
    certifier: Callable[[PixelModel, Any], Callable[[Any, int], dict[str, Any]]]
    #: (rows, settings) -> the run's summary
    summary: Callable[[list[dict[str, Any]], Any], dict[str, Any]]
    #: summary -> one line per radius for the command's output
    describe: Callable[[dict[str, Any]], list[str]]
    #: the radii only summarise the rows (a classifier's radius is one number per image), so
    #: other radii reuse a run; else each radius is a certificate of its own
    radii_free: bool = False
    #: the certificates can be cross-checked by an attack on the smoothed model (``--check``)
    checkable: bool = False
    #: the cross-check of a dense certificate: (model, settings, check settings, the task's
    #: attack loss) -> ``check_one(dataset, index, targets, certificate row, radius)`` ->
    #: {attacked, certified, violation, l2}: the attack on the smoothed model at that radius,
    #: its metric beside the certified one, and what contradicts the certificate (None:
    #: classifiers, whose check is ``campaigns.certify.run_crosscheck_campaign``)
    check: Callable[..., Callable[..., dict[str, Any]]] | None = None


@dataclass(frozen=True)
class Task:
    """One task's recipe; see ``medrobust.tasks.TASKS`` for the registered ones."""

    name: str
    wrapper: type[PixelModel]
    datasets: tuple[str, ...]
    #: (train split, val split, options dict, device) -> (trained wrapper, JSON-able summary)
    train: Callable[[Any, Any, dict[str, Any], str], tuple[PixelModel, dict[str, Any]]]
    #: (wrapper, split) -> metrics; ``headline`` names the one a table leads with
    evaluate: Callable[[Any, Any], dict[str, Any]]
    headline: str
    #: per-sample loss terms (training loss; attacks maximise their sum)
    loss_terms: LossTerms | None = None
    #: model zoo name the task trains by default
    default_model: str = ""
    #: training options the task understands, with their defaults
    options: dict[str, Any] = field(default_factory=dict)
    #: attack campaigns on this task (landmarks, detection): (dataset, indices) -> the targets an
    #: untargeted attack moves away from; (model, dataset, indices, clean, adversarial) -> one
    #: row per image (task metric before and after, predictions); (rows, dataset) -> summary
    attack_targets: Callable[[Any, Any], Any] | None = None
    attack_rows: Callable[..., list[dict[str, Any]]] | None = None
    attack_summary: Callable[[list[dict[str, Any]], Any], dict[str, Any]] | None = None
    #: the headline metric improves downwards (radial error) rather than upwards
    lower_is_better: bool = False
    #: the model gives class logits, so attacks built on them (APGD-DLR, Square) apply
    class_logits: bool = False
    #: one line of ``evaluate``'s metrics, and one of an ``attack_summary`` (clean -> attacked)
    describe: Callable[[dict[str, Any]], str] | None = None
    describe_attack: Callable[[dict[str, Any]], str] | None = None
    #: (model, split) -> None: refuse data the model cannot score (another landmark count,
    #: other classes) with one line, before a command opens a run
    check_data: Callable[[Any, Any], None] | None = None
    #: (train split, val split, the task's own options) -> the untrained network ``train``
    #: builds, so a ``--xi-from`` checkpoint is matched against it before a run opens
    network: Callable[[Any, Any, dict[str, Any]], torch.nn.Module] | None = None
    #: the smallest image side the network takes, and why (the U-Net's poolings)
    min_side: int = 1
    min_side_why: str = ""
    #: how reports show the task (title, metrics and their summary keys, order, panels)
    report: TaskReport = field(default_factory=lambda: TaskReport(99, "", "", ()))
    #: (options a user set, the ``--xi-from`` checkpoint's metadata or None) -> the same
    #: options as this task names them: how ``model``/``width``/``padding`` reach its network,
    #: and the architecture fine-tuning starts from when the user chose none
    command_options: Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]] | None \
        = None
    #: the task's own options -> None: refuse bad values before any data is opened
    validate_options: Callable[[dict[str, Any]], None] | None = None
    #: (what ``train`` returned, train split, options, test metrics) -> the checkpoint's
    #: metadata (the wrapper adds what rebuilds it); None: ``Task.saved_meta``'s layout
    checkpoint_meta: Callable[[dict[str, Any], Any, dict[str, Any], dict[str, Any]],
                              dict[str, Any]] | None = None
    #: (checkpoint folder, device, loader options) -> the wrapper, for a task registered after
    #: import (the built-in tasks' loaders are ``models.loading.LOADERS``)
    load: Callable[..., PixelModel] | None = None
    #: (model, images, targets) -> (N,) how much the task metric suffered, higher worse (1 -
    #: Dice, radial error, 1 - image mAP): the worst-case ensemble keeps, per image, the member
    #: that hurt most (None: the task has no such ensemble)
    image_damage: Callable[[PixelModel, torch.Tensor, Any], torch.Tensor] | None = None
    #: a member's ``image_damage`` -> the per-image metric the rows store (1 - Dice -> Dice), so
    #: one ensemble run also gives each member's score (PGD-100, IFGSM-10) per image; None where
    #: the two differ in unit (landmark damage is in input pixels, their metric in mm)
    metric_of_damage: Callable[[float], float] | None = None
    #: losses besides the training loss that the worst-case ensemble runs PGD on, by name:
    #: name -> (model -> loss(outputs, targets) -> (N,))
    ensemble_losses: dict[str, Callable[[PixelModel], Callable[[torch.Tensor, Any],
                                                                torch.Tensor]]] = \
        field(default_factory=dict)
    #: targeted attacks, early stop and success (None: untargeted attacks only)
    goals: AttackGoals | None = None
    #: the model outputs masks: ``attack pgd`` runs the mask campaign (shared with ASMA), whose
    #: targets are masks (``--target-mode``) and whose rows score against target and truth
    mask_attacks: bool = False
    #: how the task's models are certified (None: ``certify`` refuses them)
    certification: Certification | None = None

    def model_name(self, options: Mapping[str, Any]) -> str:
        """The zoo model these options train (tasks with one network: ``default_model``)."""
        return str(options.get("model") or self.default_model)

    def training_options(self, given: Mapping[str, Any],
                         start_meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Every training option, from those a user set (None: not set) and the metadata of
        the checkpoint fine-tuning starts from: refused here, before data is opened, if the
        task does not take one or a value is bad."""
        from medrobust.tasks.robust import robust_config, split

        chosen = {k: v for k, v in given.items() if v is not None}
        if self.command_options is not None:
            chosen = self.command_options(chosen, start_meta)
        options = self.check_options(chosen)
        robust_config(options, self.name)
        if self.validate_options is not None:
            self.validate_options(split(options)[0])
        return options

    def saved_meta(self, trained: dict[str, Any], train_ds: Any, options: dict[str, Any],
                   test: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint metadata of a finished training (``checkpoint_meta`` where the task
        keeps an older layout its files and reports read)."""
        if self.checkpoint_meta is not None:
            return self.checkpoint_meta(trained, train_ds, options, test)
        meta = {"model": self.model_name(options), "model_kwargs": trained["model_kwargs"],
                "dataset": train_ds.spec,
                "train": {"options": options, "epochs_run": trained["epochs_run"],
                          "best_epoch": trained["best_epoch"],
                          "seconds": trained["train_seconds"]},
                "val": trained["val"], "test": test}
        return with_robust_record(meta, trained)

    def attack_loss(self, model: PixelModel) -> Callable[[torch.Tensor, Any], torch.Tensor]:
        """``loss(outputs, targets) -> (N,)`` for gradient attacks: the per-sample training
        objective (``total`` of the loss terms), which untargeted attacks maximise."""
        if self.loss_terms is None:
            from medrobust.errors import ConfigError

            raise ConfigError(f"{self.name} defines no loss to attack")
        terms = self.loss_terms

        def loss(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
            # campaigns read targets from the dataset (CPU); the outputs may live on a GPU
            if isinstance(targets, torch.Tensor):
                targets = targets.to(outputs.device)
            return terms(model, outputs, targets)["total"]

        loss.__name__ = f"{self.name}_loss"
        return loss

    def check_size(self, size: int | None, shape: tuple[int, int] | None = None) -> None:
        """``--size`` (or, once loaded, the images' (H, W) ``shape``) against ``min_side``."""
        from medrobust.errors import ConfigError

        if size is not None and size < self.min_side:
            raise ConfigError(f"--size {size} is too small for {self.name}: {self.min_side_why}, "
                              f"so images need at least {self.min_side} pixels a side (--size "
                              f"{self.min_side} or more)")
        if shape is not None and min(shape) < self.min_side:
            raise ConfigError(f"{self.name} images are {shape[0]}x{shape[1]}, too small: "
                              f"{self.min_side_why}, so images need at least {self.min_side} "
                              f"pixels a side (--size {self.min_side} or more)")

    def check_training(self, train_ds: Any, val_ds: Any, options: dict[str, Any]) -> None:
        """What training would only find out after its run opened, checked before: the image
        size, the network on one blank image of the data's shape (too small for its poolings,
        or a factory that fails on it), robust budgets against the image shape, and a
        ``--xi-from`` network of another shape (built and loaded here, as the trainer would)."""
        from medrobust.tasks.robust import check_before_run, split, trainer_kwargs

        self.check_size(None, tuple(train_ds.size))
        own, robust = split(options)
        network = self.network
        build = None if network is None else (lambda: network(train_ds, val_ds, own))
        if build is not None:
            self._check_network_runs(build, train_ds, own)
        check_before_run(trainer_kwargs(robust, self.name), train_ds, build)

    def _check_network_runs(self, build: Callable[[], torch.nn.Module], train_ds: Any,
                            own: dict[str, Any]) -> None:
        from medrobust.errors import ConfigError

        name = self.model_name(own)
        try:
            net = build()
        except TypeError as exc:  # an option the model's factory does not take
            raise ConfigError(f"model {name!r} cannot be built with "
                              f"{own.get('model_kwargs') or {}}: {exc}") from None
        h, w = tuple(train_ds.size)
        try:
            with torch.no_grad():
                net.eval()(torch.zeros(1, train_ds.channels, h, w))
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"model {name!r} cannot run on {h}x{w} {train_ds.name} images "
                              f"(too small? try a larger --size): {first}") from None

    def check_options(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The task's options with ``given`` (None: default) applied; unknown names refused."""
        from medrobust.errors import ConfigError

        unknown = sorted(k for k, v in given.items() if v is not None and k not in self.options)
        if unknown:
            flags = ", ".join(f"--{k.replace('_', '-')}" for k in unknown)
            raise ConfigError(f"{self.name} training takes no option(s) {flags}: they do not "
                              f"apply to {self.name} training")
        return {k: (given[k] if given.get(k) is not None else v) for k, v in self.options.items()}


def with_robust_record(meta: dict[str, Any], trained: dict[str, Any]) -> dict[str, Any]:
    """``meta`` with how robust training ran, when it did (standard checkpoints hold none)."""
    robust = trained.get("robust") or {}
    return {**meta, "robust": robust} if robust.get("method", "none") != "none" else meta


def config_meta(config: Any, trained: dict[str, Any], train_ds: Any, test: dict[str, Any],
                **more: Any) -> dict[str, Any]:
    """The checkpoint layout of trainers with a config dataclass (classification and
    segmentation files, and the reports and benchmarks reading them, use it)."""
    from dataclasses import asdict

    meta = {"model": config.model, "model_kwargs": config.model_kwargs,
            "dataset": train_ds.spec, "image_size": list(train_ds.size),
            "train_config": asdict(config), "history": trained["history"],
            "best_epoch": trained["best_epoch"],
            "metrics": {"val": trained["val"], "test": test},
            "train_seconds": trained["train_seconds"], **more}
    return with_robust_record(meta, trained)


def width_only(task: str) -> Callable[[dict[str, Any], dict[str, Any] | None], dict[str, Any]]:
    """``command_options`` of a task with one network whose only architecture choice is its
    width (landmarks, detection): ``--model`` and ``--padding`` are refused, and so is the
    classifiers' ``--augment`` policy (these tasks' augmentation is on or off); with
    ``--xi-from`` and no ``--width``, the width of the network that checkpoint holds."""

    def options(given: dict[str, Any], start: dict[str, Any] | None) -> dict[str, Any]:
        from medrobust.errors import ConfigError

        for name in ("model", "padding", "augment"):
            if name in given and not (name == "augment" and isinstance(given[name], bool)):
                raise ConfigError(f"--{name} does not apply to {task} training")
        out = dict(given)
        width = (start or {}).get("model_kwargs", {}) or {}
        if "width" not in out and isinstance(width, dict) and width.get("width") is not None:
            out["width"] = width["width"]
        return out

    return options


def data_place(ds: Any) -> str:
    """Where a split came from, for messages: its folder (else its name) and the split."""
    spec = getattr(ds, "spec", None) or {}
    return f"{spec.get('data_dir') or ds.name} ({ds.split})"


def fmt_value(value: Any, digits: int = 3) -> str:
    """A metric for the one-line descriptions the tasks give ('-' when absent)."""
    return "-" if value is None else f"{float(value):.{digits}f}"


def one_minus(value: float) -> float:
    """1 - value: a damage of 1 - Dice (or 1 - image mAP) back to the Dice (mAP) it hurt."""
    return 1.0 - float(value)
