"""The one-pixel study (Alatalo et al. 2022, section 3) from results recorded in a run store.

``run_study`` gathers the ``onepixel_results`` rows of one run (or of every one-pixel run,
pooled by attack direction), and writes what the paper reports: the chromatic measure h against
the achieved score change (figs 1-2), X/Y/colour statistics per direction (tables 1-2), location
heatmaps (figs 3-4) and the even/even periodicity test. Tables go out as CSV and Markdown, plots
as PNG, and everything is also returned (and saved as ``study.json``) as one JSON-able dict, which
the CLI prints and the HTML report embeds.

Score change is ``final_score - original_score`` of the score the attack moves: P(positive) for
single-score (sigmoid) models, P(true class) for untargeted and P(target) for targeted attacks on
softmax models. So its sign depends on the attack, and it is analysed per direction.
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu, pearsonr, spearmanr

from medrobust.analysis.periodicity import CHANCE_EVEN_EVEN, chance_even_even, periodicity, plot_parity
from medrobust.analysis.spatial import (
    SD_DDOF,
    attack_points,
    colour_columns,
    directions,
    heatmap_shape,
    heatmaps_by_direction,
    plot_heatmaps,
    select,
    spatial_stats,
    stats_frame,
    top_pixels,
)
from medrobust.errors import MedrobustError
from medrobust.utils.markdown import markdown_table, md_text

if TYPE_CHECKING:
    from medrobust.data.base import ImageDataset
    from medrobust.store import Store

ONEPIXEL_TABLE_NAME = "onepixel_results"
ONEPIXEL_COMMAND = "attack onepixel"

# A report loads the same split for the gallery and for image sizes; keep the last few.
_DATASET_CACHE: dict[str, ImageDataset] = {}
_DATASET_CACHE_SIZE = 3


# -- gathering --------------------------------------------------------------------------------

def onepixel_runs(store: Store, run_id: int | None = None) -> list[dict[str, Any]]:
    """The one-pixel run ``run_id``, or every one-pixel run; MedrobustError if there is none."""
    if run_id is not None:
        run = store.get_run(run_id)
        if run["command"] != ONEPIXEL_COMMAND:
            raise MedrobustError(
                f"run {run_id} is a {run['command']!r} run, not a one-pixel attack run")
        return [run]
    runs = store.runs(ONEPIXEL_COMMAND)
    if not runs:
        raise MedrobustError(
            f"no one-pixel attack runs in {store.path}: run 'medrobust attack onepixel' first")
    return runs


def onepixel_rows(store: Store, runs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every recorded result row of ``runs`` (empty if the results table does not exist)."""
    if ONEPIXEL_TABLE_NAME not in store.tables():
        return []
    rows: list[dict[str, Any]] = []
    for run in runs:
        rows.extend(store.rows(ONEPIXEL_TABLE_NAME, run_id=run["id"]))
    return rows


def load_run_dataset(spec: Mapping[str, Any]) -> ImageDataset:
    """The dataset split a run recorded (``runs.dataset``), reloaded; cached per spec."""
    from medrobust.data import load_from_spec

    key = json.dumps(spec, sort_keys=True, default=str)
    if key not in _DATASET_CACHE:
        if len(_DATASET_CACHE) >= _DATASET_CACHE_SIZE:
            _DATASET_CACHE.pop(next(iter(_DATASET_CACHE)))
        _DATASET_CACHE[key] = load_from_spec(dict(spec))
    return _DATASET_CACHE[key]


def try_load_run_dataset(spec: Mapping[str, Any] | None
                         ) -> tuple[ImageDataset | None, str | None]:
    """(dataset, None), or (None, why not): analysis and reports go on without the images.

    Any failure counts (missing files, a loader that changed, a spec from another version), since
    the images only add to what the stored rows already say.
    """
    if not spec:
        return None, "the run recorded no dataset"
    try:
        return load_run_dataset(spec), None
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"


def run_image_size(run: Mapping[str, Any]) -> tuple[tuple[int, int] | None, str]:
    """(height, width) of a run's images and where it came from.

    Preferred: the reloaded dataset; then an integer ``size`` in the dataset spec (square
    images, as synthetic and MedMNIST record); else None (heatmaps then fall back to the largest
    attacked coordinate).
    """
    spec = run.get("dataset") or {}
    dataset, error = try_load_run_dataset(spec)
    if dataset is not None:
        return dataset.size, "reloaded dataset"
    size = spec.get("size")
    if isinstance(size, int) and size > 0:
        return (size, size), f"dataset spec size (dataset not loadable: {error})"
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return (int(size[0]), int(size[1])), f"dataset spec size (dataset not loadable: {error})"
    return None, f"largest attacked coordinate (dataset not loadable: {error})"


# -- chromatic ---------------------------------------------------------------------------------

def _correlation(fn: Any, a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None]:
    """(statistic, p) of a scipy correlation, or Nones when undefined (n < 3 or constant)."""
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None, None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fn(a, b)
    stat, p = float(result[0]), float(result[1])
    return (stat if math.isfinite(stat) else None), (p if math.isfinite(p) else None)


def chromatic_summary(points: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per direction, over every attacked image with an h: how h relates to the score change.

    n, n_successful, mean/median h (all, successful, failed), mean score change, Pearson r and
    Spearman rho of h with the score change (with p-values), and a two-sided Mann-Whitney U
    p-value for "successful attacks have a different h than failed ones".
    """
    out: dict[str, dict[str, Any]] = {}
    for direction in directions(points):
        group = points[(points["direction"] == direction) & points["h"].notna()]
        h = group["h"].to_numpy(dtype=np.float64)
        change = group["score_change"].to_numpy(dtype=np.float64)
        ok = group["success"].to_numpy(dtype=bool)
        r, r_p = _correlation(pearsonr, h, change)
        rho, rho_p = _correlation(spearmanr, h, change)
        u_p = None
        if ok.any() and (~ok).any():
            u_p = float(mannwhitneyu(h[ok], h[~ok], alternative="two-sided").pvalue)

        def mean(v: np.ndarray) -> float | None:
            return float(np.mean(v)) if v.size else None

        out[direction] = {
            "n": int(h.size), "n_successful": int(ok.sum()),
            "mean_h": mean(h), "median_h": float(np.median(h)) if h.size else None,
            "mean_h_successful": mean(h[ok]), "mean_h_failed": mean(h[~ok]),
            "mean_score_change": mean(change),
            "pearson_r": r, "pearson_p": r_p, "spearman_rho": rho, "spearman_p": rho_p,
            "mannwhitney_p_success_vs_failed": u_p,
        }
    return out


def plot_chromatic(points: pd.DataFrame, path: str | Path, title: str | None = None) -> Path:
    """h against score change, one panel per direction, successful vs failed (figs 1-2)."""
    from matplotlib.figure import Figure

    names = directions(points) or ["(none)"]
    fig = Figure(figsize=(4.6 * len(names), 4.0), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, direction in zip(axes, names, strict=True):
        group = points[(points["direction"] == direction) & points["h"].notna()]
        ok = group["success"].astype(bool)
        for mask, label, colour, marker in ((~ok, "failed", "#7f8c8d", "o"),
                                            (ok, "successful", "#c0392b", "o")):
            sub = group[mask]
            ax.scatter(sub["h"], sub["score_change"], s=18, alpha=0.7, c=colour,
                       marker=marker, edgecolors="none", label=f"{label} ({len(sub)})")
        ax.axhline(0, color="black", linewidth=0.6)
        hmax = float(group["h"].max()) if len(group) else 1.0
        ax.set_xlim(0, min(1.0, hmax * 1.1 + 0.02))
        ax.set_xlabel("h: colour distance to the 8 neighbours (0-1)")
        ax.set_ylabel("score change (final - original)")
        ax.set_title(f"{direction} (n = {len(group)})", fontsize=10)
        ax.legend(fontsize=8, loc="best")
    if title:
        fig.suptitle(title, fontsize=11)
    out = Path(path)
    fig.savefig(out, dpi=110)
    return out


# -- tables -------------------------------------------------------------------------------------

def stats_markdown(stats: Mapping[str, Mapping[str, Any]], heading: str) -> str:
    """Per direction a paper-style table: rows mean/median/SD, columns X, Y and the colours."""
    parts = [f"# {heading}\n", f"SD is the sample standard deviation (ddof={SD_DDOF}).\n"]
    for direction, entry in stats.items():
        variables = [k for k, v in entry.items() if isinstance(v, Mapping)]
        parts.append(f"\n## {md_text(direction)} (n = {entry['n']})\n\n")
        rows = [[label] + [entry[v][key] for v in variables]
                for key, label in (("mean", "mean"), ("median", "median"), ("sd", "SD"))]
        parts.append(markdown_table(["", *variables], rows))
    return "".join(parts)


PERIODICITY_COLUMNS = ("direction", "attacks", "n", "even_even", "share", "expected", "p_value",
                       "ci_low", "ci_high", "x_even_y_even", "x_even_y_odd", "x_odd_y_even",
                       "x_odd_y_odd")
CHROMATIC_COLUMNS = ("direction", "n", "n_successful", "mean_h", "median_h", "mean_h_successful",
                     "mean_h_failed", "mean_score_change", "pearson_r", "pearson_p",
                     "spearman_rho", "spearman_p", "mannwhitney_p_success_vs_failed")


def slug(text: str) -> str:
    """A file-name-safe form of a direction: ``mitosis->normal`` -> ``mitosis_to_normal``."""
    return re.sub(r"[^A-Za-z0-9]+", "_", text.replace("->", "_to_")).strip("_") or "all"


def _jsonable(value: Any) -> Any:
    """Plain JSON types: NumPy scalars unwrapped, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- the study ----------------------------------------------------------------------------------

def run_study(store: Store, out_dir: str | Path, run_id: int | None = None) -> dict[str, Any]:
    """Analyse one one-pixel run (or all of them, pooled per direction); write tables and plots.

    Returns a JSON-able dict with keys runs, image_size, counts, stats (successful / attacked),
    chromatic, periodicity (successful attacks), periodicity_attacked (every attacked image),
    heatmaps, notes and files (absolute paths of everything written to ``out_dir``).
    Raises MedrobustError when there is no one-pixel run or no attacked image to analyse.
    """
    runs = onepixel_runs(store, run_id)
    rows = onepixel_rows(store, runs)
    ids = [int(r["id"]) for r in runs]
    points = attack_points(rows)
    if points.empty:
        raise MedrobustError(
            f"{_runs_text(ids)} in {store.path} recorded no attacked image to analyse "
            f"({len(rows)} result rows, all skipped or none yet)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if len({(r.get("dataset") or {}).get("dataset") for r in runs}) > 1 or len(
            {json.dumps(r.get("model") or {}, sort_keys=True) for r in runs}) > 1:
        notes.append("several models or datasets pooled: directions mix their attacks")
    height, width, size_source, expected = _heatmap_grid(runs, points, notes)

    # Statistics.
    stats = {which: spatial_stats(points, which) for which in ("successful", "attacked")}
    chromatic = chromatic_summary(points)
    period = {which: _periodicity_of(points, which, expected)
              for which in ("successful", "attacked")}
    maps = {which: heatmaps_by_direction(points, height, width, which)
            for which in ("successful", "attacked")}

    files = _write_tables(out, points, stats, period, chromatic, expected)
    heat_info = _write_plots(out, points, maps, period, _runs_text(ids), files)
    result = {
        "runs": ids,
        "store": str(store.path),
        "out_dir": str(out.resolve()),
        "image_size": {"height": height, "width": width, "source": size_source},
        "counts": _counts(rows, points),
        "colour_columns": colour_columns(points),
        "stats": {"sd": f"sample standard deviation (ddof={SD_DDOF})", **stats},
        "chromatic": chromatic,
        "periodicity": period["successful"],
        "periodicity_attacked": period["attacked"],
        "heatmaps": heat_info,
        "notes": notes,
    }
    files.append(out / "study.json")
    result["files"] = [str(f.resolve()) for f in files]
    result = _jsonable(result)
    files[-1].write_text(json.dumps(result, indent=2, sort_keys=True))
    return result


def _runs_text(ids: list[int]) -> str:
    """'run 3' or 'runs 3, 4', for messages and plot titles."""
    return f"run {ids[0]}" if len(ids) == 1 else f"runs {', '.join(map(str, ids))}"


def _heatmap_grid(runs: list[dict[str, Any]], points: pd.DataFrame, notes: list[str]
                  ) -> tuple[int, int, str, float]:
    """Image size for the heatmap grid (height, width, where it came from) and the exact chance
    level of even/even; runs of different sizes add a note."""
    sizes = [run_image_size(r) for r in runs]
    known = [s for s, _ in sizes if s is not None]
    size = (max(s[0] for s in known), max(s[1] for s in known)) if known else None
    height, width = heatmap_shape(points["X"].to_numpy(), points["Y"].to_numpy(), size)
    size_source = "; ".join(sorted({src for _, src in sizes}))
    if len(set(known)) > 1:
        notes.append(f"runs have different image sizes {sorted(set(known))}: heatmaps use "
                     f"{height}x{width}")
    expected = chance_even_even(height, width) if size is not None else CHANCE_EVEN_EVEN
    return height, width, size_source, expected


def _periodicity_of(points: pd.DataFrame, which: str, expected: float
                    ) -> dict[str, dict[str, Any]]:
    """The even/even test per direction over the ``which`` attacks."""
    chosen = select(points, which)
    out = {}
    for d in directions(points):
        g = chosen[chosen["direction"] == d]
        out[d] = periodicity(g["X"].to_numpy(), g["Y"].to_numpy(), expected)
    return out


def _write_tables(out: Path, points: pd.DataFrame, stats: dict[str, Any],
                  period: dict[str, dict[str, dict[str, Any]]],
                  chromatic: dict[str, dict[str, Any]], expected: float) -> list[Path]:
    """The statistics, periodicity and chromatic tables (CSV and Markdown) and the attack
    points; the files written, in order."""
    files: list[Path] = []
    for which in ("successful", "attacked"):
        frame = stats_frame(stats[which])
        files.append(out / f"stats_{which}.csv")
        frame.to_csv(files[-1], index=False)
        files.append(out / f"stats_{which}.md")
        files[-1].write_text(stats_markdown(
            stats[which], f"X, Y and colour of {which} attacks per direction"))
    period_rows = [[d, which, *(p[c] for c in PERIODICITY_COLUMNS[2:])]
                   for which in ("successful", "attacked") for d, p in period[which].items()]
    files.append(out / "periodicity.csv")
    pd.DataFrame(period_rows, columns=list(PERIODICITY_COLUMNS)).to_csv(files[-1], index=False)
    files.append(out / "periodicity.md")
    files[-1].write_text(
        "# Even/even periodicity of attack locations\n\n"
        f"Share of attacks with X and Y both even; chance = {expected:.4f}. p: exact two-sided "
        "binomial test against chance; ci: exact 95 % interval of the share.\n\n"
        + markdown_table(PERIODICITY_COLUMNS, period_rows))
    chrom_rows = [[d, *(c[k] for k in CHROMATIC_COLUMNS[1:])] for d, c in chromatic.items()]
    files.append(out / "chromatic.csv")
    pd.DataFrame(chrom_rows, columns=list(CHROMATIC_COLUMNS)).to_csv(files[-1], index=False)
    files.append(out / "chromatic.md")
    files[-1].write_text(
        "# Chromatic distance h and score change\n\n"
        "h: RMS difference (0-1 scale) between the attack colour and the mean colour of the "
        "pixel's 8 neighbours in the original image. Correlations are of h with the score "
        "change over every attacked image of the direction.\n\n"
        + markdown_table(CHROMATIC_COLUMNS, chrom_rows))
    files.append(out / "attacks.csv")
    points.to_csv(files[-1], index=False)
    return files


def _write_plots(out: Path, points: pd.DataFrame, maps: dict[str, dict[str, np.ndarray]],
                 period: dict[str, dict[str, dict[str, Any]]], run_label: str,
                 files: list[Path]) -> dict[str, dict[str, Any]]:
    """The chromatic plot, per direction the heatmap counts (CSV) and plot, and the parity
    plot, appended to ``files``; what the result says of each direction's heatmaps."""
    files.append(plot_chromatic(points, out / "chromatic.png",
                                f"Colour distance h vs score change ({run_label})"))
    heat_info: dict[str, dict[str, Any]] = {}
    for d in directions(points):
        s = slug(d)
        files.append(out / f"heatmap_{s}.csv")
        np.savetxt(files[-1], maps["successful"][d], fmt="%d", delimiter=",")
        files.append(plot_heatmaps(
            [(f"{d}: successful", maps["successful"][d]),
             (f"{d}: all attacked", maps["attacked"][d])],
            out / f"heatmap_{s}.png", f"Where the attack pixels are ({run_label})"))
        heat_info[d] = {
            "successful": int(maps["successful"][d].sum()),
            "attacked": int(maps["attacked"][d].sum()),
            "top_successful": top_pixels(maps["successful"][d]),
            "png": str(files[-1].resolve()), "csv": str(files[-2].resolve()),
        }
    files.append(plot_parity(period["successful"], out / "parity.png",
                             f"X/Y parity of successful attacks ({run_label})"))
    return heat_info


def _counts(rows: list[dict[str, Any]], points: pd.DataFrame) -> dict[str, Any]:
    """How many result rows, skipped, attacked and successful images (overall, per direction)."""
    return {
        "rows": len(rows),
        "skipped": sum(1 for r in rows if r.get("status") == "skipped"),
        "attacked": len(points),
        "successful": int(points["success"].astype(bool).sum()),
        "by_direction": {d: {"attacked": int((points["direction"] == d).sum()),
                             "successful": int(((points["direction"] == d)
                                                & points["success"].astype(bool)).sum())}
                         for d in directions(points)},
    }
