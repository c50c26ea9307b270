"""The "At a glance" panel: what a clinician-scientist needs in one minute, per model.

Per classifier: clean accuracy, how often the one-pixel attack fooled it, robust accuracy at
each budget without and with each defence (every number with its n and 95 % Wilson interval,
recomputed with ``medrobust.metrics.proportion`` from the stored k-of-n), the best defence and
what it costs on clean images, and the warnings that change how far the numbers can be
trusted (gradient masking, small samples, unfinished runs). Per segmentation, landmark or
detection model: the clean headline metric and the attacked one per budget. Where a model was
certified, the certified bound stands beside the attacks at the same L2 budget (a lower bound
for the smoothed model where the attacks give an upper one). Every number is read from the run
store's summaries; nothing is recomputed from images.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from medrobust.metrics.proportion import Proportion, proportion
from medrobust.report.blocks import Note, Paragraphs, Section, Table, num, pct
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text, data_text, dataset_display_name
from medrobust.report.sections import read_checkpoint_meta
from medrobust.report.task_section import (
    attack_name,
    budget_attack_runs,
    run_summary,
    run_task,
)
from medrobust.tasks import DEFAULT_TASK, TASKS, get_task, task_report

#: below this many images an estimate is flagged as a small sample
MIN_IMAGES = 100
#: a 95 % interval wider than this (a share, 0.20 = 20 points) is flagged
MAX_CI_WIDTH = 0.20
#: adaptive attacks shown, strongest evaluation first within a norm
ADAPTIVE_ATTACKS = {"pgd": "PGD", "square": "Square", "ensemble": "Ensemble"}
#: defence columns per robust-accuracy table (more are split into several tables)
MAX_DEFENCE_COLUMNS = 4


@dataclass
class Estimate:
    """A proportion from the store (k of n) and where it came from."""

    p: Proportion
    run_id: int
    label: str = ""

    @property
    def rate(self) -> float | None:
        return self.p.rate

    def text(self) -> str:
        """'75.0 % (n = 4, 95 % CI 30-95 %)'."""
        ci = self.p.ci95
        ci_text = "-" if ci is None else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f} %"
        return f"{pct(self.p.rate)} (n = {self.p.n}, 95 % CI {ci_text})"

    def small(self) -> bool:
        ci = self.p.ci95
        return self.p.n < MIN_IMAGES or (ci is not None and ci[1] - ci[0] > MAX_CI_WIDTH)


def estimate(rate: Any, n: Any, run_id: int, label: str = "") -> Estimate | None:
    """An Estimate from a stored share and sample size (k = share x n, rounded)."""
    if rate is None or not n:
        return None
    return Estimate(proportion(round(float(rate) * int(n)), int(n)), int(run_id), label)


@dataclass
class ModelGlance:
    """Everything the panel states about one model (one checkpoint folder)."""

    key: str
    name: str
    task: str
    data: str = "-"
    clean: Estimate | None = None
    clean_source: str = ""
    onepixel: list[Estimate] = field(default_factory=list)
    #: (attack, norm, eps) -> estimate, from one-budget attack runs (no defence)
    robust: dict[tuple[str, str, float], Estimate] = field(default_factory=dict)
    #: defence label -> (attack key 'pgd-linf', eps) -> estimate, from adaptive runs
    adaptive: dict[str, dict[tuple[str, float], Estimate]] = field(default_factory=dict)
    adaptive_summaries: list[dict[str, Any]] = field(default_factory=list)
    #: defence label -> clean-accuracy cost (share), from defend runs
    costs: dict[str, float] = field(default_factory=dict)
    #: non-classification: (attack, norm, eps) -> (clean, attacked, n, run id)
    task_cells: dict[tuple[str, str, float], tuple[float | None, float | None, int, int]] = \
        field(default_factory=dict)
    task_clean: tuple[float, int, int] | None = None
    unit: str = ""
    #: the newest certification: run id, sigma, metric name and L2 radius -> its cell
    certified: dict[str, Any] = field(default_factory=dict)
    unfinished: list[int] = field(default_factory=list)
    runs: list[int] = field(default_factory=list)


def _model_key(run: dict[str, Any]) -> str | None:
    return (run.get("model") or {}).get("dir") or None


def _model_name(run: dict[str, Any]) -> str:
    model = run.get("model") or {}
    return str(model.get("model") or (run.get("summary") or {}).get("model") or
               (read_checkpoint_meta(model.get("dir")) or {}).get("model") or "model")


class _Glances:
    """The models seen so far, keyed by checkpoint folder, in the order first seen."""

    def __init__(self) -> None:
        self.models: dict[str, ModelGlance] = {}

    def get(self, run: dict[str, Any], task: str | None = None) -> ModelGlance | None:
        """The model of ``run`` (created on first sight), with the run noted; None: no model."""
        key = _model_key(run)
        if key is None:
            return None
        if key not in self.models:
            self.models[key] = ModelGlance(key, _model_name(run), task or DEFAULT_TASK)
        g = self.models[key]
        if task and task != DEFAULT_TASK:  # a run that names its task outranks the default
            g.task = task
        if g.data == "-" and run.get("dataset"):
            g.data = data_text(run.get("dataset"))
        if run["status"] != "completed" and run["id"] not in g.unfinished:
            g.unfinished.append(run["id"])
        g.runs.append(run["id"])
        return g


def collect(ctx: ReportContext) -> list[ModelGlance]:
    """One ModelGlance per model the store's runs used, in the order first seen."""
    glances = _Glances()
    for run in ctx.runs:
        _read_run(glances, run)
    for run in budget_attack_runs(ctx):
        _read_budget_run(ctx, glances, run)
    # a denoiser's own training run is not a model of the panel
    return [g for g in glances.models.values() if g.clean or g.onepixel or g.robust
            or g.adaptive or g.task_cells or g.certified]


def _read_run(glances: _Glances, run: dict[str, Any]) -> None:
    """What a training, evaluation, one-pixel, defence or protocol run adds to its model."""
    from medrobust.campaigns.adaptive_defence import ADAPTIVE_COMMAND
    from medrobust.campaigns.attack_protocol import PROTOCOL_COMMAND
    from medrobust.campaigns.certify import COMMAND as CERTIFY_COMMAND
    from medrobust.campaigns.defence import DEFEND_COMMAND

    get = glances.get
    cmd = run["command"]
    summary = run.get("summary") or {}
    if cmd == "train" and _is_proportion(str((run.get("params") or {}).get("task")
                                             or DEFAULT_TASK)):
        g = get(run)
        test = summary.get("test") or {}
        if g is not None and test.get("accuracy") is not None and g.clean_source != "evaluate":
            g.clean = estimate(test["accuracy"], test.get("n"), run["id"])
            g.clean_source = "train"
            g.data = data_text({**(run.get("dataset") or {}), "split": "test"})
    elif cmd == "evaluate" and "accuracy" in summary:
        g = get(run)
        if g is not None:
            g.clean = estimate(summary["accuracy"], summary.get("n"), run["id"])
            g.clean_source = "evaluate"
            g.data = data_text({**(run.get("dataset") or {}),
                                "split": (run.get("params") or {}).get("split")})
    elif cmd == "attack onepixel":
        g = get(run)
        if g is not None and summary.get("attacked"):
            e = estimate(summary.get("success_rate"), summary["attacked"], run["id"])
            if e is not None:
                g.onepixel.append(e)
    elif cmd == DEFEND_COMMAND and "label" in summary:
        g = get(run)
        if g is not None and summary.get("clean_accuracy_cost") is not None:
            g.costs[str(summary["label"])] = float(summary["clean_accuracy_cost"])
    elif cmd == PROTOCOL_COMMAND:  # its cells are runs of their own, read below
        get(run, str((run.get("params") or {}).get("task") or DEFAULT_TASK))
    elif cmd == ADAPTIVE_COMMAND and "label" in summary:
        g = get(run)
        if g is not None:
            _add_adaptive(g, run, summary)
    elif cmd == CERTIFY_COMMAND and run["status"] == "completed":
        g = get(run, str(summary.get("task") or DEFAULT_TASK))
        if g is not None:
            g.certified = {"run": run["id"], "sigma": summary.get("sigma"),
                           "metric": summary.get("metric") or "accuracy",
                           "share": summary.get("metric", "accuracy") == "accuracy"
                           or bool(summary.get("metric_is_share")),
                           "cells": {float(c["radius"]): c for c in _certified_cells(summary)}}


def _certified_cells(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per radius {radius, value, ci95} (the first certify version kept classifiers'
    ``certified_accuracy`` only)."""
    if summary.get("certified") is not None:
        return list(summary["certified"])
    return [{"radius": c["radius"], "value": c.get("accuracy"), "ci95": c.get("ci95")}
            for c in summary.get("certified_accuracy") or []]


def _certified_text(g: ModelGlance, norm: str, eps: float) -> str:
    """The certified bound at an L2 budget, '-' where none was certified at that radius."""
    cell = (g.certified.get("cells") or {}).get(float(eps)) if norm == "l2" else None
    if cell is None or cell.get("value") is None:
        return "-"
    return pct(cell["value"]) if g.certified.get("share") else num(cell["value"])


def _certified_line(g: ModelGlance) -> list[str]:
    if not g.certified:
        return []
    cells = "; ".join(f"L2 {r:g}: {_certified_text(g, 'l2', r)}"
                      for r in sorted(g.certified["cells"]))
    return [f"Certified {g.certified['metric']} of the model smoothed at sigma "
            f"{num(g.certified['sigma'])} (run {g.certified['run']}): {cells}. A certificate "
            "is a lower bound no attack within the radius can break (per image wrong with "
            "probability at most alpha); the attacks give upper bounds."]


def _read_budget_run(ctx: ReportContext, glances: _Glances, run: dict[str, Any]) -> None:
    """What an attack run at one Linf or L2 budget adds to its model."""
    task = run_task(run)
    g = glances.get(run, task)
    if g is None:
        return
    a = (run.get("params") or {}).get("attack") or {}
    eps, norm = a.get("eps"), a.get("norm")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or norm not in ("linf", "l2"):
        return
    summary = run_summary(ctx, run, task)
    if not summary or not summary.get("images"):
        return
    cell = (attack_name(run), str(norm), float(eps))
    n = int(summary["images"])
    if _is_proportion(task):
        rate = summary.get("robust_accuracy", summary.get("adv_accuracy"))
        e = estimate(rate, n, run["id"])
        old = g.robust.get(cell)
        if e is not None and (old is None or (n, run["id"]) >= (old.p.n, old.run_id)):
            g.robust[cell] = e
        if g.clean is None and summary.get("clean_accuracy") is not None:
            g.clean = estimate(summary["clean_accuracy"], n, run["id"])
            g.clean_source = "attack"
    else:
        _add_task_cell(g, task, cell, summary, n, run["id"])


def _add_adaptive(g: ModelGlance, run: dict[str, Any], summary: dict[str, Any]) -> None:
    """Every (attack, budget) cell of an adaptive run; a later run of a defence replaces it."""
    from medrobust.defences.table import adaptive_cells

    label = str(summary["label"])
    cells: dict[tuple[str, float], Estimate] = {}
    for attack, eps, rate, n, _ci in adaptive_cells(summary):
        e = estimate(rate, n, run["id"])
        if e is not None:
            cells[(attack, eps)] = e
    g.adaptive[label] = cells
    g.adaptive_summaries = [s for s in g.adaptive_summaries if str(s.get("label")) != label]
    g.adaptive_summaries.append(summary)


def _add_task_cell(g: ModelGlance, task: str, cell: tuple[str, str, float],
                   summary: dict[str, Any], n: int, run_id: int) -> None:
    spec = task_report(task)
    keys = spec.metrics[0].keys if spec is not None and spec.metrics else ()
    for clean_key, adv_key in keys:
        if adv_key in summary:
            old = g.task_cells.get(cell)
            if old is None or (n, run_id) >= (old[2], old[3]):
                g.task_cells[cell] = (summary.get(clean_key), summary.get(adv_key), n, run_id)
            if summary.get(clean_key) is not None and (g.task_clean is None or n > g.task_clean[1]):
                g.task_clean = (float(summary[clean_key]), n, run_id)
            g.unit = str(summary.get("unit") or g.unit)
            return


def _is_proportion(task: str) -> bool:
    """Whether the task's headline is a share of images (accuracy: given with n and an
    interval, defences judged by it) rather than an average of a per-image metric."""
    spec = task_report(task)
    return spec is not None and spec.proportion


# -- best defence -------------------------------------------------------------------------------

@dataclass
class BestDefence:
    label: str
    attack: str
    eps: float
    estimate: Estimate
    undefended: Estimate | None
    cost: float | None
    #: the other defences whose 95 % interval overlaps the best one's: a non-empty list means
    #: the data do not separate them, so no defence may be called best
    overlapping: tuple[tuple[str, Estimate], ...] = ()

    @property
    def distinguishable(self) -> bool:
        return not self.overlapping


def _overlap(a: Estimate, b: Estimate) -> bool:
    """Whether two estimates' 95 % intervals overlap (no interval: they cannot be told apart)."""
    if a.p.ci95 is None or b.p.ci95 is None:
        return True
    return a.p.ci95[0] <= b.p.ci95[1] and b.p.ci95[0] <= a.p.ci95[1]


def best_defence(g: ModelGlance) -> BestDefence | None:
    """The defence with the highest ensemble (else PGD) robust accuracy at the largest budget
    every defence was evaluated at (Linf first, else L2); ties: lower clean cost, then name.
    The defences whose intervals overlap the leader's are listed, so the page never names a
    winner on a difference the sample cannot show."""
    defences = [d for d in g.adaptive if d != "none"]
    if not defences:
        return None
    for norm in ("linf", "l2"):
        for kind in ("ensemble", "pgd"):
            attack = f"{kind}-{norm}"
            budgets = [{eps for (a, eps) in g.adaptive[d] if a == attack} for d in defences]
            common = set.intersection(*budgets) if budgets else set()
            if not common:
                continue
            eps = max(common)
            ranked = sorted(defences, key=lambda d: (-(g.adaptive[d][(attack, eps)].rate or 0.0),
                                                     g.costs.get(d, 0.0), d))
            best = ranked[0]
            lead = g.adaptive[best][(attack, eps)]
            ties = tuple((d, g.adaptive[d][(attack, eps)]) for d in ranked[1:]
                         if _overlap(lead, g.adaptive[d][(attack, eps)]))
            return BestDefence(best, attack, eps, lead,
                               g.adaptive.get("none", {}).get((attack, eps)), g.costs.get(best),
                               ties)
    return None


# -- warnings -----------------------------------------------------------------------------------

def warnings(g: ModelGlance) -> list[str]:
    """Gradient masking (from the adaptive runs), small samples, unfinished runs."""
    from medrobust.defences.table import masking_warnings

    out = [masking_text(w) for w in masking_warnings(g.adaptive_summaries)]
    estimates = [e for e in [g.clean, *g.onepixel, *g.robust.values(),
                             *(e for cells in g.adaptive.values() for e in cells.values())]
                 if e is not None]
    few = [e for e in estimates if e.p.n < MIN_IMAGES]
    wide = [e for e in estimates if e.p.ci95 and e.p.ci95[1] - e.p.ci95[0] > MAX_CI_WIDTH]
    if few or wide:
        parts = []
        if few:
            parts.append(f"{len(few)} of {len(estimates)} numbers rest on fewer than "
                         f"{MIN_IMAGES} images (smallest n = {min(e.p.n for e in few)})")
        if wide:
            widest = max(wide, key=lambda e: e.p.ci95[1] - e.p.ci95[0])  # type: ignore[index]
            lo, hi = widest.p.ci95  # type: ignore[misc]
            parts.append(f"{len(wide)} have a 95 % interval wider than "
                         f"{100 * MAX_CI_WIDTH:.0f} points (widest {100 * lo:.0f}-"
                         f"{100 * hi:.0f} %)")
        out.append("Small samples: " + "; ".join(parts) + ". Differences smaller than the "
                   "intervals are not evidence of a difference; attack more images before "
                   "drawing conclusions.")
    if not _is_proportion(g.task):
        small = [c for c in g.task_cells.values() if c[2] < MIN_IMAGES]
        if small:
            out.append(f"Small samples: {len(small)} attacked metric(s) rest on fewer than "
                       f"{MIN_IMAGES} images (smallest n = {min(c[2] for c in small)}).")
    if g.unfinished:
        out.append("Unfinished runs (" + ", ".join(map(str, g.unfinished)) + "): their numbers "
                   "cover only the images done so far.")
    return out


def masking_text(text: str) -> str:
    """A ``masking_warnings`` sentence in the report's conventions: it names datasets by their
    short name and Linf budgets as bare 'k/255'; the page says 'PneumoniaMNIST', 'Linf 8/255'."""
    text = re.sub(r" on (\S+) keeps ",
                  lambda m: f" on {dataset_display_name(m.group(1))} keeps ", text, count=1)
    return re.sub(r" at (\d[\d.]*/255) ", r" at Linf \1 ", text)


# -- the section --------------------------------------------------------------------------------

def _headline(g: ModelGlance) -> list[str]:
    lines = []
    where = {"train": "test split, from the training run",
             "evaluate": "from the evaluation run",
             "attack": "on the attacked images"}.get(g.clean_source, "")
    if g.clean is not None:
        lines.append(f"Clean accuracy: {g.clean.text()}{', ' + where if where else ''} "
                     f"(run {g.clean.run_id}).")
    for e in g.onepixel:
        lines.append(f"One-pixel attack (run {e.run_id}): success rate {e.text()} of the "
                     "images the model classified correctly.")
    if g.robust:
        _attack, norm, eps = max(g.robust, key=lambda c: (c[1] == "linf", c[2], c[0]))
        worst = min((e for c, e in g.robust.items() if c[1] == norm and c[2] == eps),
                    key=lambda e: e.rate or 0.0)
        lines.append(f"Robust accuracy at the largest {budget_text(norm, eps)} budget, without "
                     f"defence: {worst.text()} (strongest attack there, run {worst.run_id}).")
    best = best_defence(g)
    if best is not None and not best.distinguishable:
        kind, norm = best.attack.split("-")
        rivals = "; ".join(f"{label} {e.text()}" for label, e in
                           ((best.label, best.estimate), *best.overlapping))
        lines.append(f"Best defence: no defence is distinguishable \u2014 {kind.title()} robust "
                     f"accuracy at {budget_text(norm, best.eps)}: {rivals}. Their 95 % "
                     "intervals overlap, so these images cannot rank them; attack more images "
                     "to separate them.")
    elif best is not None:
        text = (f"Best defence: {best.label} \u2014 {best.attack.split('-')[0].title()} robust "
                f"accuracy {best.estimate.text()} at {budget_text(best.attack.split('-')[1], best.eps)}")
        if best.undefended is not None:
            text += f" (undefended {pct(best.undefended.rate)})"
        text += (f"; clean-accuracy cost {100 * best.cost:.1f} points." if best.cost is not None
                 else "; its clean-accuracy cost was not measured (no 'defend' run).")
        lines.append(text)
    elif g.adaptive:
        lines.append("No defence was evaluated against adaptive attacks at a common budget.")
    return lines


def _robust_table(g: ModelGlance) -> Table | None:
    if not g.robust:
        return None
    rows = []
    for (attack, norm, eps), e in sorted(g.robust.items(),
                                         key=lambda kv: (kv[0][1] != "linf", kv[0][2], kv[0][0])):
        ci = e.p.ci95
        rows.append([attack, budget_text(norm, eps), pct(e.rate), str(e.p.n),
                     "-" if ci is None else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f} %",
                     str(e.run_id)] + ([_certified_text(g, norm, eps)] if g.certified else []))
    head = ["Attack", "Budget", "Robust accuracy", "n", "95 % CI", "Run"]
    return Table(head + (["Certified (smoothed)"] if g.certified else []), rows,
                 caption="Robust accuracy without defence (each attack run at one budget)")


def _adaptive_tables(g: ModelGlance) -> list[Table]:
    """Rows: attack and budget; columns: no defence, then each defence (split when many)."""
    if not g.adaptive:
        return []
    labels = (["none"] if "none" in g.adaptive else []) + sorted(d for d in g.adaptive
                                                                 if d != "none")
    keys = sorted({k for cells in g.adaptive.values() for k in cells if k[0] != "clean"},
                  key=_adaptive_order)
    chunks = [labels[i:i + MAX_DEFENCE_COLUMNS] for i in range(0, len(labels),
                                                               MAX_DEFENCE_COLUMNS)]
    tables = []
    for part, chunk in enumerate(chunks):
        rows = []
        for attack, eps in keys:
            cells = []
            for d in chunk:
                e = g.adaptive[d].get((attack, eps))
                cells.append("-" if e is None else e.text())
            rows.append([_adaptive_label(attack), _adaptive_budget(attack, eps), *cells])
        caption = ("Robust accuracy with and without each defence (attacks that see the "
                   "defence; each cell gives its own n: the images attacked, all classified "
                   "correctly before the attack)")
        if len(chunks) > 1:
            caption += f", part {part + 1} of {len(chunks)}"
        tables.append(Table(["Attack", "Budget", *("No defence" if d == "none" else d
                                                   for d in chunk)], rows, caption=caption))
    return tables


def _adaptive_order(key: tuple[str, float]) -> tuple[int, str, float, int]:
    attack, eps = key
    if attack == "onepixel":
        return (0, "", 0.0, 0)
    kind, _, norm = attack.rpartition("-")
    return (1 if norm == "linf" else 2, norm, eps, list(ADAPTIVE_ATTACKS).index(kind)
            if kind in ADAPTIVE_ATTACKS else 9)


def _adaptive_label(attack: str) -> str:
    if attack == "onepixel":
        return "One-pixel (adaptive)"
    kind = attack.rpartition("-")[0]
    return ADAPTIVE_ATTACKS.get(kind, kind.upper())


def _adaptive_budget(attack: str, eps: float) -> str:
    if attack == "onepixel":
        return "1 pixel"
    return budget_text(attack.rpartition("-")[2], eps)


def _task_lines_and_table(g: ModelGlance) -> tuple[list[str], Table | None]:
    spec = task_report(g.task)
    name = spec.headline_name if spec is not None else g.task
    lower = g.task in TASKS and get_task(g.task).lower_is_better
    unit = f" {g.unit}" if g.unit and spec is not None and spec.has_unit else ""
    better = "lower is better" if lower else "higher is better"
    lines = []
    if g.task_clean is not None:
        value, n, rid = g.task_clean
        lines.append(f"Clean {name}: {num(value)}{unit} over {n} images ({better}; run {rid}).")
    if not g.task_cells:
        return lines, None
    rows = []
    for (attack, norm, eps), (clean, adv, n, rid) in sorted(
            g.task_cells.items(), key=lambda kv: (kv[0][1] != "linf", kv[0][2], kv[0][0])):
        rows.append([attack, budget_text(norm, eps), num(clean), num(adv), str(n), str(rid)]
                    + ([_certified_text(g, norm, eps)] if g.certified else []))
    head = ["Attack", "Budget", f"{name} clean{unit}", f"{name} attacked{unit}", "n", "Run"]
    return lines, Table(head + (["Certified (smoothed)"] if g.certified else []), rows,
                        caption=f"{name} under attack ({better})")


def glance_section(ctx: ReportContext) -> Section:
    """The panel at the top of the page (always present: it also says what the store holds)."""
    section = Section("overview", "At a glance")
    counts: dict[str, int] = {}
    for run in ctx.runs:
        counts[run["command"]] = counts.get(run["command"], 0) + 1
    listing = ", ".join(f"{n} {cmd}" for cmd, n in counts.items())
    section.add(Paragraphs([
        f"This report covers {len(ctx.runs)} recorded run(s) ({listing}). Every number comes "
        "from the run store; each accuracy is given with the number of images n and its 95 % "
        "(Wilson) confidence interval. Budgets: Linf as k/255 grey levels (the largest change "
        "of any pixel value), L2 as the length of the whole perturbation of an image on the "
        "0-1 scale. Where each run came from is in the appendix at the end.",
    ]))
    models = collect(ctx)
    if not models:
        section.add(Note("No model results are recorded yet.", "info"))
    for i, g in enumerate(models):
        title = f"{g.name} on {g.data}" + ("" if g.task == DEFAULT_TASK else f" ({g.task})")
        sub = Section(f"glance-model-{i + 1}", title)
        for rid in g.runs:
            ctx.cite(rid, sub.anchor, f"At a glance: {title}")
        if _is_proportion(g.task):
            sub.add(Paragraphs(_headline(g) + _certified_line(g)))
            table = _robust_table(g)
            if table is not None:
                sub.add(table)
            sub.add(*_adaptive_tables(g))
        else:
            lines, table = _task_lines_and_table(g)
            lines += _certified_line(g)
            if lines:
                sub.add(Paragraphs(lines))
            if table is not None:
                sub.add(table)
        for w in warnings(g):
            sub.add(Note(w, "warning"))
        section.subsections.append(sub)
    return section
