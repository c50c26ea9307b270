"""Spatial analysis of one-pixel attacks (Alatalo et al. 2022, tables 1-2 and figures 3-4).

Where do attacks land, and with what colour? Per attack direction we summarise X (column), Y (row)
and the attack colour (R, G, B, or I for greyscale) by mean, median and SD, and count attack
locations on the image grid. A model that is sensitive in the image centre, or only on every
other pixel (a stride-2 artefact), shows it here before any confidence map is computed.

Conventions (METHODS.md section 1): x is the column, y the row, (0, 0) the top-left pixel;
colours are 0..255 in the image's own pixel space. The SD is the SAMPLE standard deviation
(``ddof=1``), so one attack has no SD (None).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

#: Which attacks a statistic covers: only those that reached their goal, or every attacked image
#: (successful plus failed; skipped images were never attacked and have no pixel).
SELECTIONS = ("successful", "attacked")
#: Ddof of every SD reported here: the sample SD, as in the paper's tables.
SD_DDOF = 1
POSITION_COLUMNS = ("X", "Y")


def channel_names(channels: int) -> tuple[str, ...]:
    """Column names for a colour with ``channels`` values: I (greyscale), R G B, or C1..Cn."""
    if channels == 1:
        return ("I",)
    if channels == 3:
        return ("R", "G", "B")
    return tuple(f"C{i + 1}" for i in range(channels))


def attack_points(rows: Iterable[Mapping[str, Any]], all_pixels: bool = False) -> pd.DataFrame:
    """One row per attack (or per attacked pixel) from ``onepixel_results`` rows.

    Skipped images (no pixel) are left out. By default an attack is represented by its first
    pixel (the table's ``x``/``y`` columns), which is the whole attack for one-pixel attacks;
    ``all_pixels`` gives k-pixel attacks one row per pixel. Columns: run_id, item,
    dataset_index, direction, status, success, pixel, X, Y, the colour channels, h,
    original_score, final_score, score_change (the colour columns present depend on the data;
    a channel that an image lacks is NaN).
    """
    records: list[dict[str, Any]] = []
    for row in rows:
        pixels = row.get("pixels") or []
        if row.get("x") is not None and row.get("y") is not None and not pixels:
            pixels = [(row["x"], row["y"])]
        if row.get("status") == "skipped" or not pixels:
            continue
        colours = row.get("colours") or []
        chosen = range(len(pixels)) if all_pixels else range(1)
        for k in chosen:
            x, y = pixels[k]
            rec: dict[str, Any] = {
                "run_id": row.get("run_id"), "item": row.get("item"),
                "dataset_index": row.get("dataset_index"), "direction": row.get("direction"),
                "status": row.get("status"), "success": row.get("status") == "success",
                "pixel": k, "X": int(x), "Y": int(y),
            }
            if k < len(colours):
                colour = list(colours[k])
                rec.update(zip(channel_names(len(colour)), colour, strict=True))
            # h and the scores describe the attack as a whole; for the first pixel only.
            rec["h"] = row.get("h") if k == 0 else None
            for key in ("original_score", "final_score", "score_change"):
                rec[key] = row.get(key)
            records.append(rec)
    frame = pd.DataFrame.from_records(records)
    if frame.empty:
        frame = pd.DataFrame(columns=["run_id", "item", "dataset_index", "direction", "status",
                                      "success", "pixel", "X", "Y", "h", "original_score",
                                      "final_score", "score_change"])
    return frame


def select(points: pd.DataFrame, which: str = "successful") -> pd.DataFrame:
    """The points of successful attacks only, or of every attacked image."""
    if which not in SELECTIONS:
        raise ValueError(f"which must be one of {', '.join(SELECTIONS)}, got {which!r}")
    if which == "attacked" or points.empty:
        return points
    return points[points["success"].astype(bool)]


def colour_columns(points: pd.DataFrame) -> list[str]:
    """The colour columns present in ``points``, in a stable order (I, R, G, B, C1...)."""
    order = ["I", "R", "G", "B"]
    extra = sorted((c for c in points.columns if c.startswith("C") and c[1:].isdigit()),
                   key=lambda c: int(c[1:]))
    return [c for c in order + extra if c in points.columns and points[c].notna().any()]


def describe(values: Sequence[float] | np.ndarray) -> dict[str, float | int | None]:
    """n, mean, median and sample SD (ddof=1) of the finite values; None where undefined."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = int(v.size)
    return {
        "n": n,
        "mean": float(np.mean(v)) if n else None,
        "median": float(np.median(v)) if n else None,
        "sd": float(np.std(v, ddof=SD_DDOF)) if n > SD_DDOF else None,
    }


def spatial_stats(points: pd.DataFrame, which: str = "successful"
                  ) -> dict[str, dict[str, Any]]:
    """Per direction: {"n": attacks, "X"|"Y"|"R"|...: {"n", "mean", "median", "sd"}}.

    The paper's tables 1 and 2 (which used successful, "potentially dangerous" attacks).
    Directions with no selected attack still appear, with n = 0.
    """
    chosen = select(points, which)
    columns = [*POSITION_COLUMNS, *colour_columns(points)]
    out: dict[str, dict[str, Any]] = {}
    for direction in directions(points):
        group = chosen[chosen["direction"] == direction]
        entry: dict[str, Any] = {"n": len(group)}
        for column in columns:
            values = group[column].to_numpy(dtype=np.float64) if column in group else []
            entry[column] = describe(values)
        out[direction] = entry
    return out


def directions(points: pd.DataFrame) -> list[str]:
    """The attack directions present, sorted."""
    if points.empty:
        return []
    return sorted({str(d) for d in points["direction"].dropna()})


def stats_frame(stats: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """Long table (direction, variable, n, mean, median, sd) of ``spatial_stats`` output."""
    records = []
    for direction, entry in stats.items():
        for variable, value in entry.items():
            if isinstance(value, Mapping):
                records.append({"direction": direction, "variable": variable, **value})
    return pd.DataFrame.from_records(
        records, columns=["direction", "variable", "n", "mean", "median", "sd"])


def heatmap_shape(x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray,
                  image_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of the heatmap grid: the image size when known, grown to hold every attack.

    Without an image size the grid is the smallest one holding every attack (max coordinate
    plus one), which under-estimates the image when no attack reached its last row or column.
    """
    h = int(np.max(y)) + 1 if len(y) else 1
    w = int(np.max(x)) + 1 if len(x) else 1
    if image_size is not None:
        h, w = max(h, int(image_size[0])), max(w, int(image_size[1]))
    return h, w


def location_heatmap(x: Sequence[int] | np.ndarray, y: Sequence[int] | np.ndarray,
                     height: int, width: int) -> np.ndarray:
    """int64 (height, width) counts of attacks per pixel, indexed [y, x] like the image."""
    xs = np.asarray(x, dtype=np.int64).reshape(-1)
    ys = np.asarray(y, dtype=np.int64).reshape(-1)
    if xs.shape != ys.shape:
        raise ValueError(f"x and y differ in length ({xs.size} vs {ys.size})")
    outside = (xs < 0) | (xs >= width) | (ys < 0) | (ys >= height)
    if outside.any():
        i = int(np.flatnonzero(outside)[0])
        raise ValueError(f"attack at ({xs[i]}, {ys[i]}) lies outside a {width}x{height} grid")
    counts = np.zeros((height, width), dtype=np.int64)
    np.add.at(counts, (ys, xs), 1)
    return counts


def heatmaps_by_direction(points: pd.DataFrame, height: int, width: int,
                          which: str = "successful") -> dict[str, np.ndarray]:
    """Location counts per direction (directions with no selected attack get zeros)."""
    chosen = select(points, which)
    out = {}
    for direction in directions(points):
        group = chosen[chosen["direction"] == direction]
        out[direction] = location_heatmap(group["X"].to_numpy(), group["Y"].to_numpy(),
                                          height, width)
    return out


def top_pixels(counts: np.ndarray, k: int = 5) -> list[dict[str, int]]:
    """The ``k`` most attacked pixels as {"x", "y", "count"}, most attacked first."""
    flat = counts.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    width = counts.shape[1]
    return [{"x": int(i % width), "y": int(i // width), "count": int(flat[i])}
            for i in order if flat[i] > 0]


def _no_attacks_panel(ax: Any, label: str, h: int, w: int) -> None:
    """An explicit empty panel: the grid outline and "no attacks" (n = 0), no colour bar."""
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.set_facecolor("#f2f2f2")
    ax.text(0.5, 0.5, "no attacks\n(nothing to count)", transform=ax.transAxes,
            ha="center", va="center", fontsize=12, color="#404040")
    ax.set_xlabel("X (column)")
    ax.set_ylabel("Y (row)")
    ax.set_title(f"{label}\n(n = 0)", fontsize=10)


def plot_heatmaps(panels: Sequence[tuple[str, np.ndarray]], path: str | Path,
                  title: str | None = None) -> Path:
    """Save side-by-side location heatmaps (the paper's figs 3-4) with a per-pixel grid.

    Each pixel is one cell (nearest-neighbour, with thin grid lines between pixels), so an
    even/odd checkerboard stays visible instead of being blurred away. Counts are whole
    attacks, so the colour bar has integer ticks only; a panel with no attacks says so in
    words instead of showing an all-black grid that reads like "attacks everywhere at 0".
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, MaxNLocator, MultipleLocator

    n = max(len(panels), 1)
    fig = Figure(figsize=(4.6 * n, 4.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (label, counts) in zip(axes, panels, strict=False):
        h, w = counts.shape
        total = int(counts.sum())
        if total == 0:
            _no_attacks_panel(ax, label, h, w)
            continue
        im = ax.imshow(counts, cmap="magma", interpolation="nearest", origin="upper",
                       vmin=0, vmax=max(int(counts.max()), 1))
        step = 8 if max(h, w) > 32 else 4 if max(h, w) > 12 else 2
        ax.xaxis.set_major_locator(MultipleLocator(step))
        ax.yaxis.set_major_locator(MultipleLocator(step))
        # Pixel borders as two line collections (per-pixel minor ticks are very slow).
        line = {"colors": "#808080", "linewidths": 0.25 if max(h, w) > 32 else 0.5,
                "alpha": 0.6}
        ax.vlines(np.arange(-0.5, w, 1), -0.5, h - 0.5, **line)
        ax.hlines(np.arange(-0.5, h, 1), -0.5, w - 0.5, **line)
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xlabel("X (column)")
        ax.set_ylabel("Y (row)")
        ax.set_title(f"{label}\n(n = {total})", fontsize=10)
        bar = fig.colorbar(im, ax=ax, shrink=0.8, label="attacks per pixel")
        bar.locator = MaxNLocator(integer=True, min_n_ticks=1)
        bar.formatter = FuncFormatter(lambda v, _pos: f"{v:.0f}")
        bar.update_ticks()
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out
