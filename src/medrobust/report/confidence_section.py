"""Report section: exhaustive one-pixel confidence maps (the paper's Figure 5) and their parity."""

from __future__ import annotations

from pathlib import Path

from medrobust.report.blocks import Definitions, Figure, Note, Section, Table, num
from medrobust.report.context import ReportContext
from medrobust.report.plots import png_file_to_data_uri
from medrobust.report.sections import model_label


def parity_cells(parity: dict) -> str:
    """'52 / 2 / 10 / 0 of 64' from a map_parity result (maps stored before ranks: '-')."""
    table = parity.get("top_table")
    if not table:
        return "-"
    (ee, eo), (oe, oo) = table
    return f"{ee} / {eo} / {oe} / {oo} of {parity['top_k']}"


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
        ("most harmful pixels by parity", "the pixels with the lowest min-map score (1/64 "
                                          "of the image), counted by X/Y parity: even/even, "
                                          "even/odd, odd/even, odd/odd. One dominant cell is "
                                          "the checkerboard of a stride-2 layer (25 % each by "
                                          "chance); p tests the even/even count against 25 %"),
    ]))
    for run in runs:
        rows = ctx.store.rows("confidence_maps", run_id=run["id"])
        sub = Section(f"map-run-{run['id']}",
                      f"Run {run['id']}: {model_label(run)}, grid step {run['params'].get('step')}")
        ctx.cite(run["id"], sub.anchor, f"One-pixel confidence maps: run {run['id']}")
        if not rows:
            sub.add(Note("No image of this run has finished yet.", "warning"))
        table = Table(["image", "score", "clean", "lowest", "highest", "verdict",
                       "most harmful pixels by parity (ee / eo / oe / oo)", "p (even/even)"], [])
        for r in rows:
            pm = r["parity_min"] or {}
            verdict = "robust" if r["robust"] else (
                f"broken at ({r['best_x']}, {r['best_y']}), {r['successful_pixels']} px")
            table.rows.append([str(r["dataset_index"]), r["score_name"], num(r["clean_score"], 6),
                               num(r["min_score"], 6), num(r["max_score"], 6), verdict,
                               parity_cells(pm), num(pm.get("top_p_value"), 2)])
        sub.add(table)
        for r in rows:
            if r["figure"] and Path(r["figure"]).is_file():
                sub.add(Figure(png_file_to_data_uri(r["figure"]),
                               f"Image {r['dataset_index']}: image, min, max and mean maps "
                               "(maps on one shared, labelled score scale unless the run "
                               "chose per-map scales).",
                               alt=f"Confidence maps of image {r['dataset_index']}: the image "
                                   "and, per pixel, the lowest, highest and mean score over "
                                   "the colour grid"))
        section.subsections.append(sub)
    return section
