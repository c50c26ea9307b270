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

import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from markupsafe import Markup

from medrobust.report.blocks import Definitions, Figure, Note, Paragraphs, Section, Table, num, pct
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text, data_text
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.sections import read_checkpoint_meta

#: the protocol's run command (``campaigns.attack_protocol.PROTOCOL_COMMAND``; repeated here so a
#: report without protocol runs does not import the attack code)
PROTOCOL_COMMAND = "evaluate attacks"
TASK_ORDER = ("classification", "segmentation", "landmarks", "detection")
TASK_NAMES = {"classification": "Classification", "segmentation": "Segmentation",
              "landmarks": "Landmarks", "detection": "Detection"}
#: method -> (short name, order in a table)
METHODS = {"none": ("STD", 0), "vat": ("VAT", 1), "teat": ("TEAT", 2),
           "adaptive-margin": ("Adaptive margin", 3)}
ATTACK_NAMES = {"pgd": "PGD", "ifgsm": "IFGSM", "pgd-restarts": "PGD restarts",
                "apgd-ce": "APGD-CE", "apgd-t": "APGD-T", "square": "Square"}
#: the attacks the finding averages over (the paper's claim is about these two)
FINDING_ATTACKS = ("pgd", "ifgsm")
#: columns of one table before it is split per attack (about what fits a 1,400 px page)
MAX_COLUMNS = 10
_RMS = re.compile(r"RMS\s+([-+0-9.eE]+)/255")


# -- what the store holds -------------------------------------------------------------------------

@dataclass
class Evaluated:
    """One model's protocol run: its summary, its checkpoint's training and its row label."""

    run: dict[str, Any]
    summary: dict[str, Any]
    model_dir: str
    meta: dict[str, Any] | None
    method: str
    label: str = ""
    train_runs: list[int] = field(default_factory=list)

    @property
    def robust(self) -> dict[str, Any]:
        return dict((self.meta or {}).get("robust") or {})

    @property
    def images(self) -> int:
        return int(self.summary.get("images") or 0)

    def cell(self, attack: str, norm: str, eps: float) -> dict[str, Any] | None:
        for c in self.summary.get("cells") or []:
            if c.get("attack") == attack and c.get("norm") == norm and \
                    math.isclose(float(c.get("eps", -1)), eps, rel_tol=1e-9):
                return c
        return None

    def finding_average(self) -> float | None:
        """Mean attacked metric over the PGD and IFGSM cells (None unless both are there)."""
        cells = [c for c in self.summary.get("cells") or []
                 if c.get("attack") in FINDING_ATTACKS and c.get("attacked") is not None]
        if {c["attack"] for c in cells} != set(FINDING_ATTACKS):
            return None
        return sum(float(c["attacked"]) for c in cells) / len(cells)


@dataclass
class BudgetSet:
    """Models evaluated with the same attacks at the same budgets and settings: one table."""

    norm: str
    levels: tuple[float, ...]
    attacks: tuple[str, ...]
    settings: str
    models: list[Evaluated] = field(default_factory=list)


@dataclass
class Group:
    """One task on one dataset split: the unit of a subsection, a figure and a finding."""

    task: str
    dataset: dict[str, Any]
    sets: list[BudgetSet] = field(default_factory=list)

    @property
    def models(self) -> list[Evaluated]:
        """Every evaluated model once (first seen), in table order."""
        seen: dict[str, Evaluated] = {}
        for s in self.sets:
            for m in s.models:
                seen.setdefault(m.model_dir, m)
        return sort_models(list(seen.values()))

    @property
    def metric(self) -> str:
        return str(self.sets[0].models[0].summary.get("metric") or "")

    @property
    def higher_is_better(self) -> bool:
        return bool(self.sets[0].models[0].summary.get("higher_is_better", True))

    @property
    def unit(self) -> str:
        return str(self.sets[0].models[0].summary.get("unit") or "")


def run_task_name(run: dict[str, Any]) -> str:
    params = run.get("params") or {}
    return str(params.get("task") or (run.get("model") or {}).get("task") or
               (run.get("summary") or {}).get("task") or "classification")


def method_of(meta: dict[str, Any] | None) -> str:
    """The checkpoint's training method; 'none' (standard) when it records none."""
    method = str(((meta or {}).get("robust") or {}).get("method") or "none")
    return method if method in METHODS else "none"


def rms_text(scales: dict[str, Any] | None, key: str) -> str:
    """' (RMS 0.92/255)' from the checkpoint's recorded scales ('' when not recorded)."""
    rms = ((scales or {}).get(key) or {}).get("rms_255")
    return f" (RMS {rms:.3g}/255)" if isinstance(rms, (int, float)) else ""


def model_label(method: str, robust: dict[str, Any]) -> str:
    """'STD', 'VAT L2 0.1 (RMS 0.92/255)', 'Adaptive margin, D = L2 0.05 (RMS ...)'."""
    short = METHODS[method][0]
    scales = robust.get("scales")
    if method in ("vat", "teat"):
        return f"{short} {budget_text('l2', robust.get('eps'))}{rms_text(scales, 'eps')}"
    if method == "adaptive-margin":
        label = f"{short}, D = {budget_text('l2', robust.get('delta'))}" \
                f"{rms_text(scales, 'delta')}"
        if robust.get("max_margin") is not None:
            label += f", cap {budget_text('l2', robust['max_margin'])}"
        return label
    return short


def sort_models(models: list[Evaluated]) -> list[Evaluated]:
    """STD first, then VAT and TEAT by budget, adaptive margins last."""
    def key(m: Evaluated) -> tuple[Any, ...]:
        r = m.robust
        budget = r.get("eps") if m.method in ("vat", "teat") else r.get("delta")
        return (METHODS[m.method][1], float(budget or 0), m.label, m.model_dir)
    return sorted(models, key=key)


def _settings_key(params: dict[str, Any]) -> str:
    keep = {k: params.get(k) for k in ("pgd_steps", "ifgsm_steps", "restarts",
                                       "square_queries", "seed")}
    attacks = set(params.get("attacks") or ())
    if "pgd-restarts" not in attacks:
        keep.pop("restarts")
    if "square" not in attacks:
        keep.pop("square_queries")
    return json.dumps(keep, sort_keys=True)


def settings_text(settings: str) -> str:
    s = json.loads(settings)
    parts = [f"PGD {s.get('pgd_steps')} steps", f"IFGSM {s.get('ifgsm_steps')} steps"]
    if s.get("restarts") is not None:
        parts.append(f"{s['restarts']} restarts")
    if s.get("square_queries") is not None:
        parts.append(f"Square {s['square_queries']} queries")
    return ", ".join(parts)


def collect(ctx: ReportContext) -> list[Group]:
    """The store's completed protocol runs, grouped by task and dataset, then budget set.

    A model evaluated twice with the same settings (a rerun with --no-resume, a larger
    --limit) appears once: the run with the most images, the newest on a tie."""
    best: dict[tuple[str, ...], Evaluated] = {}
    train_runs: dict[str, list[int]] = {}
    for run in ctx.runs_of("train"):
        folder = (run.get("model") or {}).get("dir")
        if folder:
            train_runs.setdefault(str(Path(folder)), []).append(int(run["id"]))
    for run in ctx.runs_of(PROTOCOL_COMMAND):
        summary = run.get("summary") or {}
        folder = (run.get("model") or {}).get("dir")
        if run.get("status") != "completed" or not summary.get("cells") or not folder:
            continue
        params = run.get("params") or {}
        task = run_task_name(run)
        dataset = run.get("dataset") or {}
        levels = tuple(float(v) for v in params.get("levels") or
                       dict.fromkeys(c["eps"] for c in summary["cells"]))
        attacks = tuple(params.get("attacks") or dict.fromkeys(c["attack"]
                                                               for c in summary["cells"]))
        norm = str(params.get("norm") or summary["cells"][0].get("norm") or "l2")
        key = (task, json.dumps(dataset, sort_keys=True, default=str), norm,
               json.dumps(levels), json.dumps(attacks), _settings_key(params),
               str(Path(folder)))
        meta = read_checkpoint_meta(folder)
        ev = Evaluated(run, summary, str(Path(folder)), meta, method_of(meta))
        ev.train_runs = train_runs.get(ev.model_dir, [])
        old = best.get(key)
        if old is None or (ev.images, run["id"]) >= (old.images, old.run["id"]):
            best[key] = ev
    groups: dict[tuple[str, str], Group] = {}
    for key, ev in best.items():
        task, data, norm, levels, attacks, settings, _ = key
        group = groups.setdefault((task, data), Group(task, json.loads(data)))
        bset = next((s for s in group.sets if (s.norm, json.dumps(s.levels),
                                               json.dumps(s.attacks), s.settings)
                     == (norm, levels, attacks, settings)), None)
        if bset is None:
            bset = BudgetSet(norm, tuple(json.loads(levels)), tuple(json.loads(attacks)),
                             settings)
            group.sets.append(bset)
        bset.models.append(ev)
    out = sorted(groups.values(), key=lambda g: (
        TASK_ORDER.index(g.task) if g.task in TASK_ORDER else 99, data_text(g.dataset)))
    for group in out:
        for s in group.sets:
            s.models = sort_models(s.models)
        _label(group)
    return out


def _label(group: Group) -> None:
    """Row labels from the training method; two models with one label get their folder."""
    models = group.models
    for m in models:
        m.label = model_label(m.method, m.robust)
    counts: dict[str, int] = {}
    for m in models:
        counts[m.label] = counts.get(m.label, 0) + 1
    for m in models:
        if counts[m.label] > 1:
            m.label += f" [{Path(m.model_dir).name}]"
    for s in group.sets:  # the same objects, but a set may hold a model the group saw later
        for m in s.models:
            m.label = next(x.label for x in models if x.model_dir == m.model_dir)


# -- formatting -----------------------------------------------------------------------------------

METRIC_NAMES = {"accuracy": "accuracy", "dice": "Dice", "map": "mAP@0.5:0.95", "mre": "MRE"}


def metric_name(metric: str) -> str:
    return METRIC_NAMES.get(metric, metric)


def metric_unit(metric: str, unit: str) -> str:
    """The unit a value is shown in: % for accuracy, the 0-1 scale for Dice and mAP."""
    if metric == "accuracy":
        return "%"
    if metric == "mre":
        return unit or "px"
    return "0-1"


def formatter(metric: str) -> Callable[[Any], str]:
    """Accuracy as a percentage, everything else with three decimals (what other sections do)."""
    return pct if metric == "accuracy" else (lambda v: num(v, 3))


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


def cell_rms(cell: dict[str, Any] | None) -> float | None:
    """The per-pixel RMS (1/255) the protocol wrote next to an L2 budget, from the very images
    it evaluated."""
    m = _RMS.search(str((cell or {}).get("budget") or ""))
    return float(m.group(1)) if m else None


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
    where = f"{TASK_NAMES.get(group.task, group.task)} on {data_text(group.dataset)}"
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
        title = f"{TASK_NAMES.get(group.task, group.task)}: {data_text(group.dataset)}"
        sub = Section(f"robust-{group.task}-{i}", title)
        sub.add(Paragraphs([finding(group)]))
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
