"""Report section: what each member of a worst-case ensemble did, and whether the gradients
can be trusted.

For segmentation, landmark and detection models the ensemble keeps, per image, the member that
hurt the task metric most. This section shows each member's mean damage and how often its
image was kept (so a reader sees which attack the model fell to), and it leads with the
gradient-masking check: the black-box member (Square) hurting more than every gradient member
means the gradients mislead the attacks, and white-box numbers flatter the model.
"""

from __future__ import annotations

from typing import Any

from medrobust.report.blocks import Figure, Note, Section, Table, num
from medrobust.report.context import ReportContext
from medrobust.report.names import budget_text
from medrobust.report.plots import figure_to_data_uri
from medrobust.report.sections import model_label

#: what a member's damage is on each task's scale (``Task.image_damage``)
DAMAGE = "damage: 1 - Dice, radial error (input px) or 1 - image mAP, by task"


def ensemble_section(ctx: ReportContext) -> Section | None:
    """One table per ensemble run (model and budget): members, mean damage, images kept."""
    runs = [r for r in ctx.runs if (r.get("summary") or {}).get("members")]
    if not runs:
        return None
    section = Section("ensemble-members", "Worst-case ensembles: which attack each model fell to")
    for (label, norm), group in _curves(runs).items():
        if len({eps for eps, _ in group}) > 1:  # a curve needs two budgets
            section.add(Figure(figure_to_data_uri(member_figure(group, label, norm)),
                               f"Mean damage per member against the {norm.upper()} budget, "
                               f"{label} ({DAMAGE}); the ensemble is the worst per image, so "
                               "it lies on or above every member.",
                               alt=f"member damage curves for {label}"))
    for run in runs:
        s = run["summary"]
        a = (run.get("params") or {}).get("attack") or {}
        title = (f"Run {run['id']}: {model_label(run)}, {budget_text(a.get('norm'), a.get('eps'))}"
                 f", {s.get('images', 0)} images")
        sub = Section(f"ensemble-run-{run['id']}", title)
        ctx.cite(run["id"], sub.anchor, f"Worst-case ensembles: run {run['id']}")
        check = s.get("gradient_masking") or {}
        if check.get("flagged"):
            sub.add(Note(_masking_text(check), "warning"))
        rows: list[list[Any]] = []
        for label, m in s["members"].items():
            rows.append([label, num(m.get("mean_damage"), 3), str(m.get("kept", 0))])
        sub.add(Table(["Member", "Mean damage", "Images kept"], rows,
                      caption=f"Per member on the same images ({DAMAGE}); the ensemble keeps "
                              "each image's worst"))
        section.subsections.append(sub)
    return section


def _masking_text(check: dict[str, Any]) -> str:
    return (f"Likely gradient masking: the black-box {check['black_box']} (no gradients) hurt "
            f"more on average ({num(check['black_box_damage'], 3)}) than the strongest gradient "
            f"attack, {check['best_gradient']} ({num(check['best_gradient_damage'], 3)}), and "
            f"beat every gradient attack on {check['images_black_box_worse']} of "
            f"{check['images']} images. The gradient attacks' numbers flatter this model; "
            "trust the ensemble's, and look for what blocks the gradient.")


def _curves(runs: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[float, dict]]]:
    """(model, norm) -> [(budget, summary)], one point per ensemble run, newest per budget."""
    out: dict[tuple[str, str], dict[float, dict]] = {}
    for run in runs:
        a = (run.get("params") or {}).get("attack") or {}
        eps, norm = a.get("eps"), a.get("norm")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or norm is None:
            continue
        out.setdefault((model_label(run), str(norm)), {})[float(eps)] = run["summary"]
    return {k: sorted(v.items()) for k, v in out.items()}


def member_figure(points: list[tuple[float, dict]], label: str, norm: str) -> Any:
    """One line per member (mean damage against the budget) and the ensemble's, dashed."""
    from matplotlib.figure import Figure as PlotFigure

    fig = PlotFigure(figsize=(6.4, 3.4), layout="constrained")
    ax = fig.subplots()
    members = list(points[0][1]["members"])
    xs = [eps for eps, _ in points]
    for m in members:
        ax.plot(xs, [s["members"].get(m, {}).get("mean_damage") for _, s in points],
                marker="o", markersize=3, label=m)
    ens = [s.get("ensemble_damage") for _, s in points]
    if all(v is not None for v in ens):  # runs of the first version did not record it
        ax.plot(xs, ens, linestyle="--", color="black", label="ensemble (worst per image)")
    ax.set_xlabel(f"{norm.upper()} budget")
    ax.set_ylabel("mean damage")
    ax.set_title(label, fontsize=9)
    ax.legend(fontsize=7)
    return fig
