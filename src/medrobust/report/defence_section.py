"""The report's defence section: denoisers against one-pixel attacks, and attacks that see them.

Reads the ``defend`` and ``defend adaptive`` runs of the store. One table across every defence
and dataset (image quality, clean and adversarial accuracy with and without the defence,
recovery rate), the adaptive table (robust accuracy when the attacker attacks the defended model
itself, beside the undefended model), and per one-pixel run the clean / attacked / denoised /
difference grid, rebuilt from the recorded dataset and defence specs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medrobust.defences.table import ATTACK_LABELS
from medrobust.report.blocks import Definitions, Figure, Note, Paragraphs, Section, Table
from medrobust.report.context import ReportContext
from medrobust.report.glance import masking_text
from medrobust.report.names import budget_text, dataset_display_name, norm_of
from medrobust.report.plots import figure_to_data_uri

MAX_GRID_ROWS = 4
MAX_GRID_DEFENCES = 3
MAX_COST_POINTS = 1.0


def _latest_per_key(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The newest run with a summary per (one-pixel run, defence), in first-seen order."""
    chosen: dict[tuple[Any, str], dict[str, Any]] = {}
    for run in runs:
        s = run.get("summary") or {}
        if "label" not in s:
            continue
        chosen[(s.get("source_run"), str(s.get("label")))] = run
    return list(chosen.values())


def _named(rows: list[list[str]]) -> list[list[str]]:
    """Table rows with the dataset cell (first) in the report's display name."""
    return [[dataset_display_name(r[0]), *r[1:]] for r in rows]


def _adaptive_rows(summaries: list[dict[str, Any]]) -> list[list[str]]:
    """``defences.table.adaptive_rows`` in the report's conventions: display names, budgets as
    'Linf 8/255' / 'L2 0.5', and the interval recomputed from k of n (``proportion``)."""
    from medrobust.defences.table import ATTACK_LABELS, adaptive_cells
    from medrobust.metrics.proportion import proportion

    rows = []
    for s in summaries:
        for attack, eps, acc, n, _ci in adaptive_cells(s):
            ci = proportion(round(float(acc) * int(n)), int(n)).ci95 if acc is not None and n \
                else None
            budget = "1 pixel" if attack == "onepixel" else "-" if attack == "clean" else \
                budget_text(norm_of(attack), eps)
            rows.append([dataset_display_name(str(s.get("dataset", "?"))),
                         str(s.get("label", "?")), ATTACK_LABELS[attack], budget,
                         "-" if n is None else str(n),
                         "-" if acc is None else f"{100.0 * float(acc):.1f} %",
                         "-" if ci is None else f"{100 * ci[0]:.0f}-{100 * ci[1]:.0f} %"])
    return rows


def _findings(summaries: list[dict[str, Any]]) -> list[str]:
    """Per dataset: the defence with the best recovery within a 1-point clean-accuracy cost."""
    lines = []
    for data in sorted({str(s.get("dataset")) for s in summaries}):
        shown = dataset_display_name(data)
        group = [s for s in summaries if str(s.get("dataset")) == data and s.get("label") != "none"
                 and s.get("recovery_rate") is not None]
        cheap = [s for s in group if (s.get("clean_accuracy_cost") or 0.0) * 100 <= MAX_COST_POINTS]
        if not group:
            continue
        if not cheap:
            lines.append(f"{shown}: every defence costs more than {MAX_COST_POINTS:g} point of "
                         "clean accuracy.")
            continue
        best = max(cheap, key=lambda s: (s["recovery_rate"], -(s.get("clean_accuracy_cost") or 0)))
        lines.append(f"{shown}: {best['label']} recovers {best['recovered']} of {best['fooled']} "
                     f"fooled images ({100 * best['recovery_rate']:.1f} %) at a clean-accuracy "
                     f"cost of {100 * (best.get('clean_accuracy_cost') or 0):.1f} points.")
    return lines


def _adaptive_findings(summaries: list[dict[str, Any]]) -> list[str]:
    """Per dataset and defence: the strongest evaluation's robust accuracy at the largest
    budget (the ensemble when it ran, else PGD) beside the undefended model's, with n."""
    lines = []
    for data in sorted({str(s.get("dataset")) for s in summaries}):
        group = [s for s in summaries if str(s.get("dataset")) == data]
        base = next((s for s in group if s.get("label") == "none"), None)
        for s in group:
            if s is base:
                continue
            parts = []
            for norm in ("linf", "l2"):
                attack = next((a for a in (f"ensemble-{norm}", f"pgd-{norm}") if s.get(a)), None)
                if attack is None:
                    continue
                curve = s[attack]
                eps = max(curve, key=float)
                n = ((s.get("n") or {}).get(attack) or {}).get(eps)
                ref = ((base or {}).get(attack) or {}).get(eps)
                text = (f"{ATTACK_LABELS[attack].split(' (')[0]} at "
                        f"{budget_text(norm, float(eps))}: {100 * curve[eps]:.1f} %"
                        + (f" of {n}" if n else ""))
                if ref is not None:
                    text += f" (undefended {100 * ref:.1f} %)"
                parts.append(text)
            if s.get("onepixel") is not None:
                ref = (base or {}).get("onepixel")
                parts.append(f"adaptive one-pixel: {100 * s['onepixel']:.1f} %"
                             + (f" (undefended {100 * ref:.1f} %)" if ref is not None else ""))
            if parts:
                lines.append(f"{dataset_display_name(data)}, {s.get('label')}: robust accuracy "
                             + "; ".join(parts) + ".")
    return lines


def _grid(ctx: ReportContext, source_run: int, summaries: list[dict[str, Any]]) -> Figure | Note:
    """The clean / attacked / denoised / difference grid of one one-pixel run."""
    from medrobust.defences.grid import defence_grid_figure
    from medrobust.defences.registry import rebuild_denoiser
    from medrobust.defences.source import attacked_set

    try:
        attacked = attacked_set(ctx.store, ctx.store.get_run(source_run))
        chosen = [j for j, s in enumerate(attacked.status) if s == "success"][:MAX_GRID_ROWS]
        if not chosen:
            return Note(f"Run {source_run} has no successful attacks to show.")
        specs = [s["denoiser"] for s in summaries if (s.get("denoiser") or {}).get("name") != "none"]
        denoisers = [rebuild_denoiser(spec) for spec in specs[:MAX_GRID_DEFENCES]]
        sel = np.asarray(chosen)
        adv = attacked.adversarial[sel]
        names = attacked.dataset.class_names
        titles = [f"#{attacked.indices[j]} {names[attacked.labels[j]]}" for j in sel]
        fig = defence_grid_figure(attacked.clean[sel], adv, {d.name: d.denoise(adv) for d in denoisers},
                                  titles)
    except Exception as exc:  # the table above still stands without the picture
        return Note(f"The image grid of run {source_run} could not be drawn: {exc}", "warning")
    return Figure(figure_to_data_uri(fig, dpi=90),
                  f"One-pixel run {source_run}: clean, attacked and denoised images with their "
                  "differences from the clean image (brighter = larger change, amplified 4x). A "
                  "good defence removes the attack pixel and leaves the rest dark.",
                  alt="defence image grid")


def defence_section(ctx: ReportContext) -> Section | None:
    """Defences against one-pixel attacks, honestly evaluated (including adaptive attacks)."""
    from medrobust.campaigns.adaptive_defence import ADAPTIVE_COMMAND
    from medrobust.campaigns.defence import DEFEND_COMMAND

    defend_runs = _latest_per_key(ctx.runs_of(DEFEND_COMMAND))
    adaptive_runs = _latest_per_key(ctx.runs_of(ADAPTIVE_COMMAND))
    if not defend_runs and not adaptive_runs:
        return None
    section = Section("defences", "Denoising defences: can a filter undo the one-pixel attacks?")
    section.add(Paragraphs([
        "A denoising defence cleans each image before the model sees it. Here every defence is "
        "applied to the images the one-pixel attack fooled, and to all clean test images, "
        "because a filter that blurs everything can undo the attack pixel but also costs "
        "accuracy on ordinary images. PSNR between a clean and a one-pixel image is already very "
        "high, so the recovered accuracy matters more than the image-quality numbers.",
    ]))
    section.add(_defence_definitions())
    _cite_defence_runs(ctx, section, defend_runs + adaptive_runs)
    if defend_runs:
        _add_defend_tables(section, [r["summary"] for r in defend_runs])
    if adaptive_runs:
        _add_adaptive_tables(section, [r["summary"] for r in adaptive_runs])
    for source in sorted({r["summary"].get("source_run") for r in defend_runs}, key=str):
        group = [r["summary"] for r in defend_runs if r["summary"].get("source_run") == source]
        sub = Section(f"defences-run-{source}", f"Images of one-pixel run {source}")
        sub.add(_grid(ctx, int(source), group))
        section.subsections.append(sub)
    return section


def _defence_definitions() -> Definitions:
    """What the defence tables' terms mean."""
    return Definitions([
        ("Fooled", "attacked images the model got wrong after the attack (re-scored)."),
        ("Recovery rate", "share of fooled images the defended model classifies correctly "
                          "again."),
        ("Clean acc", "accuracy on the clean test images without / with the defence; the cost "
                      "is the difference in percentage points."),
        ("Adv acc", "accuracy over all attacked images (failed attacks included) without / with "
                    "the defence."),
        ("PSNR / SSIM / MSE", "similarity to the clean image on the 0-1 scale (PSNR in dB, "
                              "capped at 100; SSIM as scikit-image computes it); 'attacked' "
                              "is before the defence, 'denoised' after. 'PSNR clean->denoised' "
                              "is how much the defence changes clean images."),
        ("Adaptive attack", "an attack run against the defended model itself (denoiser then "
                            "classifier): a fresh one-pixel attack; PGD with gradients "
                            "through the autoencoder or, for filters, BPDA (the filter is "
                            "treated as the identity on the backward pass); Square, a "
                            "black-box search that needs no gradients; and the ensemble."),
        ("Ensemble", "APGD-CE, APGD-T (targeted DLR), Square and the PGD above, AutoAttack "
                     "style: an image is robust only if it survives all of them. Quote this."),
        ("Robust accuracy", "share of images still classified correctly after an attack of the "
                            "given budget (Linf in k/255; L2 on the 0-1 pixel scale), with the "
                            "number of images and a 95 % Wilson interval."),
        ("Gradient masking", "flagged when a defence keeps more than 10 points more accuracy "
                             "under PGD than under Square at the same budget: its gradients "
                             "mislead the attack rather than the defence stopping it."),
    ])


def _cite_defence_runs(ctx: ReportContext, section: Section, runs: list[dict[str, Any]]) -> None:
    """Cite the defence runs, and the denoisers' own training runs, which are shown through
    the defences they became."""
    for run in runs:
        ctx.cite(run["id"], section.anchor, section.title)
    dirs = {str((r["summary"].get("denoiser") or {}).get("dir")) for r in runs}
    for run in ctx.runs_of("train-denoiser"):
        if str((run.get("model") or {}).get("dir")) in dirs:
            ctx.cite(run["id"], section.anchor, section.title)


def _add_defend_tables(section: Section, summaries: list[dict[str, Any]]) -> None:
    """The defences against the recorded attacks: accuracy, image quality, findings."""
    from medrobust.defences.table import (
        ACCURACY_COLUMNS,
        QUALITY_COLUMNS,
        accuracy_rows,
        quality_rows,
    )

    section.add(Table(ACCURACY_COLUMNS, _named(accuracy_rows(summaries)),
                      caption="Defences against the recorded one-pixel attacks: accuracy"))
    section.add(Table(QUALITY_COLUMNS, _named(quality_rows(summaries)),
                      caption="Defences against the recorded one-pixel attacks: image "
                              "quality"))
    findings = _findings(summaries)
    if findings:
        section.add(Paragraphs(findings))


def _add_adaptive_tables(section: Section, summaries: list[dict[str, Any]]) -> None:
    """The attacks that see the defence: robust accuracy, masking warnings, findings."""
    from medrobust.defences.table import adaptive_columns, masking_warnings

    section.add(Table(adaptive_columns(summaries), _adaptive_rows(summaries),
                      caption="Robust accuracy under attacks that see the defence"))
    for warning in masking_warnings(summaries):
        section.add(Note(masking_text(warning), "warning"))
    lines = _adaptive_findings(summaries)
    if lines:
        section.add(Paragraphs(lines))
    section.add(Note("A defence that holds against the recorded attacks but falls to "
                     "adaptive ones only hides the weakness from an attacker who does not "
                     "know it is there; the denoising paper itself names dense and adaptive "
                     "attacks as untested."))
