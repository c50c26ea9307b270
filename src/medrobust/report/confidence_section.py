"""Report section: exhaustive one-pixel confidence maps (the paper's Figure 5) and their parity."""

from __future__ import annotations

from pathlib import Path

from medrobust.report.blocks import Definitions, Figure, Note, Section, Table, num
from medrobust.report.context import ReportContext
from medrobust.report.plots import png_file_to_data_uri
from medrobust.report.sections import model_label


def confidence_section(ctx: ReportContext) -> Section | None:
    """One subsection per ``map`` run: verdict table, parity of the min map, and the figures."""
    runs = ctx.runs_of("map")
    if not runs or "confidence_maps" not in ctx.store.tables():
        return None
    section = Section("confidence-maps", "One-pixel confidence maps")
    section.add(Definitions([
        ("min / max map", "for each pixel, the lowest / highest score the model gives when that "
                          "one pixel is recoloured with every colour of the grid"),
        ("robust on this grid", "no pixel and grid colour changes the model's answer"),
        ("even/even mean", "average of the min map over pixels whose x and y are both even; a "
                           "clear gap to the other pixels is the checkerboard of a stride-2 "
                           "first layer"),
    ]))
    for run in runs:
        rows = ctx.store.rows("confidence_maps", run_id=run["id"])
        sub = Section(f"map-run-{run['id']}",
                      f"Run {run['id']}: {model_label(run)}, grid step {run['params'].get('step')}")
        if not rows:
            sub.add(Note("No image of this run has finished yet.", "warning"))
        table = Table(["image", "score", "clean", "lowest", "highest", "verdict",
                       "min map even/even", "min map other"], [])
        for r in rows:
            pm = r["parity_min"] or {}
            verdict = "robust" if r["robust"] else (
                f"broken at ({r['best_x']}, {r['best_y']}), {r['successful_pixels']} px")
            table.rows.append([str(r["dataset_index"]), r["score_name"], num(r["clean_score"], 4),
                               num(r["min_score"], 4), num(r["max_score"], 4), verdict,
                               num(pm.get("even_even_mean"), 4), num(pm.get("other_mean"), 4)])
        sub.add(table)
        for r in rows:
            if r["figure"] and Path(r["figure"]).is_file():
                sub.add(Figure(png_file_to_data_uri(r["figure"]),
                               f"Image {r['dataset_index']}: image, min, max and mean maps"))
        section.subsections.append(sub)
    return section
