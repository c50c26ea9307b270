"""The adaptive-margin verdict: the paper's claims, its numbers beside ours, and per claim
reproduced, not reproduced at this scale, or contradicted.

Why a verdict and not a table of means: Ma & Liang (SPIE MI 2024) claim that adaptive margins
beat every VAT level on attacked data and on clean data, and keep the standard model's clean
score. A difference of means between two models trained once says little when intervals
overlap; a claim is settled only when the paired per-image difference (the same test images,
pooled over independently trained seeds) has a 95 % interval on one side of the line. The rule:

- *reproduced*: every comparison the claim makes has its interval above the line;
- *contradicted*: at least one comparison has its interval below the line;
- *not reproduced at this scale*: anything else (the intervals straddle the line: more seeds,
  test images or epochs would settle it).

"The line" is 0 for "beats", and minus the task's clean tolerance (1 point of Dice, mAP or
accuracy; 0.2 mm of MRE) for "keeps the standard model's clean score".

The attacked claims use each image's metric averaged over the test budgets, as the paper's
"Avg." columns do. PGD-100 and IFGSM-10 are either their own protocol cells or members of the
worst-case ensemble, read per image from its record (``Task.metric_of_damage``); the ensemble
itself gives a claim the paper did not test (marked "beyond the paper").

Used by the report's adversarial-training section (families built from the store) and by
``benchmarks/robust_training.py`` (families from its own runs), so both say the same.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medrobust.metrics.mean_interval import mean_ci95
from medrobust.report.blocks import Table

#: per image: dataset index -> metric
PerImage = dict[int, float]
#: one model's values: (attack, budget) -> per image; ("clean", None) is the clean metric
Values = dict[tuple[str, float | None], PerImage]

#: the paper's attacks, averaged over budgets in its "Avg." columns
PAPER_ATTACKS = ("pgd", "ifgsm")
#: the steps are the run's (the paper's: PGD-100, IFGSM-10); the tables beside say them
ATTACK_TEXT = {"pgd": "PGD", "ifgsm": "IFGSM", "ensemble": "the worst-case ensemble"}


@dataclass(frozen=True)
class PaperRow:
    """One method's row of a paper table: clean and the two attacked averages."""

    clean: float
    pgd: float
    ifgsm: float


@dataclass(frozen=True)
class PaperTable:
    source: str
    std: PaperRow
    vats: Mapping[str, PaperRow]
    ours: PaperRow


#: the paper's tables (``../shared/papers``), per task: STD, every VAT level and its method
PAPER_TABLES: dict[str, PaperTable] = {
    "segmentation": PaperTable(
        "Table 4: nnU-Net on hippocampus MRI, Dice, budgets 2 / 6 / 10",
        PaperRow(0.7589, 0.1870, 0.5182),
        {"VAT5": PaperRow(0.7305, 0.5572, 0.6596), "VAT10": PaperRow(0.7175, 0.5809, 0.6593),
         "VAT15": PaperRow(0.7112, 0.5844, 0.6589)},
        PaperRow(0.7845, 0.6619, 0.7278)),
    "landmarks": PaperTable(
        "Table 1: multi-task U-Net on ISBI 2015 (200x160), MRE mm, L2 0.5 / 1 / 2 on [-1, 1]",
        PaperRow(1.55, 19.17, 16.62),
        {"VAT3": PaperRow(2.11, 2.31, 2.31), "VAT5": PaperRow(2.18, 2.38, 2.38)},
        PaperRow(1.77, 2.12, 2.11)),
    "detection": PaperTable(
        "Table 2: YOLOv5s on BCCD (320 px), mAP@0.5:0.95, budgets 5 / 10 / 15",
        PaperRow(0.5993, 0.0028, 0.0213),
        {"VAT10": PaperRow(0.4722, 0.1874, 0.1888), "VAT15": PaperRow(0.2565, 0.1320, 0.1324)},
        PaperRow(0.5989, 0.2262, 0.2322)),
}


@dataclass
class Difference:
    """Adaptive margins minus one baseline, in the good direction (positive: better)."""

    baseline: str
    mean: float
    low: float
    high: float
    pairs: int


@dataclass
class Claim:
    text: str
    paper: str
    line: float
    differences: list[Difference] = field(default_factory=list)
    beyond_paper: bool = False

    @property
    def verdict(self) -> str:
        if not self.differences:
            return "cannot say"
        if all(d.low > self.line for d in self.differences):
            return "reproduced"
        if any(d.high < self.line for d in self.differences):
            return "contradicted"
        return "not reproduced at this scale"


def method_key(robust: Mapping[str, Any] | None) -> str:
    """A name that is the same for the same method in every seed: 'std', 'vat 1.74',
    'vat 6.96 + clean 0.5', 'teat 3.48', 'adaptive-margin' (its D is searched per seed)."""
    r = dict(robust or {})
    method = str(r.get("method") or "none")
    if method in ("vat", "teat"):
        key = f"{method} {float(r.get('eps') or 0):.3g}"
        if float(r.get("vat_clean_weight") or 0) > 0:
            key += f" + clean {float(r['vat_clean_weight']):g}"
        return key
    return "std" if method == "none" else method


def budget_average(values: Values, attack: str) -> PerImage:
    """Per image, the attack's metric averaged over every budget it was run at (images that
    miss a budget are left out, so every average has the same budgets)."""
    cells = [v for (a, eps), v in values.items() if a == attack and eps is not None]
    if not cells:
        return {}
    common = set.intersection(*(set(c) for c in cells))
    return {i: float(np.mean([c[i] for c in cells])) for i in sorted(common)}


def paired(mine: Sequence[PerImage], theirs: Sequence[PerImage], sign: float,
           baseline: str) -> Difference | None:
    """Per-image differences pooled over seeds (each seed's images paired within the seed)."""
    d = [sign * (a[i] - b[i]) for a, b in zip(mine, theirs, strict=True) for i in a if i in b]
    if not d:
        return None
    lo, hi = mean_ci95(d) or (math.nan, math.nan)
    return Difference(baseline, float(np.mean(d)), lo, hi, len(d))


def claims(families: Sequence[Mapping[str, Values]], task: str, higher: bool,
           tolerance: float) -> list[Claim]:
    """The paper's claims over the seeds' families (method key -> values), each with its
    comparisons: adaptive margins against every VAT (and STD for the clean claim). A baseline
    counts only when every family has it."""
    fams = [f for f in families if "adaptive-margin" in f]
    if not fams:
        return []
    sign = 1.0 if higher else -1.0
    present = set.intersection(*(set(f) for f in fams))
    vats = sorted(k for k in present if k.startswith("vat"))
    paper = PAPER_TABLES.get(task)
    fmt = (lambda v: f"{v:.3f}") if higher else (lambda v: f"{v:.2f}")

    def paper_text(attr: str, versus_std: bool = False) -> str:
        if paper is None:
            return "no table for this task"
        mine = getattr(paper.ours, attr)
        if versus_std:
            return f"{fmt(mine)} vs STD {fmt(getattr(paper.std, attr))} ({paper.source})"
        theirs = [getattr(r, attr) for r in paper.vats.values()]
        return (f"{fmt(mine)} vs VAT {fmt(min(theirs))}-{fmt(max(theirs))} "
                f"({paper.source})")

    def compare(claim: Claim, attack: str, baselines: Sequence[str]) -> Claim:
        pick = ((lambda v: v.get(("clean", None), {})) if attack == "clean"
                else (lambda v: budget_average(v, attack)))
        for base in baselines:
            d = paired([pick(f["adaptive-margin"]) for f in fams],
                       [pick(f[base]) for f in fams], sign, base)
            if d is not None:
                claim.differences.append(d)
        return claim

    out = [compare(Claim(f"Under {ATTACK_TEXT[a]} (average over the budgets) adaptive margins "
                         "beat every VAT level", paper_text(a), 0.0), a, vats)
           for a in PAPER_ATTACKS]
    out.append(compare(Claim("Adaptive margins have a better clean score than every VAT level",
                             paper_text("clean"), 0.0), "clean", vats))
    if "std" in present:
        out.append(compare(Claim("Adaptive margins keep the standard model's clean score "
                                 f"(at most {tolerance:g} worse)", paper_text("clean", True),
                                 -tolerance), "clean", ["std"]))
    out.append(compare(Claim(f"Under {ATTACK_TEXT['ensemble']} (average over the budgets) "
                             "adaptive margins beat every VAT level", "not tested in the paper",
                             0.0, beyond_paper=True), "ensemble", vats))
    return [c for c in out if c.differences]


def verdict_table(found: Sequence[Claim], higher: bool, seeds: int, caption_extra: str = ""
                  ) -> Table:
    """One row per claim: the paper's numbers, ours (adaptive margins minus each baseline,
    95 % interval, pairs) and the verdict."""
    f = (lambda v: f"{v:+.3f}") if higher else (lambda v: f"{v:+.2f}")
    rows = []
    for c in found:
        ours = "; ".join(f"{d.baseline}: {f(d.mean)} ({f(d.low)} to {f(d.high)}, n = {d.pairs})"
                         for d in c.differences)
        rows.append([c.text + (" (beyond the paper)" if c.beyond_paper else ""), c.paper, ours,
                     c.verdict])
    return Table(["Claim", "Paper", "Ours: adaptive margins minus baseline (95 % interval)",
                  "Verdict"], rows,
                 caption=f"Paired per-image differences pooled over {seeds} seed(s), "
                         "positive = adaptive margins better. Reproduced: every interval on "
                         "the claim's side; contradicted: one on the other side; otherwise not "
                         "settled at this scale." + caption_extra)


# -- families from the store (the report) ---------------------------------------------------------

def model_values(rows_by_cell: Sequence[tuple[Mapping[str, Any], Sequence[Mapping[str, Any]]]],
                 metric_of_damage: Any) -> Values:
    """One model's values from its protocol cells and their stored rows: the clean metric,
    each attacked cell, and from an ensemble cell its PGD and IFGSM members (when the task can
    turn a member's damage into its metric and no cell of their own exists)."""
    out: Values = {}
    members: Values = {}
    for cell, rows in rows_by_cell:
        attack, eps = str(cell.get("attack")), float(cell.get("eps"))
        for r in rows:
            i = int(r["dataset_index"])
            if r.get("clean_metric") is not None:
                out.setdefault(("clean", None), {})[i] = float(r["clean_metric"])
            if r.get("adv_metric") is not None:
                out.setdefault((attack, eps), {})[i] = float(r["adv_metric"])
            damage = (r.get("members") or {}).get("damage") or {}
            if attack == "ensemble" and metric_of_damage is not None:
                for label in PAPER_ATTACKS:
                    if label in damage:
                        members.setdefault((label, eps), {})[i] = \
                            float(metric_of_damage(damage[label]))
    for key, v in members.items():
        out.setdefault(key, v)
    return out


def families_from_models(models: Sequence[Any], rows_of: Any, metric_of_damage: Any
                         ) -> list[dict[str, Values]]:
    """Seeds' families from evaluated models (``report.robust_data.Evaluated``): a standard
    model and every robust model fine-tuned from it (its checkpoint's ``started_from``).
    ``rows_of(run_id)`` gives a cell's stored rows."""
    families: dict[str, dict[str, Values]] = {}
    for m in models:
        robust = m.robust
        start = robust.get("started_from") if m.method != "none" else m.model_dir
        if not start:
            continue
        cells = [c for c in m.summary.get("cells") or []
                 if c.get("run_id") is not None and c.get("attack") in (*PAPER_ATTACKS,
                                                                         "ensemble")]
        values = model_values([(c, rows_of(c["run_id"])) for c in cells], metric_of_damage)
        if values:
            families.setdefault(str(Path(start).resolve()), {})[method_key(robust)] = values
    return list(families.values())
