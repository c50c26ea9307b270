"""Report section: certified robustness (randomized, Seg- and median smoothing) beside what
attacks leave.

A certificate is a lower bound on robustness and an attack an upper bound; the section shows
both per radius, so a reader sees the gap between them, and it leads with any image a
cross-check found certified yet broken (an evaluation bug, never hidden). Every task's summary
gives per radius its certified headline (``certified``: accuracy, Dice, a radial-error or IoU
bound) under the name ``metric``.
"""

from __future__ import annotations

from typing import Any

from medrobust.campaigns.certify import CHECK_COMMAND
from medrobust.campaigns.certify import COMMAND as CERTIFY_COMMAND
from medrobust.report.blocks import Definitions, Note, Section, Table, num, pct
from medrobust.report.context import ReportContext
from medrobust.report.sections import model_label


def _ci(ci: Any) -> str:
    return "-" if not ci else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f} %"


def _interval(ci: Any) -> str:
    return "-" if not ci else f"{num(ci[0], 3)}-{num(ci[1], 3)}"


def _cells(s: dict[str, Any]) -> list[dict[str, Any]]:
    """Per radius the certified headline (stores of the first version held classifiers'
    ``certified_accuracy`` only)."""
    if s.get("certified") is not None:
        return list(s["certified"])
    return [{"radius": c["radius"], "value": c.get("accuracy"), "ci95": c.get("ci95")}
            for c in s.get("certified_accuracy") or []]


def _check_for(ctx: ReportContext, run: dict[str, Any]) -> dict[str, Any] | None:
    """The latest cross-check of this certify run: the one that names it, else (checks run
    through the API without naming it) one of the same model, data, noise and images."""
    params = run.get("params") or {}

    def noise(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (p.get("smoothing") or {}).items() if k != "radii"}

    for check in reversed(ctx.runs_of(CHECK_COMMAND)):
        p = check.get("params") or {}
        if p.get("certify_run") is not None:
            if p["certify_run"] == run["id"]:
                return check
            continue
        if noise(p) == noise(params) and p.get("indices") == params.get("indices") and \
                check.get("model") == run.get("model") and \
                check.get("dataset") == run.get("dataset"):
            return check
    return None


def certify_section(ctx: ReportContext) -> Section | None:
    """One subsection per certification run: certified accuracy per radius with its interval,
    the cross-check's attacked accuracy beside it, and violations first."""
    runs = ctx.runs_of(CERTIFY_COMMAND)
    if not runs:
        return None
    section = Section("certified", "Certified robustness: what no attack within a radius can do")
    section.add(Definitions([
        ("certified accuracy at r", "share of images whose smoothed prediction is correct and "
                                    "provably unchanged by any perturbation of L2 norm below r "
                                    "(Cohen et al. 2019; wrong with probability at most alpha "
                                    "per image); abstentions count as failures"),
        ("certified Dice at r", "the smoothed segmentation's Dice when every pixel SegCertify "
                                "could not certify at r counts against the model (Fischer et "
                                "al. 2021): no perturbation below r lowers it"),
        ("certified error bound at r", "median smoothing (Chiang et al. 2020): the largest "
                                       "radial error (landmarks) or the share of true boxes "
                                       "still found at IoU 0.5 (detection) that any "
                                       "perturbation below r can cause"),
        ("attacked", "the smoothed model's metric after PGD on its own noise-averaged loss "
                     "at that radius (accuracy, Dice, MRE, boxes found): an attack gives an "
                     "upper bound on robustness, so it must not beat the certificate; an image "
                     "whose certified outputs it moves is a violation"),
    ]))
    for run in runs:
        s = run.get("summary") or {}
        sub = Section(f"certified-run-{run['id']}",
                      f"Run {run['id']}: {model_label(run)}, sigma {num(s.get('sigma'), 3)}, "
                      f"n {s.get('n', '-')}, alpha {s.get('alpha', '-')}")
        ctx.cite(run["id"], sub.anchor, f"Certified robustness: run {run['id']}")
        check = _check_for(ctx, run)
        by_radius = {c["radius"]: c for c in ((check or {}).get("summary") or {}).get("radii", [])}
        if check is not None:
            ctx.cite(check["id"], sub.anchor, f"Certified robustness: run {run['id']}")
            violations = (check.get("summary") or {}).get("violations", 0)
            if violations:
                sub.add(Note(f"Evaluation bug: {violations} image(s) certified at a radius were "
                             "moved to another class within it by the cross-check's attack "
                             f"(run {check['id']}, table certify_check_results). Do not quote "
                             "these certificates until it is explained.", "warning"))
        else:
            sub.add(Note("No cross-check ran (certify --check): the certified numbers stand "
                         "without an attack beside them.", "info"))
        metric = str(s.get("metric") or "accuracy")
        share = metric == "accuracy" or s.get("metric_is_share", False)
        table = Table(["L2 radius", f"certified {metric}", "95 % CI", "n", "attacked",
                       "violations"], [],
                      caption=f"{s.get('method') or 'randomized smoothing'}; abstained: "
                              f"{pct(s.get('abstain_rate'))} ({s.get('abstain_of', 'images')})"
                              f" over {s.get('images', 0)} images")
        for c in _cells(s):
            chk = by_radius.get(c["radius"])
            value, ci = c.get("value"), c.get("ci95")
            table.rows.append([num(c["radius"], 3),
                               pct(value) if share else num(value, 3),
                               _ci(ci) if share else _interval(ci),
                               str(s.get("images", "-")),
                               "-" if chk is None else (
                                   pct(chk["empirical_accuracy"]) if "empirical_accuracy" in chk
                                   else num(chk.get("attacked"), 3)),
                               "-" if chk is None else str(chk.get("violations", 0))])
        sub.add(table)
        section.subsections.append(sub)
    return section
