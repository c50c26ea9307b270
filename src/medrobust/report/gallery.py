"""The gallery: successful one-pixel attacks shown as images, so a reader can see the change.

Images are not stored with results; they are reloaded from the dataset description the run
recorded (``runs.dataset``) and ``dataset_index``, and the adversarial image is rebuilt by writing
the recorded colours at the recorded pixels (as ``OnePixelResult.apply``). The recorded original
colours are checked against the reloaded image, so a dataset that changed since the attack is
flagged instead of silently showing the wrong picture.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medrobust.report.blocks import Card, Gallery, Note, Paragraphs, Section, Table, num
from medrobust.report.context import ReportContext, class_name, class_names
from medrobust.report.plots import display_scale, image_to_data_uri, mark_pixels, zoom_patch
from medrobust.report.sections import run_title

MAX_PER_RUN = 12
ZOOM_RADIUS = 4  # a 9 x 9 neighbourhood


def apply_attack(image: np.ndarray, pixels: list[Any], colours: list[Any]) -> np.ndarray:
    """A copy of uint8 (H, W, C) ``image`` with each (x = column, y = row) set to its colour."""
    out = np.array(image, copy=True)
    for (x, y), colour in zip(pixels, colours, strict=True):
        out[int(y), int(x), :] = colour
    return out


def pick_examples(rows: list[dict[str, Any]], limit: int = MAX_PER_RUN) -> list[dict[str, Any]]:
    """Up to ``limit`` successful attacks, the largest score changes first."""
    ok = [r for r in rows if r.get("status") == "success" and r.get("pixels")]
    ok.sort(key=lambda r: (-abs(r.get("score_change") or 0.0), r.get("dataset_index") or 0))
    return ok[:limit]


def _scores_lines(row: dict[str, Any], names: list[str]) -> list[str]:
    before, after = row.get("original_scores") or [], row.get("final_scores") or []
    if not before or len(before) != len(after):
        return [f"Score {num(row.get('original_score'))} -> {num(row.get('final_score'))}"]
    shown = {int(row["label"])} if row.get("label") is not None else set()
    shown |= {int(np.argmax(before)), int(np.argmax(after))}
    if row.get("target") is not None:
        shown.add(int(row["target"]))
    if len(before) <= 4:
        shown = set(range(len(before)))
    lines = [f"P({class_name(names, i)}): {before[i]:.3f} \u2192 {after[i]:.3f}"
             for i in sorted(shown)]
    lines.append(f"Model's answer: {class_name(names, int(np.argmax(before)))} \u2192 "
                 f"{class_name(names, int(np.argmax(after)))}")
    return lines


def attack_card(row: dict[str, Any], dataset: Any, names: list[str]) -> Card:
    """One example: original, adversarial (pixel circled), 9x9 zooms before and after."""
    index = row.get("dataset_index")
    label = class_name(names, row.get("label"))
    title = f"Image {index} (true class: {label})"
    pixels = [tuple(p) for p in row["pixels"]]
    colours = row.get("colours") or []
    if index is None or not 0 <= int(index) < len(dataset):
        return Card(title, [], [], warning=f"dataset index {index} is not in the reloaded "
                                           f"dataset ({len(dataset)} images)")
    image = dataset.images[int(index)]
    h, w = image.shape[:2]
    if any(not (0 <= x < w and 0 <= y < h) for x, y in pixels):
        return Card(title, [], [], warning=f"pixel outside the reloaded {w}x{h} image")
    adversarial = apply_attack(image, pixels, colours)
    warning = None
    recorded = row.get("original_colours") or []
    if recorded and any(list(image[y, x]) != list(c) for (x, y), c in zip(pixels, recorded,
                                                                            strict=False)):
        warning = ("the reloaded image differs from the attacked one at the attack pixel: "
                   "the dataset may have changed since the attack")
    scale = display_scale(h, w)
    x0, y0 = pixels[0]
    images = [
        ("original", image_to_data_uri(image, scale)),
        ("attacked (pixel circled)", image_to_data_uri(mark_pixels(adversarial, pixels, scale),
                                                       1)),
        ("zoom before", image_to_data_uri(zoom_patch(image, x0, y0, ZOOM_RADIUS), 1)),
        ("zoom after", image_to_data_uri(zoom_patch(adversarial, x0, y0, ZOOM_RADIUS), 1)),
    ]
    colour_text = ", ".join(str(int(v)) for v in colours[0]) if colours else "?"
    was = ", ".join(str(int(v)) for v in recorded[0]) if recorded else "?"
    lines = [f"Pixel x = {x0}, y = {y0}: colour ({colour_text}), was ({was})"
             + (f"; h = {row['h']:.2f}" if row.get("h") is not None else ""),
             *_scores_lines(row, names)]
    if len(pixels) > 1:
        lines.insert(1, f"{len(pixels)} pixels changed; zoom shows the first")
    if row.get("queries") is not None:
        lines.append(f"Found after {row['queries']:,} model queries")
    return Card(title, images, lines, warning)


def _numbers_table(examples: list[dict[str, Any]], names: list[str]) -> Table:
    """The recorded facts of the examples, for when the images cannot be shown."""
    rows = [[num(r.get("dataset_index")), class_name(names, r.get("label")),
             str(r.get("direction")), f"({r.get('x')}, {r.get('y')})",
             str(tuple((r.get("colours") or [[]])[0])), num(r.get("original_score")),
             num(r.get("final_score")), num(r.get("h"))] for r in examples]
    return Table(["Image", "True class", "Direction", "Pixel (x, y)", "Colour",
                  "Score before", "Score after", "h"], rows)


def gallery_section(ctx: ReportContext) -> Section | None:
    """Up to 12 successful attacks per one-pixel run, largest score change first."""
    runs = ctx.onepixel_runs
    if not runs:
        return None
    section = Section("gallery", "Examples of successful attacks")
    section.add(Paragraphs([
        "Each card shows an image the model classified correctly, the same image with one "
        "pixel changed by the attack (circled), and a 9 x 9 pixel close-up of the attacked spot "
        "before and after (the attacked pixel is outlined). Below: the model's probabilities "
        "before -> after. Cards are sorted by the size of the score change.",
    ]))
    for run in runs:
        sub = Section(f"gallery-run-{run['id']}", run_title(run))
        ctx.cite(run["id"], sub.anchor, f"Examples of successful attacks: run {run['id']}")
        names = class_names(run)
        examples = pick_examples(ctx.onepixel_rows(run["id"]))
        if not examples:
            sub.add(Note("No successful attacks in this run, so there is nothing to show."))
            section.subsections.append(sub)
            continue
        dataset, error = ctx.dataset(run)
        if dataset is None:
            sub.add(Note(f"The images of this run could not be reloaded ({error}); the "
                         "recorded numbers of the examples are listed instead.", "warning"))
            sub.add(_numbers_table(examples, names))
        else:
            sub.add(Gallery([attack_card(r, dataset, names) for r in examples]))
        section.subsections.append(sub)
    return section
