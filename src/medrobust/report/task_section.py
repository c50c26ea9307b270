"""Report sections for gradient attacks beyond classification: landmark and detection panels, and
metric-vs-budget curves for every task.

A single budget says little about robustness; what a reader needs is how fast each task's own
metric falls as the budget grows, so every run of ``attack pgd|ifgsm`` in the store becomes a
point, and runs that differ only in their budget become one curve. The campaigns of the attack
protocol (``evaluate --attack``) are drawn by the adversarial-training section instead, one line
per model, so no curve appears twice. Landmark and detection runs also get per-run tables (the
store's summaries, verbatim) and panels of a few deterministically chosen images (the worst and
the median by how much the attack hurt).

The task campaign keeps no perturbations, so a panel replays the recorded attack on its one
image: the run records the checkpoint, the dataset spec and every attack setting, and random
starts are keyed by dataset index, so the replay reproduces the stored result; it is checked
against the stored predictions and a mismatch is said, not hidden.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.report.blocks import Definitions, Figure, Note, Paragraphs, Section, Table, num, pct
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text as budget_label
from medrobust.report.names import data_text
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.robust_data import protocol_campaigns
from medrobust.report.sections import run_title
from medrobust.report.task_plots import (
    Curve,
    CurvePoint,
    budget_alt,
    budget_figure,
    detection_panel,
    landmark_panel,
)
from medrobust.tasks import DEFAULT_TASK, TASKS, get_task, ordered_tasks, task_report

#: the commands of ``medrobust attack pgd|ifgsm`` (kept for callers; see ``is_budget_attack``)
GRADIENT_COMMANDS = ("attack pgd", "attack ifgsm")
#: attack commands with sections of their own and no single budget on the axis
NON_BUDGET_COMMANDS = ("attack onepixel", "attack asma", "attack asma-ablation")
#: detections drawn in panels score at least this (the campaign counts 'confident' ones so too)
SCORE_THRESHOLD = 0.3
#: the ``TaskReport.panel`` kinds this section draws (galleries: ``attack_examples``)
PANEL_KINDS = ("points", "boxes")
#: which images get panels, in order: the one the attack hurt most, and the median one
EXAMPLES = ("worst", "median")
#: replayed metric vs stored metric: equal up to the rounding of stored predictions
REPLAY_TOLERANCE = 1e-3


def is_budget_attack(run: dict[str, Any]) -> bool:
    """Whether a run is one attack at one budget: ``attack pgd|ifgsm`` from the CLI, and every
    campaign of the attacked-evaluation protocol (``attack apgd-ce``, ``attack square``,
    ``attack pgd-r5`` ...), on any task."""
    command = str(run["command"])
    return command.startswith("attack ") and command not in NON_BUDGET_COMMANDS


def budget_attack_runs(ctx: ReportContext) -> list[dict[str, Any]]:
    """Every one-budget attack run of the store, oldest first."""
    return [r for r in ctx.runs if is_budget_attack(r)]


def campaign_tables() -> tuple[str, ...]:
    """The tables one-budget attack rows can be in, as the campaign modules name them: the task
    campaign's (every task; the protocol, ``medrobust evaluate --attack``, records there) and
    the older classifier and segmenter campaigns of ``medrobust attack``. Run ids are unique
    across tables, so a run's rows are wherever its id is.

    The one place that says where the campaigns live (imported here, not at module level, so a
    report without gradient runs does not pay for importing the campaigns).
    """
    from medrobust.campaigns.gradient import GRADIENT_TABLE
    from medrobust.campaigns.segmentation import SEG_TABLE
    from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE

    return (TASK_ATTACK_TABLE.name, GRADIENT_TABLE.name, SEG_TABLE.name)


#: a summary key only one campaign writes -> that campaign's table
SUMMARY_MARKERS = (("robust_accuracy", "gradient_results"), ("adv_accuracy", "task_attack_results"),
                   ("mean_dice_truth", "segattack_results"), ("adv_dice", "task_attack_results"),
                   ("adv_mre", "task_attack_results"), ("adv_map", "task_attack_results"))


def run_table(ctx: ReportContext, run: dict[str, Any]) -> str | None:
    """The table holding a one-budget attack run's rows (None: no rows anywhere yet).

    One command (``attack pgd``) writes to different tables depending on who ran it, so the
    run's summary says which when it has one, else the table that holds its rows."""
    candidates = campaign_tables()
    summary = run.get("summary") or {}
    for key, table in SUMMARY_MARKERS:
        if key in summary and table in candidates:
            return table
    for table in candidates:
        if ctx.rows(table, run["id"]):
            return table
    return None


def run_task(run: dict[str, Any]) -> str:
    """The task a gradient run attacked (runs from before tasks were recorded: classifiers)."""
    return str((run.get("params") or {}).get("task") or DEFAULT_TASK)


def attack_name(run: dict[str, Any]) -> str:
    """'PGD', 'IFGSM', 'APGD-CE', 'SQUARE', 'PGD-R5': the attack as its command names it."""
    command = str(run["command"])
    return command.split(" ", 1)[1].upper() if " " in command else command.upper()


# -- summaries ------------------------------------------------------------------------------------

def _recompute(task: str, table: str, rows: list[dict[str, Any]], run: dict[str, Any],
               ctx: ReportContext) -> dict[str, Any] | None:
    """A run's summary from its rows with the campaign's own function (an interrupted run has
    none stored), so the report and the CLI can never disagree on what a summary means."""
    if table == "gradient_results":
        from medrobust.campaigns.gradient import summarise_gradient

        return summarise_gradient(rows)
    if table == "segattack_results":
        from medrobust.campaigns.segmentation import summarise_segmentation

        return summarise_segmentation(rows)
    summarise = get_task(task).attack_summary
    assert summarise is not None
    if not get_task(task).report.summary_needs_data:
        return summarise(rows, None)  # means of the rows; the dataset is not needed
    ds, _ = ctx.dataset(run)  # detection: dataset mAP needs the true boxes
    return None if ds is None else summarise(rows, ds)


def run_summary(ctx: ReportContext, run: dict[str, Any], task: str,
                rows: list[dict[str, Any]] | None = None) -> dict[str, Any] | None:
    """The run's stored summary when it finished; else one recomputed from the rows so far."""
    stored = run.get("summary") or {}
    if run["status"] == "completed" and stored.get("images"):
        return stored
    table = run_table(ctx, run)
    if table is None:
        return None
    if rows is None:
        rows = ctx.rows(table, run["id"])
    return _recompute(task, table, rows, run, ctx) if rows else None


def _mean(rows: list[dict[str, Any]], key: str) -> float | None:
    vals = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


# -- metric vs budget -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Metric:
    """One curve metric: summary keys before/after, an axis label and a cell formatter."""

    key: str
    label: str
    clean_key: str
    adv_key: str
    fmt: Callable[[Any], str]
    upper: float | None = 1.0


def task_metrics(task: str, summary: dict[str, Any]) -> list[Metric]:
    """What the curves of a task plot, as the task says (``TaskReport.metrics``), with the
    summary keys this run's schema uses; the unit (landmarks) comes from the run."""
    spec = task_report(task)
    if spec is None:
        return []
    unit = str(summary.get("unit") or "px")
    out = []
    for m in spec.metrics:
        pair = m.pair(summary)
        if pair is not None:
            out.append(Metric(m.key.format(unit=unit), m.label.format(unit=unit), *pair,
                              pct if m.percent else num, m.upper))
    return out


def _curve_key(run: dict[str, Any], task: str) -> tuple[str, ...]:
    """What must agree for runs to lie on one curve: everything but the budget (and the step
    size, which the protocol scales with the budget)."""
    params = run.get("params") or {}
    a = dict(params.get("attack") or {})
    a.pop("eps", None)
    a.pop("step", None)
    a["command"] = run["command"]
    target = params.get("target")
    model = (run.get("model") or {}).get("dir") or ""
    data = json.dumps(run.get("dataset") or {}, sort_keys=True, default=str)
    return (task, str(model), data, json.dumps(a, sort_keys=True, default=str),
            json.dumps(target, sort_keys=True, default=str))


def _curve_label(run: dict[str, Any], with_model: bool) -> str:
    params = run.get("params") or {}
    a = params.get("attack") or {}
    norm = {"linf": "Linf", "l2": "L2"}.get(str(a.get("norm")), str(a.get("norm", "?")))
    effort = f"{a['max_queries']} queries" if a.get("max_queries") else \
        f"{a.get('steps', '?')} steps"
    label = f"{attack_name(run)} {norm}, {effort}"
    if a.get("targeted"):
        label += ", targeted"
    target = params.get("target")
    if isinstance(target, dict) and target.get("mode"):
        label += f", target {target['mode']}"
    if with_model:
        model = run.get("model") or {}
        name = model.get("model") or Path(str(model.get("dir") or "model")).name
        label += f" \u2014 {name} on {data_text(run.get('dataset'))}"
    return label


def budget_curves(ctx: ReportContext) -> list[Curve]:
    """Every task's metric-vs-budget curves from the store's gradient runs.

    One curve per (task, model, dataset, attack settings but the budget, target); one point
    per budget. Several runs at one budget (a rerun with --no-resume) give one point: the run
    with the most images, the newest on a tie. Runs with per-image budgets or no rows yet are
    left out, since they have no single place on the budget axis, and so are the cells of the
    attack protocol, which the adversarial-training section draws.
    """
    shown_elsewhere = protocol_campaigns(ctx)
    runs = [r for r in budget_attack_runs(ctx) if r["id"] not in shown_elsewhere]
    if not runs:
        return []
    groups: dict[tuple[str, ...], dict[float, tuple[dict[str, Any], dict[str, Any]]]] = {}
    for run in runs:
        task = run_task(run)
        a = (run.get("params") or {}).get("attack") or {}
        eps = a.get("eps")
        if task not in TASKS or isinstance(eps, bool) or \
                not isinstance(eps, (int, float)) or a.get("norm") not in ("linf", "l2"):
            continue
        summary = run_summary(ctx, run, task)
        if not summary or not summary.get("images"):
            continue
        at = groups.setdefault(_curve_key(run, task), {})
        old = at.get(float(eps))
        if old is None or (summary["images"], run["id"]) >= (old[1]["images"], old[0]["id"]):
            at[float(eps)] = (run, summary)
    per_task: dict[str, set[tuple[str, str]]] = {}
    for key in groups:
        per_task.setdefault(key[0], set()).add((key[1], key[2]))
    curves: list[Curve] = []
    for key, points in groups.items():
        task = key[0]
        first_run, first_summary = next(iter(points.values()))
        label = _curve_label(first_run, len(per_task[task]) > 1)
        norm = str((first_run["params"]["attack"])["norm"])
        for metric in task_metrics(task, first_summary):
            curve = Curve(task, metric.key, metric.label, norm, label, upper=metric.upper)
            for eps in sorted(points):
                run, summary = points[eps]
                value = summary.get(metric.adv_key)
                if value is None:
                    continue
                clean = summary.get(metric.clean_key)
                curve.points.append(CurvePoint(eps, float(value),
                                               None if clean is None else float(clean),
                                               int(summary["images"]), int(run["id"])))
            if curve.points:
                curves.append(curve)
    curves.sort(key=lambda c: (get_task(c.task).report.order, c.norm != "linf", c.label))
    return curves


def budget_table(curves: list[Curve], formats: dict[str, Callable[[Any], str]]) -> Table:
    """The plotted numbers (one row per point, each metric's clean and attacked value)."""
    metrics = list(dict.fromkeys((c.metric, c.metric_label) for c in curves))
    lookup = {(c.metric, c.label, c.norm, p.run_id): p for c in curves for p in c.points}
    seen: list[tuple[str, str, float, int, int]] = []
    for c in curves:
        for p in sorted(c.points, key=lambda p: p.eps):
            row = (c.label, c.norm, p.eps, p.run_id, p.n)
            if row not in seen:
                seen.append(row)
    columns = ["Curve", "Budget", "Run", "Images"]
    for _, label in metrics:
        columns += [f"{label} clean", f"{label} attacked"]
    rows = []
    for label, norm, eps, run_id, n in seen:
        cells = [label, budget_label(norm, eps), str(run_id), num(n)]
        for key, _ in metrics:
            p = lookup.get((key, label, norm, run_id))
            fmt = formats.get(key, num)
            cells += ["-", "-"] if p is None else [fmt(p.clean), fmt(p.value)]
        rows.append(cells)
    return Table(columns, rows, caption="The plotted points (dashed lines: the clean values)")


def budget_section(ctx: ReportContext) -> Section | None:
    """Metric vs budget for every task that has gradient-attack runs (None: no such runs)."""
    curves = budget_curves(ctx)
    if not curves:
        return None
    section = Section("budget-curves", "Metric vs attack budget: how fast does each task "
                                       "degrade?")
    section.add(Paragraphs([
        "Each line is one attack (PGD, IFGSM ..., one norm and step count) on one model and "
        "dataset, run at several budgets; each marker is one run. The dashed line of the same "
        "colour is the model's score on the same images without attack. A robust model keeps "
        "its line near the dashed one as the budget grows.",
        "Budgets are on the 0-1 intensity scale: Linf is the largest change of any pixel "
        "value, given as k/255 grey levels (8/255 is about 3 % of the range); L2 is the "
        "length of the whole perturbation. n is the number of attacked images.",
    ]))
    protocol = protocol_campaigns(ctx) & {r["id"] for r in budget_attack_runs(ctx)}
    if protocol:
        section.add(Note(f"{len(protocol)} run(s) of the attack protocol (medrobust evaluate "
                         "--attack) are not drawn here: the adversarial-training section "
                         "shows them, one line per model.", "info"))
    formats: dict[str, Callable[[Any], str]] = {}
    for task in ordered_tasks():
        mine = [c for c in curves if c.task == task.name]
        if not mine:
            continue
        # a curve's metric is the task's key with the run's unit filled in ("sdr:mm")
        percent = {m.key.split(":")[0] for m in task.report.metrics if m.percent}
        for c in mine:
            formats[c.metric] = pct if c.metric.split(":")[0] in percent else num
        title = task.report.title
        sub = Section(f"budget-{task.name}", title)
        what = title.split(": ", 1)[-1]
        sub.add(Figure(figure_to_data_uri(budget_figure(mine, title)),
                       f"{title} against the attack budget, one line per attack "
                       "and norm.", alt=budget_alt(mine, what)))
        sub.add(budget_table(mine, formats))
        harmless = did_not_hurt(mine, task.lower_is_better, formats)
        if harmless:
            sub.add(Note(harmless, "warning"))
        for c in mine:
            for p in c.points:
                ctx.cite(p.run_id, sub.anchor, sub.title)
        section.subsections.append(sub)
    return section


def did_not_hurt(curves: list[Any], lower_is_better: bool,
                 formats: dict[str, Callable[[Any], str]]) -> str | None:
    """A warning naming the runs whose attack left the headline metric better than without it
    (an MRE that fell, a Dice that rose): that is not robustness. On a barely trained model the
    loss the attack raises and the metric can disagree, or the attack is too weak to move it."""
    bad = []
    for c in curves:
        if c.metric != curves[0].metric:  # the headline metric only (SDR follows MRE)
            continue
        for p in c.points:
            if p.clean is None:
                continue
            better = p.value < p.clean if lower_is_better else p.value > p.clean
            if better:
                show = formats.get(c.metric, num)
                bad.append(f"run {p.run_id} ({c.label}, {budget_label(c.norm, p.eps)}: "
                           f"{show(p.clean)} without attack, {show(p.value)} with it)")
    if not bad:
        return None
    return (f"The attack did not hurt in {len(bad)} run(s): {'; '.join(bad)}. Read this as a "
            "failed attack, not as robustness: on a barely trained model the loss the attack "
            "raises and the metric disagree, or the attack is too weak (more steps, restarts, "
            "evaluate --attack ensemble).")


# -- landmark and detection runs ------------------------------------------------------------------

def damage(row: dict[str, Any], task: str) -> float:
    """How much the attack hurt one image: the task metric's change in its bad direction (MRE
    gained, mAP lost)."""
    change = float(row["adv_metric"]) - float(row["clean_metric"])
    return change if get_task(task).lower_is_better else -change


def pick_examples(rows: list[dict[str, Any]], task: str) -> list[tuple[str, dict[str, Any]]]:
    """The worst and the median image by damage (ties: lower dataset index), without repeats:
    a fixed rule, so two reports of one store show the same images and none is cherry-picked."""
    ranked = sorted(rows, key=lambda r: (-damage(r, task), int(r["dataset_index"])))
    picks = {"worst": ranked[0], "median": ranked[len(ranked) // 2]} if ranked else {}
    out: list[tuple[str, dict[str, Any]]] = []
    for name in EXAMPLES:
        row = picks.get(name)
        if row is not None and all(row["dataset_index"] != r["dataset_index"] for _, r in out):
            out.append((name, row))
    return out


@dataclass
class Replay:
    """The recorded attack redone on a few images: adversarial images and perturbations."""

    adversarial: dict[int, np.ndarray]  # index -> uint8-scale (H, W, C) float image
    delta: dict[int, np.ndarray]  # index -> (C, H, W) perturbation on the [0,1] scale
    mismatches: list[str]


def replay_attack(run: dict[str, Any], task: str, ds: Any, rows: list[dict[str, Any]]
                  ) -> Replay | str:
    """Rebuild the run's model and attack and redo it on ``rows``' images, or say why not."""
    import torch

    from medrobust.attacks.ifgsm import IFGSM
    from medrobust.attacks.pgd import PGD
    from medrobust.models.loading import load_model

    params = run.get("params") or {}
    a = params.get("attack") or {}
    attacks = {"pgd": PGD, "ifgsm": IFGSM}
    if a.get("attack") not in attacks or not isinstance(a.get("eps"), (int, float)):
        return f"the attack {a.get('attack')!r} with these settings cannot be replayed"
    model_dir = (run.get("model") or {}).get("dir")
    if not model_dir or not Path(model_dir).is_dir():
        return f"the checkpoint {model_dir} is not available"
    try:
        model = load_model(model_dir, "cpu")
        t = get_task(task)
        assert t.attack_targets is not None and t.attack_rows is not None
        attack = attacks[a["attack"]](model, loss=t.attack_loss(model), norm=a["norm"],
                                      eps=a["eps"], step=a.get("step"), steps=a["steps"],
                                      random_start=a.get("random_start"),
                                      seed=int(a.get("seed") or 0))
        idx = np.asarray([int(r["dataset_index"]) for r in rows], dtype=np.int64)
        x = model.to_tensor(ds.images[idx])
        adv = attack(x, t.attack_targets(ds, idx), keys=[int(i) for i in idx]).adversarial
        scores = t.attack_rows(model, ds, idx, x, adv)
    except Exception as exc:  # the panels only add to the stored numbers
        return f"replaying the attack failed ({type(exc).__name__}: {exc})"
    with torch.no_grad():
        delta = (adv - x).cpu().numpy()
        adv_img = adv.cpu().numpy().transpose(0, 2, 3, 1) * 255.0
    mismatches = []
    for j, row in enumerate(rows):
        for key in ("clean_metric", "adv_metric"):
            if abs(float(scores[j][key]) - float(row[key])) > REPLAY_TOLERANCE * max(
                    1.0, abs(float(row[key]))):
                mismatches.append(f"image {row['dataset_index']}: stored {key} "
                                  f"{num(row[key])}, replayed {num(scores[j][key])}")
    return Replay({int(i): adv_img[j] for j, i in enumerate(idx)},
                  {int(i): delta[j] for j, i in enumerate(idx)}, mismatches)


def _settings(run: dict[str, Any]) -> str:
    a = (run.get("params") or {}).get("attack") or {}
    eps = a.get("eps")
    budget = budget_label(a.get("norm"), eps)
    step = a.get("step")
    return (f"Attack: {attack_name(run)}, budget {budget}, {a.get('steps', '?')} steps, step "
            f"{'default' if step is None else num(step, 4)}, random start "
            f"{'on' if a.get('random_start') else 'off'}, seed {a.get('seed', 0)}; untargeted "
            "(it raises the task's own training loss).")


def landmark_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    u = summary.get("unit") or "px"
    return Table(["Images", f"MRE clean ({u})", f"MRE attacked ({u})", f"SDR@2{u} clean",
                  f"SDR@2{u} attacked", "Mean L2", "Mean Linf", "Mean steps"],
                 [[num(summary.get("images")), num(summary.get("clean_mre")),
                   num(summary.get("adv_mre")), pct(summary.get("clean_sdr_2")),
                   pct(summary.get("adv_sdr_2")), num(_mean(rows, "l2")),
                   num(_mean(rows, "linf")), num(_mean(rows, "steps"), 1)]],
                 caption="Over the attacked images (the run's summary)")


def detection_table(summary: dict[str, Any], rows: list[dict[str, Any]]) -> Table:
    return Table(["Images", "mAP@0.5:0.95 clean", "mAP@0.5:0.95 attacked", "mAP@0.5 clean",
                  "mAP@0.5 attacked", f"Detections \u2265 {SCORE_THRESHOLD:g} per image clean",
                  f"Detections \u2265 {SCORE_THRESHOLD:g} per image attacked", "Mean L2",
                  "Mean Linf", "Mean steps"],
                 [[num(summary.get("images")), num(summary.get("clean_map")),
                   num(summary.get("adv_map")), num(summary.get("clean_map50")),
                   num(summary.get("adv_map50")), num(summary.get("clean_detections"), 2),
                   num(summary.get("adv_detections"), 2), num(_mean(rows, "l2")),
                   num(_mean(rows, "linf")), num(_mean(rows, "steps"), 1)]],
                 caption="Over the attacked images (the run's summary; mAP pools all of them)")


def damage_table(summary: dict[str, Any]) -> Table:
    """Localisation and classification damage apart: mAP alone cannot say whether the attack
    hid objects, relabelled them or invented new ones."""
    return Table(["True objects", "Found clean (IoU 0.5)", "Found attacked", "Lost",
                  "Class flips", "Ghost detections"],
                 [[str(summary.get("objects", "-")), str(summary.get("found_clean", "-")),
                   str(summary.get("found_adv", "-")), str(summary.get("objects_lost", "-")),
                   str(summary.get("class_flips", "-")), str(summary.get("ghosts", "-"))]],
                 caption=f"Damage by kind at IoU 0.5, detections scoring \u2265 "
                         f"{SCORE_THRESHOLD:g}: lost = found clean, covered by no detection "
                         "after; a class flip = covered after only by other classes; a ghost = "
                         "a new detection covering no true box")


def _image_name(ds: Any, index: int) -> str:
    ids = getattr(ds, "ids", None) or getattr(ds, "image_ids", None)
    try:
        return f"{ids[index]} (index {index})" if ids is not None else f"index {index}"
    except (IndexError, TypeError):
        return f"index {index}"


def _panel(task: str, ds: Any, row: dict[str, Any], choice: str, unit: str,
           replay: Replay | None) -> Figure:
    i = int(row["dataset_index"])
    adv_img = None if replay is None else replay.adversarial.get(i)
    delta = None if replay is None else replay.delta.get(i)
    name = _image_name(ds, i)
    l2, linf = num(row.get("l2")), num(row.get("linf"))
    if get_task(task).report.panel == "points":
        u = unit or "px"
        title = (f"{choice} image {name}: MRE {num(row['clean_metric'], 2)} \u2192 "
                 f"{num(row['adv_metric'], 2)} {u}, SDR@2{u} {pct(row['clean_extra'])} \u2192 "
                 f"{pct(row['adv_extra'])}; L2 {l2}, Linf {linf}")
        fig = landmark_panel(ds.images[i], adv_img, ds.landmarks[i], np.asarray(
            row["clean_pred"]), np.asarray(row["adv_pred"]), delta, title)
        alt = (f"Landmark attack panel, {choice} image {name}: the image with its "
               f"{len(ds.landmarks[i])} true landmarks (green circles), the clean prediction "
               f"(blue crosses) and the adversarial prediction (red plus signs, lines from the "
               f"true positions); mean radial error {num(row['clean_metric'], 2)} {u} before "
               f"and {num(row['adv_metric'], 2)} {u} after the attack"
               + ("; and the amplified perturbation." if delta is not None else "."))
    else:
        title = (f"{choice} image {name}: image mAP@0.5:0.95 {num(row['clean_metric'])} "
                 f"\u2192 {num(row['adv_metric'])}, detections \u2265 {SCORE_THRESHOLD:g} "
                 f"{num(row['clean_extra'], 0)} \u2192 {num(row['adv_extra'], 0)}; L2 {l2}, "
                 f"Linf {linf}")
        fig = detection_panel(ds.images[i], adv_img, (ds.boxes[i], ds.labels[i]),
                              np.asarray(row["clean_pred"]), np.asarray(row["adv_pred"]),
                              ds.class_names, SCORE_THRESHOLD, delta, title)
        alt = (f"Detection attack panel, {choice} image {name}: {len(ds.labels[i])} true boxes "
               f"(solid), {num(row['clean_extra'], 0)} clean detections and "
               f"{num(row['adv_extra'], 0)} adversarial detections scoring at least "
               f"{SCORE_THRESHOLD:g} (dashed and dotted, coloured by class); image mAP "
               f"{num(row['clean_metric'])} before and {num(row['adv_metric'])} after"
               + ("; and the amplified perturbation." if delta is not None else "."))
    return Figure(figure_to_data_uri(fig), title, alt=alt)


def task_attack_runs(ctx: ReportContext) -> list[dict[str, Any]]:
    """Gradient runs on tasks whose rows the report draws as panels (landmark models and
    detectors), oldest first."""
    return [r for r in budget_attack_runs(ctx) if _panel_kind(run_task(r)) in PANEL_KINDS]


def _panel_kind(task: str) -> str:
    spec = task_report(task)
    return "" if spec is None else spec.panel


def task_attack_section(ctx: ReportContext) -> Section | None:
    """Per landmark/detection run: its summary table and panels (None: no such runs)."""
    runs = task_attack_runs(ctx)
    if not runs:
        return None
    from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE

    table = TASK_ATTACK_TABLE.name  # every run drawn here is the task campaign's
    if table not in ctx.tables:
        return None
    section = Section("task-attacks", "Landmark and detection attacks: how far do the "
                                      "predictions move?")
    section.add(Definitions([
        ("MRE", "mean radial error: the average distance between a predicted and the true "
                "landmark, in mm when the data gives pixel sizes (else pixels)."),
        ("SDR@2", "successful detection rate: share of landmarks predicted within 2 mm (or "
                  "2 px) of the truth."),
        ("mAP@0.5:0.95", "COCO mean average precision over IoU thresholds 0.5 to 0.95 (1 = "
                         "every object found with a tight box, nothing spurious)."),
        ("mAP@0.5", "the same at IoU 0.5 only (a box counts if it overlaps half)."),
        ("Detections", f"boxes the detector scores at least {SCORE_THRESHOLD:g}: what a user "
                       "would see; an attack can erase true ones or invent new ones."),
        ("L2, Linf", "size of the perturbation on the 0-1 intensity scale: L2 over all pixels "
                     "and channels, Linf the largest change of any one value."),
        ("Panels", "the image the attack hurt most (worst) and the median one, chosen by the "
                   "change of the task metric; the perturbation is shown amplified, with its "
                   "true range in the panel title."),
    ]))
    for run in runs:
        task = run_task(run)
        sub = Section(f"task-attack-run-{run['id']}", run_title(run))
        ctx.cite(run["id"], sub.anchor, sub.title)
        if run["status"] != "completed":
            sub.add(Note(f"This run is '{run['status']}': the numbers cover only the images "
                         "finished so far.", "warning"))
        sub.add(Paragraphs([_settings(run)]))
        rows = ctx.store.rows(table, run_id=run["id"])
        if not rows:
            sub.add(Note("No results recorded for this run yet.", "warning"))
            section.subsections.append(sub)
            continue
        summary = run_summary(ctx, run, task, rows)
        if summary is None:
            sub.add(Note("No summary: the run did not finish and its dataset could not be "
                         "reloaded to score the rows so far.", "warning"))
        else:
            sub.add((landmark_table if _panel_kind(task) == "points" else detection_table)(
                summary, rows))
            if summary.get("objects_lost") is not None:
                sub.add(damage_table(summary))
        _add_panels(ctx, run, task, rows, sub)
        section.subsections.append(sub)
    return section


def _add_panels(ctx: ReportContext, run: dict[str, Any], task: str, rows: list[dict[str, Any]],
                sub: Section) -> None:
    ds, why = ctx.dataset(run)
    if ds is None:
        sub.add(Note(f"No panels: the run's images could not be reloaded ({why}).", "info"))
        return
    picks = pick_examples(rows, task)
    replay = replay_attack(run, task, ds, [r for _, r in picks])
    if isinstance(replay, str):
        sub.add(Note(f"The perturbations are not shown: {replay}. The predictions are the "
                     "stored ones, drawn on the clean image.", "info"))
        replay = None
    elif replay.mismatches:
        sub.add(Note("The replayed attack does not reproduce the stored result ("
                     + "; ".join(replay.mismatches) + "): the checkpoint or the data changed "
                     "since the run, or the run used another device, whose arithmetic can "
                     "turn a step differently. Predictions drawn are the stored ones; the "
                     "attacked image and perturbation are the replay's.", "warning"))
    unit = str(rows[0].get("unit") or "")
    for choice, row in picks:
        try:
            sub.add(_panel(task, ds, row, choice, unit, replay))
        except (IndexError, KeyError, ValueError) as exc:
            sub.add(Note(f"No panel for image {row['dataset_index']}: the reloaded dataset "
                         f"does not match the run ({type(exc).__name__}: {exc}).", "warning"))
