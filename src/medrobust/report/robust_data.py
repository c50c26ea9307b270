"""The adversarial-training section's data: protocol runs of the store grouped by task, dataset
and budget set, each model with its checkpoint's robust settings; and the metric vocabulary
its tables and plots share (kept apart so both import it, not each other)."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medrobust.campaigns.attack_protocol import PROTOCOL_COMMAND
from medrobust.report.blocks import num, pct
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text, data_text
from medrobust.report.sections import read_checkpoint_meta
from medrobust.tasks import DEFAULT_TASK, task_report

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


def task_order(task: str) -> int:
    """Where a task's tables stand on the page (unknown tasks last)."""
    spec = task_report(task)
    return 99 if spec is None else spec.order


def task_display_name(task: str) -> str:
    """'Segmentation' for 'segmentation' (an unknown task: its own name)."""
    spec = task_report(task)
    return task if spec is None else spec.display_name


def run_task_name(run: dict[str, Any]) -> str:
    params = run.get("params") or {}
    return str(params.get("task") or (run.get("model") or {}).get("task") or
               (run.get("summary") or {}).get("task") or DEFAULT_TASK)


def method_of(meta: dict[str, Any] | None) -> str:
    """The checkpoint's training method; 'none' (standard) when it records none."""
    method = str(((meta or {}).get("robust") or {}).get("method") or "none")
    return method if method in METHODS else "none"


def rms_text(scales: dict[str, Any] | None, key: str) -> str:
    """' (RMS 0.92/255)' from the checkpoint's recorded scales ('' when not recorded)."""
    rms = ((scales or {}).get(key) or {}).get("rms_255")
    return f" (RMS {rms:.3g}/255)" if isinstance(rms, (int, float)) else ""


def model_label(method: str, robust: dict[str, Any]) -> str:
    """'STD', 'VAT L2 0.1 (RMS 0.92/255)', 'VAT L2 0.1 (RMS 0.92/255) + clean loss 0.5',
    'Adaptive margin, D = L2 0.05 (RMS ...)'."""
    short = METHODS[method][0]
    scales = robust.get("scales")
    if method in ("vat", "teat"):
        label = f"{short} {budget_text('l2', robust.get('eps'))}{rms_text(scales, 'eps')}"
        if float(robust.get("vat_clean_weight") or 0) > 0:  # the paper's 0.5 clean loss
            label += f" + clean loss {float(robust['vat_clean_weight']):g}"
        return label
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


def is_tabled(run: dict[str, Any]) -> bool:
    """Whether this section shows a protocol run: finished, with its cells and its model."""
    summary = run.get("summary") or {}
    return (run.get("status") == "completed" and bool(summary.get("cells"))
            and bool((run.get("model") or {}).get("dir")))


def protocol_campaigns(ctx: ReportContext) -> set[int]:
    """The ids of the campaign runs (one per attack and budget) that the protocol runs this
    section shows list as their cells. Their curves are drawn here, one line per model, so the
    metric-vs-budget section leaves them out rather than draw them a second time."""
    return {int(c["run_id"]) for run in ctx.runs_of(PROTOCOL_COMMAND) if is_tabled(run)
            for c in run["summary"]["cells"] if c.get("run_id") is not None}


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
        if not is_tabled(run):
            continue
        summary = run["summary"]
        folder = run["model"]["dir"]
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
        task_order(g.task), data_text(g.dataset)))
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
        if counts[m.label] > 1:  # the folder and its parent: seeds often share folder names
            m.label += f" [{'/'.join(Path(m.model_dir).parts[-2:])}]"
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



def cell_rms(cell: dict[str, Any] | None) -> float | None:
    """The per-pixel RMS (1/255) the protocol wrote next to an L2 budget, from the very images
    it evaluated."""
    m = _RMS.search(str((cell or {}).get("budget") or ""))
    return float(m.group(1)) if m else None
