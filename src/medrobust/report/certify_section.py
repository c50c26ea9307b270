"""Report section: certified robustness (randomized smoothing) beside what attacks leave.

A certificate is a lower bound on robust accuracy and an attack an upper bound; the section
shows both per radius, so a reader sees the gap between them, and it leads with any image a
cross-check found certified yet broken (an evaluation bug, never hidden).
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
        ("attacked", "accuracy of the smoothed classifier after PGD on its own noise-averaged "
                     "loss at that radius: an upper bound, so it must not fall below the "
                     "certified lower bound"),
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
        table = Table(["L2 radius", "certified accuracy", "95 % CI", "n", "attacked", "violations"],
                      [], caption=f"Abstained: {pct(s.get('abstain_rate'))} of "
                                  f"{s.get('images', 0)} images")
        for c in s.get("certified_accuracy") or []:
            chk = by_radius.get(c["radius"])
            table.rows.append([num(c["radius"], 3), pct(c.get("accuracy")), _ci(c.get("ci95")),
                               str(c.get("images", "-")),
                               "-" if chk is None else pct(chk.get("empirical_accuracy")),
                               "-" if chk is None else str(chk.get("violations", 0))])
        sub.add(table)
        section.subsections.append(sub)
    return section
