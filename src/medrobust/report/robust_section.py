"""Report section for adversarial training: the paper's table, curves, margins and one finding.

Robust training is only worth its cost if the trained model holds up under the attacked-
evaluation protocol (``medrobust evaluate --attack``) better than the alternatives while its
clean score stays where the standard model's was. So this section is built from the protocol's
own run summaries (never recomputed, so the page and the CLI cannot disagree) and from each
evaluated checkpoint's ``meta.json``, which says how the model was trained (``robust``: method
and budget; ``history``: the per-epoch margin histograms of adaptive-margin training).

Per task and dataset it shows: one table per budget set (models evaluated at other budgets are
not comparable cell by cell), one row per model (STD, VAT@eps, TEAT@eps, adaptive margin), the
best value of every column in bold; metric-vs-budget curves, one line per model and one panel
per attack; the margins of adaptive-margin models; and one sentence that answers the paper's
claim (adaptive margin beats every VAT level on PGD/IFGSM while keeping the standard model's
clean score) with the numbers, or says what is missing to answer it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from markupsafe import Markup

from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE
from medrobust.report.blocks import Definitions, Figure, Note, Paragraphs, Section, Table, num
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text, data_text
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.robust_data import (
    ATTACK_NAMES,
    MAX_COLUMNS,
    PROTOCOL_COMMAND,
    BudgetSet,
    Evaluated,
    Group,
    cell_rms,
    collect,
    formatter,
    method_of,
    metric_name,
    metric_unit,
    model_label,
    settings_text,
    task_display_name,
)
from medrobust.report.robust_verdict import (
    PAPER_TABLES,
    claims,
    families_from_models,
    verdict_table,
)
from medrobust.report.sections import read_checkpoint_meta


class BestCell(Markup):
    """A table cell shown in bold (the best of its column) that still reads as a number.

    The shared template escapes every cell; a ``Markup`` cell is the one way to ask it for
    markup without editing the template. ``strip`` returns the plain text so the template's
    number test still right-aligns the cell."""

    plain: str

    def __new__(cls, text: str) -> BestCell:
        obj = super().__new__(cls, Markup("<strong>{}</strong>").format(text))
        obj.plain = str(text)
        return obj

    def strip(self, chars: str | None = None) -> str:  # type: ignore[override]
        return self.plain.strip(chars)


def level_text(norm: str, eps: float, cells: Sequence[dict[str, Any] | None]) -> str:
    """'L2 0.5 (RMS 0.70/255)' or 'Linf 8/255'."""
    text = budget_text(norm, eps)
    rms = next((r for r in (cell_rms(c) for c in cells) if r is not None), None)
    return f"{text} (RMS {rms:.3g}/255)" if norm == "l2" and rms is not None else text


def _bold_best(rows: list[list[Any]], values: list[list[float | None]], first: int,
               higher: bool) -> None:
    """Bold the best value of every numeric column from ``first`` on (ties all bold; nothing
    with fewer than two values, where 'best' means nothing)."""
    for col in range(first, len(rows[0]) if rows else 0):
        vals = [v[col] for v in values]
        present = [v for v in vals if v is not None and math.isfinite(v)]
        if len(present) < 2:
            continue
        top = max(present) if higher else min(present)
        for r, v in enumerate(vals):
            if v is not None and math.isclose(v, top, rel_tol=1e-12, abs_tol=1e-12):
                rows[r][col] = BestCell(rows[r][col])


def _table(columns: list[str], records: list[tuple[str, int, list[float | None]]],
           fmt: Callable[[Any], str], higher: bool, caption: str) -> Table:
    rows: list[list[Any]] = []
    values: list[list[float | None]] = []
    for label, n, vals in records:
        rows.append([label, num(n), *[fmt(v) for v in vals]])
        values.append([None, None, *vals])
    _bold_best(rows, values, 2, higher)
    return Table(columns, rows, caption)


def budget_tables(bset: BudgetSet, metric: str, unit: str, higher: bool) -> list[Table]:
    """The paper's table for one budget set; split per attack when it would not fit a page."""
    fmt = formatter(metric)
    name = metric_name(metric)
    shown = f"{name} ({metric_unit(metric, unit)}, {'higher' if higher else 'lower'} is better)"
    attacks = [a for a in bset.attacks]
    levels = list(bset.levels)
    cells = {(a, e): [m.cell(a, bset.norm, e) for m in bset.models] for a in attacks
             for e in levels}
    heads = {(a, e): f"{ATTACK_NAMES.get(a, a)} {level_text(bset.norm, e, cells[(a, e)])}"
             for a in attacks for e in levels}

    def attacked(m: Evaluated, a: str, e: float) -> float | None:
        c = m.cell(a, bset.norm, e)
        return None if c is None or c.get("attacked") is None else float(c["attacked"])

    def avg(m: Evaluated, a: str) -> float | None:
        v = (m.summary.get("average_by_attack") or {}).get(a)
        return None if v is None else float(v)

    def overall(m: Evaluated) -> float | None:
        v = m.summary.get("average_attacked")
        return None if v is None else float(v)

    def clean(m: Evaluated) -> float | None:
        v = m.summary.get("clean")
        return None if v is None else float(v)

    base = ["Model", "n", f"Clean {name}"]
    width = len(base) + len(attacks) * len(levels) + len(attacks) + 1
    what = f"{shown}; {settings_text(bset.settings)}"
    if width <= MAX_COLUMNS:
        columns = base + [heads[(a, e)] for a in attacks for e in levels] + \
            [f"{ATTACK_NAMES.get(a, a)} average" for a in attacks] + ["Average attacked"]
        records = [(m.label, m.images,
                    [clean(m), *[attacked(m, a, e) for a in attacks for e in levels],
                     *[avg(m, a) for a in attacks], overall(m)]) for m in bset.models]
        return [_table(columns, records, fmt, higher,
                       f"Clean and attacked {what}. Bold: best per column.")]
    tables = []
    for a in attacks:
        columns = base + [heads[(a, e)] for e in levels] + [f"{ATTACK_NAMES.get(a, a)} average"]
        records = [(m.label, m.images, [clean(m), *[attacked(m, a, e) for e in levels],
                                        avg(m, a)]) for m in bset.models]
        tables.append(_table(columns, records, fmt, higher,
                             f"{ATTACK_NAMES.get(a, a)} at each budget, {what}. Bold: best per "
                             "column."))
    columns = base + [f"{ATTACK_NAMES.get(a, a)} average" for a in attacks] + ["Average attacked"]
    records = [(m.label, m.images, [clean(m), *[avg(m, a) for a in attacks], overall(m)])
               for m in bset.models]
    tables.append(_table(columns, records, fmt, higher,
                         f"Averages over the budgets, {what}. Bold: best per column."))
    return tables


# -- the finding ----------------------------------------------------------------------------------

def tolerance(metric: str, unit: str) -> tuple[float | None, str]:
    """How far the clean metric may fall (in the metric's own scale) and how that reads."""
    if metric == "mre":
        return (0.2, "0.2 mm") if unit == "mm" else (None, "0.2 mm")
    if metric == "accuracy":
        return 0.01, "1 percentage point"
    return 0.01, "1 point (0.01)"


def _points(metric: str, value: float) -> str:
    """A difference as the reader counts it: points for shares, the unit for MRE."""
    return f"{value:+.3g}" if metric == "mre" else f"{100 * value:+.3g} points"


def finding(group: Group) -> str:
    """Does adaptive margin beat every VAT level on PGD/IFGSM and keep STD's clean metric?"""
    metric, unit, higher = group.metric, group.unit, group.higher_is_better
    fmt = formatter(metric)
    name = metric_name(metric)
    where = f"{task_display_name(group.task)} on {data_text(group.dataset)}"
    sentences = []
    candidates = [s for s in group.sets if any(m.method == "adaptive-margin" for m in s.models)]
    if not candidates:
        return (f"{where}: cannot say whether adaptive margin beats VAT: no adaptive-margin "
                "model has been evaluated with the protocol here.")
    for bset in candidates:
        budgets = ", ".join(budget_text(bset.norm, e) for e in bset.levels)
        head = f"{where} at {budgets}"
        stds = [m for m in bset.models if m.method == "none"]
        vats = [m for m in bset.models if m.method == "vat"]
        missing = [what for what, ok in (("standard (STD) model", stds),
                                         ("VAT model", vats)) if not ok]
        for am in (m for m in bset.models if m.method == "adaptive-margin"):
            mine = am.finding_average()
            if mine is None:
                sentences.append(f"{head}: cannot say: {am.label} was not evaluated with both "
                                 "PGD and IFGSM.")
                continue
            if missing:
                sentences.append(
                    f"{head}: cannot say: the store holds no {' or '.join(missing)} evaluated "
                    f"at these budgets (adaptive margin averages {fmt(mine)} {name} over PGD "
                    "and IFGSM).")
                continue
            better = (lambda a, b: a > b) if higher else (lambda a, b: a < b)
            vat_avgs = [(v, v.finding_average()) for v in vats]
            lost = [(v, a) for v, a in vat_avgs if a is None or not better(mine, a)]
            vat_text = ", ".join(f"{'-' if a is None else fmt(a)} for {v.label}"
                                 for v, a in vat_avgs)
            # its own standard model (the checkpoint it fine-tuned from), else the strictest:
            # the one with the best clean metric
            start = ((am.meta or {}).get("robust") or {}).get("started_from")
            own = [m for m in stds if start and str(Path(m.model_dir).resolve()) == start]
            std = own[0] if own else max(stds, key=lambda m: (float(m.summary.get("clean") or 0)
                                                               * (1 if higher else -1)))
            tol, tol_text = tolerance(metric, unit)
            am_clean, std_clean = am.summary.get("clean"), std.summary.get("clean")
            kept: bool | None = None
            if am_clean is None or std_clean is None:
                clean_text = (f"its clean {name} cannot be compared: the protocol recorded "
                              f"none for it or for {std.label}")
            else:
                drop = (float(std_clean) - float(am_clean)) * (1 if higher else -1)
                diff = _points(metric, float(am_clean) - float(std_clean))
                if metric == "mre":
                    diff += f" {unit or 'px'}"
                clean_text = (f"its clean {name} is {fmt(am_clean)} against {fmt(std_clean)} "
                              f"for {std.label} ({diff})")
                if tol is None:
                    clean_text += (f", which cannot be judged: the {tol_text} tolerance needs "
                                   f"MRE in mm, this model's is in {unit or 'px'}")
                else:
                    kept = drop <= tol + 1e-12
                    clean_text += (f", within {tol_text} of it or better" if kept else
                                   f", more than {tol_text} worse")
            beats = not lost
            verdict = "cannot say" if kept is None else ("yes" if beats and kept else "no")
            sentences.append(
                f"{head}: {verdict}. {am.label} averages {fmt(mine)} {name} over PGD and "
                f"IFGSM against {vat_text}, so it "
                f"{'beats every VAT level' if beats else 'does not beat every VAT level'}; "
                f"{clean_text}.")
    return " ".join(sentences)


def verdict_of(group: Group, ctx: ReportContext) -> list[Paragraphs | Table] | None:
    """The paper's claims judged on this group's seeds (``robust_verdict``): one sentence and
    the verdict table; None when no adaptive-margin model has a standard model and a VAT model
    of its own seed evaluated beside it, or the paper has no table for the task (classification
    is an extension; the single-run finding then speaks)."""
    from medrobust.tasks import get_task

    if group.task not in PAPER_TABLES:
        return None
    spec = get_task(group.task)
    families = families_from_models(
        group.models, lambda rid: ctx.rows(TASK_ATTACK_TABLE.name, int(rid)),
        spec.metric_of_damage)
    tol, _ = tolerance(group.metric, group.unit)
    found = claims(families, group.task, group.higher_is_better,
                   tol if tol is not None else 0.0)
    if not any(d.baseline.startswith("vat") for c in found for d in c.differences):
        return None
    seeds = sum("adaptive-margin" in f for f in families)
    verdicts = {c.text: c.verdict for c in found if not c.beyond_paper}
    settled = [t for t, v in verdicts.items() if v != "not reproduced at this scale"]
    sentence = (f"Against the paper ({seeds} seed(s), paired per test image): "
                + "; ".join(f"{t[0].lower()}{t[1:]}: {v}" for t, v in verdicts.items()) + "."
                + ("" if settled else " No claim is settled at this scale: the intervals "
                   "straddle zero, so more seeds, test images or epochs would be needed."))
    return [Paragraphs([sentence]), verdict_table(found, group.higher_is_better, seeds)]


# -- the section ----------------------------------------------------------------------------------

INTRO = [
    "Each row is one trained model judged by the attacked-evaluation protocol (medrobust "
    "evaluate --attack): its clean score and its score under every attack at every budget, "
    "averaged per attack and over all. How the model was trained comes from its checkpoint: "
    "STD is standard training; VAT and TEAT train against attacks of one fixed L2 budget eps; "
    "adaptive margin gives every training image its own budget, started at D and grown by D "
    "each epoch the model withstands it.",
    "Budgets are L2 lengths of the whole perturbation of an image on the [0, 1] intensity "
    "scale, with the per-pixel root-mean-square change in grey levels (RMS k/255) beside them, "
    "which is what compares across image sizes; Linf budgets are the largest change of any "
    "pixel in k/255 grey levels.",
]
DEFINITIONS = [
    ("Clean", "The score on the same images without attack."),
    ("Average attacked", "The mean over every attacked cell of the row (all attacks, all "
                         "budgets)."),
    ("n", "How many test images each cell attacked (the same images for every cell of a "
          "row)."),
    ("Bold", "The best value of its column (the highest, or the lowest for errors like MRE)."),
]


def robust_section(ctx: ReportContext) -> Section | None:
    """The adversarial-training section (None, so no heading, without protocol runs; with only
    unfinished ones, a note saying so)."""
    protocol_runs = ctx.runs_of(PROTOCOL_COMMAND)
    if not protocol_runs:
        return None
    groups = collect(ctx)
    from medrobust.report.robust_plots import (
        curve_alt,
        curve_figure,
        margin_alt,
        margin_data,
        margin_figure,
    )

    section = Section("robust-training", "Adversarial training: robustness under the attack "
                                         "protocol")
    section.add(Paragraphs(list(INTRO)), Definitions(list(DEFINITIONS)))
    evaluated = {m.model_dir for g in groups for m in g.models}
    waiting = []
    for run in ctx.runs_of("train"):
        folder = (run.get("model") or {}).get("dir")
        meta = read_checkpoint_meta(folder)
        if folder and str(Path(folder)) not in evaluated and method_of(meta) != "none":
            waiting.append(f"{model_label(method_of(meta), (meta or {}).get('robust') or {})} "
                           f"({Path(folder).name}, run {run['id']})")
    unfinished = [str(r["id"]) for r in protocol_runs
                  if r.get("status") != "completed" or not (r.get("summary") or {}).get("cells")]
    if unfinished:
        section.add(Note(f"Protocol run(s) {', '.join(unfinished)} did not finish, so they have "
                         "no table yet and are left out; rerunning the same medrobust evaluate "
                         "command resumes them.", "warning"))
    if waiting:
        section.add(Note("Trained robustly but not evaluated with the protocol yet (so not "
                         "below): " + "; ".join(waiting) + ".", "warning"))
    for i, group in enumerate(groups):
        title = f"{task_display_name(group.task)}: {data_text(group.dataset)}"
        sub = Section(f"robust-{group.task}-{i}", title)
        found = verdict_of(group, ctx)
        if found is None:
            sub.add(Paragraphs([finding(group)]))
        else:
            sub.add(*found)
        if len(group.sets) > 1:
            sub.add(Note("These models were evaluated at different budget sets or settings; "
                         "each set has its own table, since only equal budgets compare cell by "
                         "cell.", "info"))
        for bset in group.sets:
            for table in budget_tables(bset, group.metric, group.unit, group.higher_is_better):
                sub.add(table)
        fig = curve_figure(group)
        sub.add(Figure(figure_to_data_uri(fig), f"{title}: {metric_name(group.metric)} "
                       "against the attack budget, one line per model, one panel per attack; "
                       "budget 0 is the clean score.", alt=curve_alt(group)))
        for m in group.models:
            if m.method != "adaptive-margin":
                continue
            data = margin_data(m)
            if data is None:
                sub.add(Note(f"{m.label}: the checkpoint records no margins (no margins file "
                             "and no margin histogram in its history).", "warning"))
                continue
            sub.add(Figure(figure_to_data_uri(margin_figure(m.label, data)),
                           f"{m.label}: the final per-image margins and the mean margin per "
                           f"epoch ({data.source}); L2 on the [0,1] scale, "
                           f"{data.scale_text}.", alt=margin_alt(m.label, data)))
        for m in group.models:
            ctx.cite(m.run["id"], sub.anchor, title)
            for c in m.summary.get("cells") or []:
                ctx.cite(c.get("run_id"), sub.anchor, title)
            for rid in m.train_runs:
                ctx.cite(rid, sub.anchor, title)
        section.subsections.append(sub)
    return section
