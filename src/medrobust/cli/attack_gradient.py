"""``medrobust attack pgd|ifgsm``: gradient attacks on a model of any task, at one budget.

The task comes from the checkpoint (``--task auto``) or is stated, and says what its attacks
take. Every task runs the task-attack campaign (each image's task metric before and after;
classifiers also ``--targeted`` towards a class, with early stop), except mask models, which
keep the campaign they share with ASMA: untargeted (``--target-mode none``) or towards target
masks, every image scored against target and truth. Both resume from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from medrobust.attacks.criteria import mask_iou_at_least
from medrobust.attacks.ifgsm import IFGSM
from medrobust.attacks.losses import get_loss
from medrobust.attacks.pgd import PGD
from medrobust.campaigns.seg_attacks import attack_fn
from medrobust.campaigns.segmentation import run_segmentation_campaign
from medrobust.cli.common import (
    DEFAULT_STORE,
    TaskChoice,
    check_model_size,
    classes_option,
    common_options,
    emit,
    executor_options,
    fmt,
    open_model_dataset,
    option_given,
)
from medrobust.cli.seg_common import (
    Budget,
    DataChoice,
    MaskTarget,
    check_campaign_options,
    model_info,
    pick_indices,
    segmentation_inputs,
    target_options,
)
from medrobust.errors import ConfigError
from medrobust.models import read_meta
from medrobust.store import Store
from medrobust.tasks import DEFAULT_TASK, Task, get_task
from medrobust.utils.device import resolve_device

ATTACKS: dict[str, type[PGD]] = {"pgd": PGD, "ifgsm": IFGSM}
#: ``--task auto``: the task the checkpoint records
AUTO = "auto"


def gradient_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``pgd`` and ``ifgsm`` (outermost first)."""
    decorators = [
        click.option("--model", "model_dir", required=True, type=click.Path(),
                     help="Checkpoint folder."),
        click.option("--task", type=TaskChoice(AUTO),
                     default=AUTO, show_default=True,
                     help="auto: from the checkpoint's metadata."),
        click.option("--dataset", default=None,
                     help="Dataset (default: the one the model was trained on)."),
        click.option("--data-dir", type=click.Path(file_okay=False), default=None),
        classes_option,
        click.option("--size", type=int, default=None, help="Image size (default: the model's)."),
        click.option("--no-verify", is_flag=True, help="Skip the MedMNIST MD5 check."),
        click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
                     show_default=True),
        click.option("--limit", type=int, default=None, help="Attack the first N images."),
        click.option("--eps", type=Budget(), default="8/255", show_default=True,
                     help="Budget on the [0,1] scale (a number or a fraction like 8/255)."),
        click.option("--norm", type=click.Choice(["linf", "l2"]), default="linf",
                     show_default=True),
        click.option("--steps", type=int, default=10, show_default=True),
        click.option("--step", type=Budget(), default=None,
                     help="Step size (default: PGD 2.5*eps/steps, IFGSM eps/steps)."),
        click.option("--random-start/--no-random-start", default=None,
                     help="Random start (default: on for PGD, off for IFGSM)."),
        click.option("--loss", type=click.Choice(["ce", "dice"]), default="ce",
                     show_default=True, help="Loss: cross-entropy or (segmentation) Dice."),
        click.option("--early-stop/--no-early-stop", default=False, show_default=True,
                     help="Freeze an image once it succeeds (classification: fooled / target "
                          "reached; segmentation: target IoU >= --stop-iou)."),
        click.option("--stop-iou", type=float, default=0.99, show_default=True),
        click.option("--targeted", is_flag=True,
                     help="Targeted (see --target): classifiers and landmark models."),
        click.option("--target", default="next", show_default=True,
                     help="Classifiers: a class name, index, or 'next'. Landmark models: "
                          "shift:DX,DY[@L1,L2,...] moves the chosen landmarks (1-based or by "
                          "name; all by default) by DX, DY input pixels and holds the rest."),
        target_options("none", allow_none=True),
        click.option("--batch-images", type=int, default=32, show_default=True),
        click.option("--examples", type=int, default=8, show_default=True,
                     help="Segmentation: images whose perturbation is kept for the report."),
        click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True),
        click.option("--no-resume", is_flag=True, help="Start a new run even if one matches."),
        common_options,
        executor_options,
    ]
    for deco in reversed(decorators):
        fn = deco(fn)
    return fn


def resolve_task(task: str, model_dir: str) -> str:
    """The task the user named, or the checkpoint's; a mismatch is one line, not a traceback."""
    saved = read_meta(model_dir).get("task", DEFAULT_TASK)
    if task == AUTO:
        return str(saved)
    if task != saved:
        raise ConfigError(f"--task {task}, but {model_dir} holds a {saved} model")
    return task


@dataclass(frozen=True)
class AttackBudget:
    """How far and how the attack steps: the norm ball, its radius, the steps and step size
    (None: PGD 2.5*eps/steps, IFGSM eps/steps) and the random start (None: the attack's)."""

    norm: str = "linf"
    eps: float = 8 / 255
    steps: int = 10
    step: float | None = None
    random_start: bool | None = None


@dataclass(frozen=True)
class Goal:
    """What the attack aims at: its loss, a classifier's target class, early stopping (and the
    target IoU at which a mask attack stops) and a mask model's target masks."""

    loss: str = "ce"
    targeted: bool = False
    target: str = "next"
    early_stop: bool = False
    stop_iou: float = 0.99
    masks: MaskTarget = field(default_factory=MaskTarget)


@dataclass(frozen=True)
class CampaignSettings:
    """How the campaign runs and is recorded."""

    store: str = DEFAULT_STORE
    batch_images: int = 32
    #: segmentation: images whose perturbation is kept for the report
    examples: int = 8
    resume: bool = True
    seed: int = 0
    device: str = "auto"
    #: where the batches run (None: this process)
    executor: Any = None


@dataclass(frozen=True)
class GradientRequest:
    """One ``attack pgd|ifgsm``: the attack, the checkpoint and its task (``auto``: the one it
    records), the split, the budget, the goal and the run settings."""

    kind: str
    model_dir: str
    data: DataChoice
    budget: AttackBudget
    goal: Goal
    run: CampaignSettings
    task: str = AUTO
    as_json: bool = False
    #: parameter names the user set on the command line: an option some task would ignore is
    #: refused only when it was given, not for its default
    given: frozenset[str] = frozenset()

    @classmethod
    def from_options(cls, kind: str, opts: Mapping[str, Any],
                     given: Iterable[str] = ()) -> GradientRequest:
        """From the click parameters of ``pgd`` / ``ifgsm``."""
        return cls(
            kind, opts["model_dir"], DataChoice.from_options(opts),
            AttackBudget(opts["norm"], opts["eps"], opts["steps"], opts["step"],
                         opts["random_start"]),
            Goal(opts["loss"], opts["targeted"], opts["target"], opts["early_stop"],
                 opts["stop_iou"], MaskTarget.from_options(opts)),
            CampaignSettings(opts["store_path"], opts["batch_images"], opts["examples"],
                             not opts["no_resume"], opts["seed"], opts["device"],
                             opts["executor"]),
            opts["task"], opts["as_json"], frozenset(given))

    def validate(self) -> Task:
        """Every check that needs no model or data, in one place, before anything is loaded;
        the task whose attack runs."""
        check_campaign_options(self.run.store, self.run.examples, self.data.limit)
        task = get_task(resolve_task(self.task, self.model_dir))
        self.check_task_options(task)
        check_model_size(self.data.size, read_meta(self.model_dir))
        if task.mask_attacks and self.goal.masks.mode == "none" and self.goal.early_stop:
            raise ConfigError("--early-stop needs a target (--target-mode other|erase|...)")
        return task

    def check_task_options(self, task: Task) -> None:
        """Options the task's attacks cannot take would be silently ignored: refuse them. What
        a task takes follows from what it declares (``goals``: targets and early stop; mask
        attacks: target masks, the Dice loss, the IoU stop and example panels)."""
        goal, given = self.goal, self.given
        if task.mask_attacks:
            if goal.targeted or "target" in given:
                raise ConfigError("--targeted and --target are for classifiers; segmentation "
                                  "targets come from --target-mode")
            if "stop_iou" in given and not goal.early_stop:
                raise ConfigError("--stop-iou applies to segmentation models with --early-stop")
            return
        if task.goals is not None and not goal.targeted and "target" in given:
            # the rule of ``cli.attack.check_target_options``, on the recorded options
            raise ConfigError("--target needs --targeted (without it the attack is untargeted)")
        if task.goals is not None and not task.goals.stops_untargeted and goal.early_stop \
                and not goal.targeted:
            raise ConfigError(f"--early-stop on {task.name} models needs --targeted: an "
                              "untargeted attack there never stops early (its damage can "
                              "still grow)")
        masks = "segmentation models"
        for flag, used, where in (
                ("--target-mode", goal.masks.mode != "none", masks),
                ("--stop-iou", "stop_iou" in given, f"{masks} with --early-stop"),
                ("--loss dice", goal.loss != "ce", masks),
                ("--examples", "examples" in given, masks)):
            if used and task.goals is not None:
                raise ConfigError(f"{flag} applies to {where}" if flag != "--loss dice"
                                  else "--loss dice is for segmentation models")
        if task.goals is None:
            for flag, used in (("--targeted", goal.targeted), ("--target", "target" in given),
                               ("--target-mode", goal.masks.mode != "none"),
                               ("--loss", "loss" in given),
                               ("--early-stop", goal.early_stop),
                               ("--stop-iou", "stop_iou" in given),
                               ("--examples", "examples" in given)):
                if used:
                    raise ConfigError(f"{flag} does not apply to {task.name} models: their "
                                      "attacks raise the task's own training loss, untargeted")


def given_options(opts: Mapping[str, Any]) -> frozenset[str]:
    """The parameters among ``opts`` that the user set on the command line."""
    return frozenset(name for name in opts if option_given(name))


def run_gradient(request: GradientRequest) -> None:
    """The body of ``pgd`` and ``ifgsm``."""
    task = request.validate()
    # mask models keep the campaign they share with ASMA (target masks, example panels);
    # every other task is attacked through its loss by the one task-attack campaign
    run = _masks if task.mask_attacks else _task_attack
    summary, line = run(request, task)
    summary["task"] = task.name

    def human() -> None:
        s = summary
        verb = "resumed" if s["resumed"] else "ran"
        click.echo(f"{verb} run {s['run_id']} ({request.kind}, {task.name}): {s['images']} images")
        click.echo(line)
        click.echo(f"results in {s['store']} (table {s['table']})")

    emit(summary, request.as_json, human)


def _attack(request: GradientRequest, model: Any, loss: Any, targeted: bool, early: Any) -> PGD:
    budget, run = request.budget, request.run
    return ATTACKS[request.kind](model, loss=loss, norm=budget.norm, eps=budget.eps,
                                 step=budget.step, steps=budget.steps,
                                 random_start=budget.random_start, targeted=targeted,
                                 early_stop=early if request.goal.early_stop else None,
                                 batch_size=run.batch_images, seed=run.seed)


def _masks(request: GradientRequest, task: Task) -> tuple[dict[str, Any], str]:
    goal, run, kind = request.goal, request.run, request.kind
    seg, ds, indices, target = segmentation_inputs(request.model_dir, request.data, goal.masks,
                                                   run.seed, run.device, run.batch_images)
    att = _attack(request, seg, get_loss(goal.loss), target is not None,
                  mask_iou_at_least(goal.stop_iou))
    att.check_images((ds.channels, *ds.images.shape[1:3]))
    params = {"attack": att.params(), "task": task.name,
              "target": None if target is None else target.describe(), "indices": indices}
    with Store(run.store) as store:
        out = run_segmentation_campaign(
            store, seg, model_info(request.model_dir, seg), ds, attack_fn(att), kind,
            f"attack {kind}", params, indices, target, batch_images=run.batch_images,
            examples=run.examples, resume=run.resume, show_progress=not request.as_json,
            executor=run.executor)
    s = out.summary
    line = (f"truth IoU {fmt(s['mean_clean_iou_truth'])} -> {fmt(s['mean_iou_truth'])}  target "
            f"IoU {fmt(s['mean_iou_target'])}  mean L2 {fmt(s['mean_l2'])}  mean Linf "
            f"{fmt(s['mean_linf'])}")
    return {"run_id": out.run_id, "resumed": out.resumed, "attacked_now": out.computed_now,
            "store": run.store, "table": "segattack_results", **s}, line


def _task_attack(request: GradientRequest, task: Task) -> tuple[dict[str, Any], str]:
    """Any other task: the attack raises the task's training loss (or, targeted, lowers it
    towards each image's target); each image's task metric before and after, and whether the
    attack reached its goal, land in ``task_attack_results``."""
    from medrobust.campaigns.task_attack import run_task_attack_campaign
    from medrobust.models.loading import load_model

    data, goal, run = request.data, request.goal, request.run
    meta = read_meta(request.model_dir)
    model = load_model(request.model_dir, resolve_device(run.device))
    targeted = bool(goal.targeted)
    early = None if task.goals is None else task.goals.early_stop(targeted)
    att = _attack(request, model, task.attack_loss(model), targeted, early)
    ds = open_model_dataset(meta, model, data.dataset, data.split, data.data_dir, data.size,
                            data.no_verify)
    att.check_images((ds.channels, *ds.images.shape[1:3]))
    indices = pick_indices(ds, data.limit)
    targets = None
    if targeted:
        assert task.goals is not None  # check_task_options refused --targeted otherwise
        targets = task.goals.choose(goal.target, ds, indices)
        indices = [i for i in indices if i in targets]
    info = {"dir": str(Path(request.model_dir).resolve()), "model": meta.get("model"),
            "model_kwargs": meta.get("model_kwargs", {}), "saved_at": meta.get("saved_at"),
            "task": task.name}
    params = {"attack": att.params(), "task": task.name, "indices": indices,
              "targets": None if targets is None else {str(k): v for k, v in targets.items()}}
    with Store(run.store) as store:
        out = run_task_attack_campaign(store, task, model, info, ds, att,
                                       f"attack {request.kind}", params, indices,
                                       batch_images=run.batch_images, resume=run.resume,
                                       show_progress=not request.as_json,
                                       executor=run.executor, targets=targets)
    s = out.summary
    line = (f"{task.describe_attack(s) if task.describe_attack else ''}  mean L2 "
            f"{fmt(s.get('mean_l2'))}  mean Linf {fmt(s.get('mean_linf'))}")
    return {"run_id": out.run_id, "resumed": out.resumed, "attacked_now": out.computed_now,
            "store": run.store, "table": "task_attack_results", **s}, line


@click.command(short_help="PGD (Linf or L2, random start) on a model of any task.")
@gradient_options
def pgd(**opts: Any) -> None:
    """PGD (Linf or L2, random start) on a classifier, segmenter, landmark model or detector."""
    run_gradient(GradientRequest.from_options("pgd", opts, given_options(opts)))


@click.command(short_help="Iterative FGSM / BIM (no random start) on any task.")
@gradient_options
def ifgsm(**opts: Any) -> None:
    """Iterative FGSM / BIM (no random start) on a classifier, segmenter, landmark model or
    detector."""
    run_gradient(GradientRequest.from_options("ifgsm", opts, given_options(opts)))
