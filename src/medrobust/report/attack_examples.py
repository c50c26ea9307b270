"""Example images of the classifier attacks at one budget (PGD, IFGSM, APGD, Square, ...).

The metric-vs-budget curves say how often a classifier falls; a reader also wants to see what
the attack did to an image. The campaigns keep no perturbations (rows hold only predictions
and sizes), so for each curve the run at its largest budget is replayed on a few images it
fooled: the run records the checkpoint, the dataset spec and every attack setting (protocol
runs: the protocol's settings, on the ``evaluate attacks`` run), and random starts are keyed
by dataset index, so the replay reproduces the stored predictions; a mismatch is said, not
hidden. Where nothing can be replayed the section says why and the numbers stand alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medrobust.report.blocks import Figure, Note, Paragraphs, Section
from medrobust.report.context import ReportContext, class_name, class_names
from medrobust.report.names import budget_text, data_text
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.task_plots import classifier_panel
from medrobust.report.task_section import (
    _curve_key,
    attack_name,
    budget_attack_runs,
    run_table,
    run_task,
)
from medrobust.tasks import task_report

#: fooled images shown per curve (lowest dataset indices first: a fixed rule, not a choice)
MAX_EXAMPLES = 3


def _correct(row: dict[str, Any]) -> tuple[bool, bool]:
    """(right before, right after) from a gradient-campaign or a task-campaign row."""
    if "clean_correct" in row:
        return bool(row["clean_correct"]), bool(row["adv_correct"])
    return float(row["clean_metric"]) == 1.0, float(row["adv_metric"]) == 1.0


def pick_fooled(rows: list[dict[str, Any]], limit: int = MAX_EXAMPLES) -> list[dict[str, Any]]:
    """Up to ``limit`` images the attack flipped from right to wrong, lowest index first."""
    fooled = [r for r in rows if _correct(r) == (True, False)]
    return sorted(fooled, key=lambda r: int(r["dataset_index"]))[:limit]


def _protocol_settings(ctx: ReportContext, run_id: int) -> Any | None:
    """The settings of the ``evaluate attacks`` run that made ``run_id`` one of its cells."""
    from medrobust.campaigns.attack_protocol import PROTOCOL_COMMAND
    from medrobust.campaigns.protocol_attacks import ProtocolSettings

    for prot in ctx.runs_of(PROTOCOL_COMMAND):
        cells = (prot.get("summary") or {}).get("cells") or []
        if any(c.get("run_id") == run_id for c in cells):
            p = prot.get("params") or {}
            known = {k: tuple(v) if isinstance(v, list) else v for k, v in p.items()
                     if k in ProtocolSettings.__dataclass_fields__}
            return ProtocolSettings(**known)
    return None


def _build_attack(ctx: ReportContext, run: dict[str, Any], table: str, model: Any) -> Any:
    """The run's attack rebuilt around ``model`` from what the run recorded."""
    from medrobust.attacks.criteria import hits_target, misclassified
    from medrobust.attacks.ifgsm import IFGSM
    from medrobust.attacks.losses import get_loss
    from medrobust.attacks.pgd import PGD
    from medrobust.tasks import get_task

    a = (run.get("params") or {}).get("attack") or {}
    task = get_task(run_task(run))
    if table == "task_attack_results":
        settings = _protocol_settings(ctx, run["id"])
        if settings is not None:
            from medrobust.campaigns.protocol_attacks import build_attack

            name = str(run["command"]).split(" ", 1)[1]
            name = "pgd-restarts" if name.startswith("pgd-r") else name
            return build_attack(name, task, model, a["norm"], float(a["eps"]), settings)
    kinds = {"pgd": PGD, "ifgsm": IFGSM}
    if a.get("attack") not in kinds:
        raise ValueError(f"the attack {a.get('attack')!r} has no recorded recipe to replay")
    loss = task.attack_loss(model) if table == "task_attack_results" else get_loss(a["loss"])
    stop = {"misclassified": misclassified, "hits_target": hits_target}.get(
        str(a.get("early_stop")))
    return kinds[a["attack"]](model, loss=loss, norm=a["norm"], eps=a["eps"],
                              step=a.get("step"), steps=a["steps"],
                              random_start=a.get("random_start"),
                              targeted=bool(a.get("targeted")), early_stop=stop,
                              seed=int(a.get("seed") or 0))


def replay(ctx: ReportContext, run: dict[str, Any], table: str, rows: list[dict[str, Any]]
           ) -> tuple[Figure, list[str]] | str:
    """The panel of ``rows``' images replayed, and the mismatches; or why there is none."""
    import torch

    from medrobust.models.loading import load_model

    ds, why = ctx.dataset(run)
    if ds is None:
        return f"the run's images could not be reloaded ({why})"
    model_dir = (run.get("model") or {}).get("dir")
    if not model_dir or not Path(model_dir).is_dir():
        return f"the checkpoint {model_dir} is not available"
    try:
        model = load_model(model_dir, "cpu")
        attack = _build_attack(ctx, run, table, model)
        idx = np.asarray([int(r["dataset_index"]) for r in rows], dtype=np.int64)
        x = model.to_tensor(ds.images[idx])
        targets = (run.get("params") or {}).get("targets")
        goal = torch.as_tensor(np.asarray(ds.labels)[idx].astype(np.int64)) if not targets \
            else torch.as_tensor([int(targets[str(i)]) for i in idx])
        adv = attack(x, goal, keys=[int(i) for i in idx]).adversarial
        with torch.no_grad():
            p_clean = model.probabilities(x)
            p_adv = model.probabilities(adv)
    except Exception as exc:  # the examples only add to the stored numbers
        return f"replaying the attack failed ({type(exc).__name__}: {exc})"
    names = class_names(run, int(p_clean.shape[1]))
    delta = (adv - x).detach().cpu().numpy()
    adv_img = adv.detach().cpu().numpy().transpose(0, 2, 3, 1) * 255.0
    mismatches, examples = [], []
    for j, row in enumerate(rows):
        label = int(np.asarray(ds.labels)[idx[j]])
        c, a = int(p_clean[j].argmax()), int(p_adv[j].argmax())
        if a != int(row["adv_pred"]):
            mismatches.append(f"image {idx[j]}: stored prediction "
                              f"{class_name(names, row['adv_pred'])}, replay "
                              f"{class_name(names, a)}")
        examples.append((ds.images[idx[j]], adv_img[j], delta[j],
                         f"image {idx[j]}, clean: {class_name(names, c)} "
                         f"({100 * float(p_clean[j][c]):.0f} %)\ntrue class "
                         f"{class_name(names, label)}",
                         f"attacked: {class_name(names, a)} "
                         f"({100 * float(p_adv[j][a]):.0f} %)"))
    a = (run.get("params") or {}).get("attack") or {}
    title = (f"Run {run['id']}: {attack_name(run)} at {budget_text(a.get('norm'), a.get('eps'))}"
             f" on {data_text(run.get('dataset'))}")
    fig = classifier_panel(examples, title)
    alt = (f"{len(examples)} example image(s) of run {run['id']}, each shown clean, after the "
           f"{attack_name(run)} attack at {budget_text(a.get('norm'), a.get('eps'))}, and as "
           "the amplified difference; the attack changed the predicted class of each.")
    return Figure(figure_to_data_uri(fig, dpi=80), title + ": clean, attacked and the "
                  "amplified difference (its true size is written above it).", alt=alt,
                  max_width="640px"), mismatches


def attack_examples_section(ctx: ReportContext) -> Section | None:
    """Per classifier attack curve: a few fooled images of its largest-budget run."""
    groups: dict[tuple[str, ...], list[tuple[float, dict[str, Any], str]]] = {}
    for run in budget_attack_runs(ctx):
        spec = task_report(run_task(run))
        if spec is None or spec.panel != "gallery":
            continue
        eps = ((run.get("params") or {}).get("attack") or {}).get("eps")
        table = run_table(ctx, run)
        if table is None or isinstance(eps, bool) or not isinstance(eps, (int, float)):
            continue
        groups.setdefault(_curve_key(run, run_task(run)), []).append((float(eps), run, table))
    if not groups:
        return None
    section = Section("attack-examples", "What the classifier attacks do to an image")
    section.add(Paragraphs([
        "For each attack (one line of the budget curves) the run at its largest budget, "
        f"replayed on up to {MAX_EXAMPLES} images it fooled (lowest image numbers first). The "
        "campaigns store predictions, not images, so these are recomputed from the recorded "
        "checkpoint, data and attack settings and checked against the stored predictions.",
    ]))
    for key in groups:
        eps, run, table = max(groups[key], key=lambda t: (t[0], t[1]["id"]))
        a = (run.get("params") or {}).get("attack") or {}
        sub = Section(f"attack-examples-run-{run['id']}",
                      f"Run {run['id']}: {attack_name(run)} at "
                      f"{budget_text(a.get('norm'), eps)}, {data_text(run.get('dataset'))}")
        ctx.cite(run["id"], sub.anchor, sub.title)
        picks = pick_fooled(ctx.rows(table, run["id"]))
        if not picks:
            sub.add(Note("No image was fooled at this budget, so there is nothing to show: "
                         "every attacked image kept its class (or was already wrong).", "info"))
            section.subsections.append(sub)
            continue
        result = replay(ctx, run, table, picks)
        if isinstance(result, str):
            sub.add(Note(f"No example images: {result}. The stored numbers above stand.", "info"))
        else:
            figure, mismatches = result
            if mismatches:
                sub.add(Note("The replay does not reproduce the stored result ("
                             + "; ".join(mismatches) + "): the checkpoint or data changed "
                             "since the run, or it ran on another device.", "warning"))
            sub.add(figure)
        section.subsections.append(sub)
    return section
