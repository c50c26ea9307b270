"""``medrobust attack asma``: the adaptive segmentation mask attack, and its ablation.

Every image's IoU and pixel accuracy against the target and the truth, Dice, and the L2 / Linf
of the perturbation land in the store (table ``segattack_results``); a killed campaign resumes.
``--ablation`` runs static mask, adaptive mask, ASMA and targeted PGD at matched L2 (see
``attacks/seg_ablation.py``) and writes the table as CSV and Markdown.
"""

from __future__ import annotations

from typing import Any

import click

from medrobust.attacks.asma import ASMA
from medrobust.campaigns.asma_ablation import ablation_markdown, run_asma_ablation
from medrobust.campaigns.seg_attacks import attack_fn
from medrobust.campaigns.segmentation import run_segmentation_campaign
from medrobust.cli.common import (
    DEFAULT_STORE,
    check_model_size,
    common_options,
    emit,
    executor_options,
    fmt,
)
from medrobust.cli.seg_common import (
    Budget,
    DataChoice,
    MaskTarget,
    check_campaign_options,
    model_info,
    segmentation_inputs,
    target_options,
)
from medrobust.errors import ConfigError
from medrobust.models.checkpoint import read_meta
from medrobust.store import Store
from medrobust.utils.validation import check_writable


@click.command(short_help="ASMA: make a segmentation model predict a target mask.")
@click.option("--model", "model_dir", required=True, type=click.Path(),
              help="Segmentation checkpoint folder.")
@click.option("--task", type=click.Choice(["segmentation"]), default="segmentation",
              show_default=True, help="ASMA attacks segmentation models only.")
@click.option("--dataset", default=None, help="Dataset (default: the model's).")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None)
@click.option("--size", type=int, default=None, help="Image size (default: the model's).")
@click.option("--split", type=click.Choice(["train", "val", "test"]), default="test",
              show_default=True)
@click.option("--limit", type=int, default=None, help="Attack the first N images.")
@target_options("other", allow_none=False)
@click.option("--iterations", type=int, default=200, show_default=True,
              help="Gradient steps (paper: 2501).")
@click.option("--tau", type=float, default=2e-3, show_default=True,
              help="Multiplier offset; the first step's multiplier.")
@click.option("--beta", type=float, default=1e-2, show_default=True,
              help="Multiplier slope: m = beta * IoU + tau.")
@click.option("--mask", type=click.Choice(["adaptive", "static"]), default="adaptive",
              show_default=True)
@click.option("--multiplier/--no-multiplier", default=True, show_default=True,
              help="Dynamic perturbation multiplier (off: m = tau for every step).")
@click.option("--distance-weight", type=float, default=None,
              help="Weight of D = sum (X - X0)^2 (default 0.1 with a normalised step, 1 with "
                   "--normalize none as in the paper).")
@click.option("--normalize", type=click.Choice(["none", "sign", "linf", "l2"]), default="linf",
              show_default=True,
              help="Gradient normalisation; none = the paper's raw step (then use tiny tau/beta).")
@click.option("--eps", type=Budget(allow_none=True), default="0.1", show_default=True,
              help="Linf ball of the perturbation ('none' for no ball).")
@click.option("--eps-l2", type=Budget(allow_none=True), default=None,
              help="L2 ball of the perturbation.")
@click.option("--stop-iou", type=float, default=None,
              help="Freeze an image once its target IoU reaches this.")
@click.option("--ablation", is_flag=True,
              help="Also run static mask, adaptive mask and targeted PGD at matched L2.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Ablation: folder for ablation.csv/.md (default: the run's artifacts).")
@click.option("--batch-images", type=int, default=16, show_default=True)
@click.option("--examples", type=int, default=8, show_default=True,
              help="Images whose perturbation is kept for the report.")
@click.option("--store", "store_path", default=DEFAULT_STORE, show_default=True)
@click.option("--no-resume", is_flag=True, help="Start a new run even if one matches.")
@common_options
@executor_options
def asma(**opts: Any) -> None:
    """Adaptive segmentation mask attack (ASMA): make a segmentation model draw a chosen mask."""
    check_campaign_options(opts["store_path"], opts["examples"], opts["limit"])
    check_model_size(opts["size"], read_meta(opts["model_dir"]))
    if opts["out_dir"] is not None:
        if not opts["ablation"]:
            raise ConfigError("--out applies with --ablation (the folder for its tables)")
        check_writable("--out", opts["out_dir"], folder=True)
    seg, ds, indices, target = segmentation_inputs(
        opts["model_dir"], DataChoice.from_options(opts), MaskTarget.from_options(opts),
        opts["seed"], opts["device"], opts["batch_images"])
    assert target is not None
    att = ASMA(seg, iterations=opts["iterations"], tau=opts["tau"], beta=opts["beta"],
               mask=opts["mask"], dynamic=opts["multiplier"],
               distance_weight=opts["distance_weight"],
               normalize=None if opts["normalize"] == "none" else opts["normalize"],
               eps=opts["eps"], eps_l2=opts["eps_l2"], stop_iou=opts["stop_iou"],
               batch_size=opts["batch_images"], seed=opts["seed"])
    info = model_info(opts["model_dir"], seg)
    show = not opts["as_json"]
    with Store(opts["store_path"]) as store:
        if opts["ablation"]:
            summary = run_asma_ablation(store, seg, info, ds, att, indices, target,
                                        batch_images=opts["batch_images"],
                                        examples=opts["examples"], resume=not opts["no_resume"],
                                        show_progress=show, out_dir=opts["out_dir"],
                                        executor=opts["executor"])
        else:
            params = {"attack": att.params(), "task": "segmentation",
                      "target": target.describe(), "indices": indices}
            out = run_segmentation_campaign(
                store, seg, info, ds, attack_fn(att), "asma", "attack asma", params, indices,
                target, batch_images=opts["batch_images"], examples=opts["examples"],
                resume=not opts["no_resume"], show_progress=show, executor=opts["executor"])
            summary = {"run_id": out.run_id, "resumed": out.resumed,
                       "attacked_now": out.computed_now, **out.summary}
    summary.update(store=opts["store_path"], table="segattack_results", task="segmentation",
                   target_mode=target.mode)

    def human() -> None:
        s = summary
        verb = "resumed" if s["resumed"] else "ran"
        if opts["ablation"]:
            click.echo(f"{verb} ablation run {s['run_id']} on {s['images']} images "
                       f"(matched: {s['matching']})")
            click.echo(ablation_markdown(s["ablation"]).rstrip())
            click.echo(f"tables: {s['files']['csv']}, {s['files']['markdown']}")
        else:
            click.echo(f"{verb} run {s['run_id']}: {s['images']} images, target IoU "
                       f"{fmt(s['mean_clean_iou_target'])} -> {fmt(s['mean_iou_target'])} "
                       f"(>= {s['success_iou']}: {fmt(s['success_rate'])}), truth IoU "
                       f"{fmt(s['mean_clean_iou_truth'])} -> {fmt(s['mean_iou_truth'])}")
            click.echo(f"mean L2 {fmt(s['mean_l2'])}  mean Linf {fmt(s['mean_linf'])}")
        click.echo(f"results in {s['store']} (table segattack_results)")

    emit(summary, opts["as_json"], human)
