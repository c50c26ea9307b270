"""The one-pixel paper's findings (b) and (c), reproduced where one-pixel attacks succeed.

Alatalo et al. 2022 report, for one-pixel attacks on a sigmoid mitosis detector: (b) successful
attacks change the pixel's colour more (larger h, the RMS distance between the attack colour and
the mean of its 8 neighbours) and more effective attacks go with larger h; (c) successful attacks
sit at the image centre (their tables 1-2: mean X, Y near 32, SD 8-11 px at 64x64).

On BCCD cells one pixel almost never moves the paper's mitosisnet (1 of 119 cells in
benchmarks/paper_checkerboard.py; 0 of 7 WBC cells here even for a 2-epoch width-4 net, and 0 of
7 at 32x32 or with 3 pixels), so the study runs where attacks do succeed: the same network
(mitosisnet, Keras padding, one sigmoid output = P(pneumonia), the checkerboard benchmark's 10
epochs, the CLI's default width and augmentation; not weakened on purpose) trained on
PneumoniaMNIST (28x28 greyscale chest X-rays), attacked with the paper's budget (population 400,
up to 100 generations, DE/rand/1, F = 0.5) and its partial success thresholds (pneumonia->normal
below 0.9, normal->pneumonia above 0.1), one pixel, on every image of the test and validation
splits (images already past the threshold are recorded as skipped, as the CLI does).

    python benchmarks/onepixel_findings.py            # full run (about 40 min on 2 busy cores)
    python benchmarks/onepixel_findings.py --quick    # a couple of minutes, smoke test

The model is cached under benchmarks/.cache/onepixel_findings/, the attacks go into a store there
(a killed run resumes where it stopped), and medrobust's study (analysis/study.py) runs on the
store. What the study does not compute (the Mann-Whitney U statistic, one-sided tests, the
correlation with the effectiveness |score change|, any test of "at the centre") is computed here
from the same attack points. Results: benchmarks/results/onepixel_findings{,_quick}.{json,md} and
the study's tables and plots under benchmarks/results/onepixel_findings{,_quick}/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from common import (
    BENCH_DIR,
    DEFAULT_CACHE,
    SHARED_DATA,
    cached_model,
    git_commit,
    machine_info,
    markdown_table,
    set_threads,
    write_json,
)
from scipy.stats import mannwhitneyu, pearsonr, spearmanr, ttest_1samp, wilcoxon

from medrobust.analysis.spatial import attack_points
from medrobust.analysis.study import onepixel_rows, onepixel_runs, run_study
from medrobust.attacks import OnePixel
from medrobust.campaigns.onepixel import ONEPIXEL_TABLE, run_onepixel_campaign
from medrobust.data import load_dataset
from medrobust.store import Store

ROOT = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"

#: The paper's tables 1-2 (64x64 RGB patches): n, X mean / SD, Y mean / SD.
PAPER = {
    "pos2neg": {"name": "mitosis-to-normal", "n": 3871, "X": (32.40, 8.2), "Y": (29.30, 8.59)},
    "neg2pos": {"name": "normal-to-mitosis", "n": 319, "X": (31.55, 10.54), "Y": (31.15, 10.77)},
}
PAPER_SIZE = 64

FULL = {
    "dataset": "pneumoniamnist", "size": 28, "channels": 1, "classes": ["normal", "pneumonia"],
    "splits": ["test", "val"], "limit": None,
    "model": "mitosisnet", "padding": "keras (the model's default)", "width": 16, "epochs": 10,
    "augment": "auto (the trainer's default)", "train_seed": 0,
    "pixels": 1, "population": 400, "generations": 100, "f": 0.5, "crossover": None,
    "strategy": "rand1", "init": "normal", "thresholds": [0.9, 0.1], "engine": "fast",
    "attack_seed": 0, "monte_carlo_draws": 20000, "analysis_seed": 0,
}
QUICK = {**FULL, "splits": ["test"], "limit": 24, "epochs": 2, "population": 100,
         "generations": 10, "monte_carlo_draws": 2000}


# --- campaign ----------------------------------------------------------------------------------
def run_campaigns(s: dict[str, Any], data_dir: Path, cache: Path, store: Store) -> dict[str, Any]:
    clf, model = cached_model(s["dataset"], data_dir, cache_dir=cache / "models",
                              model=s["model"], width=s["width"], epochs=s["epochs"],
                              seed=s["train_seed"])
    if clf.head != "sigmoid":
        raise SystemExit(f"expected a sigmoid model, got a {clf.head} head")
    attack = OnePixel(clf, pixels=s["pixels"], population=s["population"],
                      generations=s["generations"], f=s["f"], crossover=s["crossover"],
                      strategy=s["strategy"], init=s["init"], threshold=tuple(s["thresholds"]),
                      engine=s["engine"], seed=s["attack_seed"])
    campaigns = {}
    for split in s["splits"]:
        ds = load_dataset(s["dataset"], split, data_dir=str(data_dir))
        n = len(ds) if s["limit"] is None else min(len(ds), s["limit"])
        print(f"[onepixel_findings] attacking {n} {split} images", flush=True)
        out = run_onepixel_campaign(store, clf, model["checkpoint"], ds, attack,
                                    list(range(n)), show_progress=True)
        rows = store.rows(ONEPIXEL_TABLE, run_id=out.run_id)
        campaigns[split] = {"run_id": out.run_id, "resumed": out.resumed,
                            "attack_seconds_from_store": round(attack_seconds(rows), 1),
                            "computed_now": out.computed_now,
                            "seconds_this_session": round(out.seconds, 1),
                            "summary": out.summary}
    model["checkpoint"] = rel(model["checkpoint"])
    return {"model": model, "campaigns": campaigns}


def attack_seconds(rows: list[dict[str, Any]], batch: int = 32) -> float:
    """Attack time of a campaign from its stored rows: per batch of ``batch`` images (the
    campaign's default chunk, in dataset order) the slowest image's seconds (each image's
    seconds count from its batch's start), summed. Exact for a run done in one session."""
    done = sorted((r["dataset_index"], r["seconds"] or 0.0) for r in rows)
    return float(sum(max(s for _, s in done[i:i + batch]) for i in range(0, len(done), batch)))


# --- statistics the study does not compute -----------------------------------------------------
def _num(v: Any) -> float | None:
    return None if v is None or not math.isfinite(float(v)) else float(v)


def _corr(fn: Any, a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"r": None, "p": None, "n": int(a.size)}
    res = fn(a, b)
    return {"r": _num(res[0]), "p": _num(res[1]), "n": int(a.size)}


def chromatic_tests(g: pd.DataFrame, kind: str) -> dict[str, Any]:
    """Finding (b) for one direction: h of successful vs failed, h vs effectiveness."""
    g = g[g["h"].notna()]
    h = g["h"].to_numpy(float)
    ok = g["success"].to_numpy(bool)
    change = g["score_change"].to_numpy(float)
    # effectiveness: how far the score moved towards the attack's goal
    effect = -change if kind == "pos2neg" else change
    out: dict[str, Any] = {
        "n": int(h.size), "n_successful": int(ok.sum()), "n_failed": int((~ok).sum()),
        "h_successful": {"mean": _num(h[ok].mean()) if ok.any() else None,
                         "median": _num(np.median(h[ok])) if ok.any() else None,
                         "sd": _num(h[ok].std(ddof=1)) if ok.sum() > 1 else None},
        "h_failed": {"mean": _num(h[~ok].mean()) if (~ok).any() else None,
                     "median": _num(np.median(h[~ok])) if (~ok).any() else None,
                     "sd": _num(h[~ok].std(ddof=1)) if (~ok).sum() > 1 else None},
    }
    if ok.any() and (~ok).any():
        two = mannwhitneyu(h[ok], h[~ok], alternative="two-sided")
        greater = mannwhitneyu(h[ok], h[~ok], alternative="greater")
        out["mannwhitney"] = {
            "U": float(two.statistic), "p_two_sided": float(two.pvalue),
            "p_greater": float(greater.pvalue),
            "common_language_effect": float(two.statistic) / (ok.sum() * (~ok).sum()),
            "note": "U of successful vs failed; P(h_successful > h_failed) = U / (n1 n2)"}
    out["h_vs_score_change"] = {"pearson": _corr(pearsonr, h, change),
                                "spearman": _corr(spearmanr, h, change)}
    out["h_vs_effectiveness"] = {"pearson": _corr(pearsonr, h, effect),
                                 "spearman": _corr(spearmanr, h, effect)}
    out["h_vs_effectiveness_successful_only"] = {
        "pearson": _corr(pearsonr, h[ok], effect[ok]),
        "spearman": _corr(spearmanr, h[ok], effect[ok])}
    return out


def _mc_sd(n_axis: int, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """Sample SDs of ``n`` coordinates drawn uniformly from 0..n_axis-1, ``draws`` times."""
    out = []
    for start in range(0, draws, 1000):
        k = min(1000, draws - start)
        out.append(rng.integers(0, n_axis, size=(k, n)).std(axis=1, ddof=1))
    return np.concatenate(out)


def _mc_radius(h: int, w: int, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    cx, cy = (w - 1) / 2, (h - 1) / 2
    out = []
    for start in range(0, draws, 1000):
        k = min(1000, draws - start)
        xs = rng.integers(0, w, size=(k, n))
        ys = rng.integers(0, h, size=(k, n))
        out.append(np.hypot(xs - cx, ys - cy).mean(axis=1))
    return np.concatenate(out)


def centre_tests(g: pd.DataFrame, size: tuple[int, int], draws: int, seed: int) -> dict[str, Any]:
    """Finding (c) for one direction: where successful attacks sit relative to the centre."""
    h, w = size
    rng = np.random.default_rng(seed)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    ok = g["success"].to_numpy(bool)
    succ, fail = g[ok], g[~ok]
    out: dict[str, Any] = {"centre": {"X": cx, "Y": cy}, "n_successful": int(ok.sum()),
                           "n_failed": int((~ok).sum())}
    for axis, c, n_axis in (("X", cx, w), ("Y", cy, h)):
        v = succ[axis].to_numpy(float)
        entry: dict[str, Any] = {"uniform_sd": math.sqrt((n_axis ** 2 - 1) / 12)}
        if v.size >= 2:
            sd = float(v.std(ddof=1))
            sims = _mc_sd(n_axis, v.size, draws, rng)
            wil = wilcoxon(v - c)
            t = ttest_1samp(v, c)
            entry.update({
                "mean": float(v.mean()), "median": float(np.median(v)), "sd": sd,
                "mean_minus_centre": float(v.mean() - c),
                "wilcoxon_vs_centre": {"W": float(wil.statistic), "p": float(wil.pvalue)},
                "t_test_vs_centre": {"t": float(t.statistic), "p": float(t.pvalue)},
                "sd_relative_to_size": sd / n_axis,
                "sd_below_uniform_p": float((1 + (sims <= sd).sum()) / (1 + sims.size)),
            })
        fv = fail[axis].to_numpy(float)
        if fv.size >= 2:
            entry["failed_mean"], entry["failed_sd"] = float(fv.mean()), float(fv.std(ddof=1))
        out[axis] = entry
    r_s = np.hypot(succ["X"].to_numpy(float) - cx, succ["Y"].to_numpy(float) - cy)
    r_f = np.hypot(fail["X"].to_numpy(float) - cx, fail["Y"].to_numpy(float) - cy)
    radial: dict[str, Any] = {"mean_successful": _num(r_s.mean()) if r_s.size else None,
                              "mean_failed": _num(r_f.mean()) if r_f.size else None}
    if r_s.size:
        sims = _mc_radius(h, w, r_s.size, draws, rng)
        radial["mean_uniform"] = float(sims.mean())
        radial["closer_than_uniform_p"] = float((1 + (sims <= r_s.mean()).sum())
                                                / (1 + sims.size))
    if r_s.size and r_f.size:
        mw = mannwhitneyu(r_s, r_f, alternative="two-sided")
        radial["mannwhitney_successful_vs_failed"] = {"U": float(mw.statistic),
                                                      "p_two_sided": float(mw.pvalue)}
    out["distance_to_centre"] = radial
    return out


def verdict_b(c: dict[str, Any], alpha: float = 0.05) -> str:
    mw = c.get("mannwhitney")
    eff = c["h_vs_effectiveness"]["spearman"]
    if mw is None or eff["r"] is None:
        return "cannot judge (no successful or no failed attacks)"
    sig = mw["p_two_sided"] < alpha
    larger = c["h_successful"]["mean"] > c["h_failed"]["mean"]
    corr_sig = eff["p"] < alpha
    part1 = ("successful attacks have significantly larger h" if sig and larger else
             "successful attacks have significantly SMALLER h (the opposite)" if sig else
             "h of successful and failed attacks does not differ significantly")
    part2 = ("h correlates positively with effectiveness" if corr_sig and eff["r"] > 0 else
             "h correlates NEGATIVELY with effectiveness (the opposite)" if corr_sig else
             "no significant correlation of h with effectiveness")
    both = sig and larger, corr_sig and eff["r"] > 0
    word = ("reproduces" if all(both) else "reproduces in part" if any(both)
            else "does not reproduce")
    return (f"{word} the paper: {part1} (mean {c['h_successful']['mean']:.3f} vs "
            f"{c['h_failed']['mean']:.3f}, Mann-Whitney p {mw['p_two_sided']:.2g}); {part2} "
            f"(Spearman rho {eff['r']:.3f}, p {eff['p']:.2g})")


def verdict_c(c: dict[str, Any], size: tuple[int, int], alpha: float = 0.05) -> str:
    """'At the centre': mean within 10 % of the image side of the centre on both axes, and the
    spread significantly below that of uniformly placed pixels (Monte Carlo SD test)."""
    x, y = c["X"], c["Y"]
    if "sd" not in x or "sd" not in y:
        return "cannot judge (fewer than 2 successful attacks)"
    off = [f"{a} mean {v['mean']:.1f} vs centre {c['centre'][a]} ({v['mean_minus_centre']:+.1f} px)"
           for a, v, side in (("X", x, size[1]), ("Y", y, size[0]))
           if abs(v["mean_minus_centre"]) > 0.1 * side]
    tight = x["sd_below_uniform_p"] < alpha and y["sd_below_uniform_p"] < alpha
    rel = (f"SD/side X {x['sd_relative_to_size']:.3f}, Y {y['sd_relative_to_size']:.3f}; "
           "paper 0.13-0.17, uniform 0.29")
    r = c["distance_to_centre"]
    mw = (r.get("mannwhitney_successful_vs_failed") or {}).get("p_two_sided")
    vs_failed = ("" if mw is None else
                 f"; successful vs failed attacks' distance to the centre "
                 f"{r['mean_successful']:.2f} vs {r['mean_failed']:.2f} px (Mann-Whitney p "
                 f"{mw:.2g})")
    if tight and not off:
        return f"reproduces the paper: centred (within 10 % of the side) and concentrated ({rel}){vs_failed}"
    if tight:
        return (f"reproduces in part: concentrated ({rel}) but off-centre: {'; '.join(off)}"
                f"{vs_failed}")
    if not off:
        return (f"does not reproduce the paper: mean near the centre but spread like uniformly "
                f"placed pixels ({rel}){vs_failed}")
    return f"does not reproduce the paper: off-centre and not concentrated ({rel}){vs_failed}"


# --- plots -------------------------------------------------------------------------------------
def plot_h(points: pd.DataFrame, path: Path) -> Path:
    from matplotlib.figure import Figure

    names = sorted(points["direction"].dropna().unique())
    fig = Figure(figsize=(4.8 * len(names), 3.8), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    bins = np.linspace(0, 1, 41)
    for ax, d in zip(axes, names, strict=True):
        g = points[(points["direction"] == d) & points["h"].notna()]
        ok = g["success"].astype(bool)
        for mask, label, colour in ((~ok, "failed", "#7f8c8d"), (ok, "successful", "#c0392b")):
            v = g.loc[mask, "h"].to_numpy(float)
            ax.hist(v, bins=bins, alpha=0.6, color=colour, density=True,
                    label=f"{label} (n={v.size}, mean {v.mean():.3f})" if v.size else label)
        ax.set_xlabel("h: colour distance to the 8 neighbours (0-1)")
        ax.set_ylabel("density")
        ax.set_title(d, fontsize=10)
        ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return path


# --- report ------------------------------------------------------------------------------------
def rel(p: str | Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(ROOT))
    except ValueError:
        return str(p)


def _f(v: Any, fmt: str = ".3f") -> str:
    return "-" if v is None else format(v, fmt)


def _p(v: Any) -> str:
    return "-" if v is None else f"{v:.2g}"


def markdown(res: dict[str, Any], cmd: str) -> str:
    s, size = res["settings"], (res["study"]["image_size"]["height"],
                                 res["study"]["image_size"]["width"])
    m = res["model"]
    lines = [f"# The one-pixel paper's findings (b) and (c) on {s['dataset']}", "",
             f"Command: `{cmd}`; commit {res['commit']}; {res['wall_seconds'] / 60:.1f} min "
             f"wall time this session on {res['machine']['cpu']} "
             f"({res['machine']['logical_cores']} cores, shared; torch threads "
             f"{res['machine']['torch_threads']}); attack time from the store: "
             + ", ".join(f"{k} {v['attack_seconds_from_store'] / 60:.1f} min"
                         for k, v in res["campaigns"].items())
             + f"; model training {m['train_seconds'] / 60:.1f} min (cached).", "",
             "## Summary", "",
             f"The paper's network (mitosisnet, Keras padding, one sigmoid output; "
             f"{s['epochs']} epochs, not weakened) on {s['dataset']} {s['size']}x{s['size']} "
             f"(test accuracy {_f(m['test_accuracy'])}), {s['pixels']}-pixel DE at the paper's "
             f"budget and partial thresholds ({s['thresholds'][0]} / {s['thresholds'][1]}), "
             f"{' + '.join(s['splits'])} splits: {res['total']['attacked']} images attacked, "
             f"{res['total']['successful']} successful (partial). Finding (b), h:", "",
             *[f"- {d}: {v}" for d, v in res["verdicts"]["b"].items()], "",
             "Finding (c), centre:", "",
             *[f"- {d}: {v}" for d, v in res["verdicts"]["c"].items()], "",
             "## Setting", "",
             markdown_table(["setting", "value"], [
                 ["data", f"{s['dataset']} {s['size']}x{s['size']}, {s['channels']} channel, "
                          f"classes {' / '.join(s['classes'])} (positive = {s['classes'][1]})"],
                 ["attacked splits", ", ".join(s["splits"]) + (
                     "" if s["limit"] is None else f" (first {s['limit']} images)")],
                 ["model", f"{s['model']}, padding {s['padding']}, width {s['width']}, one "
                           f"sigmoid output"],
                 ["training", f"{s['epochs']} epochs, augmentation {s['augment']}, seed "
                              f"{s['train_seed']}, best epoch {m['best_epoch']}"],
                 ["test accuracy / AUC", f"{_f(m['test_accuracy'])} / {_f(m['test_auc'])}"],
                 ["attack", f"{s['pixels']} pixel, DE/{s['strategy']}, F {s['f']}, crossover "
                            f"{s['crossover'] or 'none'}, init {s['init']}, population "
                            f"{s['population']}, up to {s['generations']} generations, engine "
                            f"{s['engine']}, seed {s['attack_seed']}"],
                 ["success (paper's partial)", f"{s['classes'][1]}->{s['classes'][0]} below "
                  f"{s['thresholds'][0]}, {s['classes'][0]}->{s['classes'][1]} above "
                  f"{s['thresholds'][1]}; images already past it are skipped"],
                 ["Monte Carlo draws (centre tests)", f"{s['monte_carlo_draws']} "
                                                      f"(seed {s['analysis_seed']})"],
             ]), "", "## Attacks", ""]
    rows = []
    for d, c in res["counts"].items():
        rows.append([d, res["paper_names"][d], c["attacked"], c["successful"],
                     f"{c['successful'] / c['attacked']:.1%}" if c["attacked"] else "-",
                     c["flipped"], c["skipped"]])
    lines += [markdown_table(["direction", "paper's analogue", "attacked", "successful (partial)",
                              "rate", "flipped (crossed 0.5)", "skipped"], rows), ""]
    lines += ["## Finding (b): colour distance h", "",
              "h over every attacked image with a pixel. Effectiveness = score change towards the "
              "goal (-change for pneumonia->normal, +change for normal->pneumonia). The study's "
              "own correlations are of h with the signed score change (final - original).", ""]
    rows = []
    for d, c in res["chromatic"].items():
        mw = c.get("mannwhitney") or {}
        e, sc = c["h_vs_effectiveness"], c["h_vs_score_change"]
        rows.append([d, c["n_successful"], c["n_failed"], _f(c["h_successful"]["mean"]),
                     _f(c["h_failed"]["mean"]), _f(mw.get("U"), ".0f"),
                     _p(mw.get("p_two_sided")), _p(mw.get("p_greater")),
                     f"{_f(sc['pearson']['r'])} (p {_p(sc['pearson']['p'])})",
                     f"{_f(sc['spearman']['r'])} (p {_p(sc['spearman']['p'])})",
                     f"{_f(e['pearson']['r'])} (p {_p(e['pearson']['p'])})",
                     f"{_f(e['spearman']['r'])} (p {_p(e['spearman']['p'])})"])
    lines += [markdown_table(["direction", "n succ.", "n failed", "mean h succ.",
                              "mean h failed", "Mann-Whitney U", "p (two-sided)",
                              "p (succ. > failed)", "Pearson r (h, change)",
                              "Spearman rho (h, change)", "Pearson r (h, effectiveness)",
                              "Spearman rho (h, effectiveness)"], rows), ""]
    rows = []
    for d, c in res["chromatic"].items():
        e = c["h_vs_effectiveness_successful_only"]
        rows.append([d, c["n_successful"], f"{_f(e['pearson']['r'])} (p {_p(e['pearson']['p'])})",
                     f"{_f(e['spearman']['r'])} (p {_p(e['spearman']['p'])})"])
    lines += ["Among successful attacks only:", "",
              markdown_table(["direction", "n", "Pearson r (h, effectiveness)",
                              "Spearman rho (h, effectiveness)"], rows), ""]
    lines += [f"- **{d}**: {v}" for d, v in res["verdicts"]["b"].items()]
    lines += ["", "## Finding (c): where successful attacks sit", "",
              f"Image {size[1]}x{size[0]}, centre ({res['centre']['X']}, {res['centre']['Y']}); "
              f"uniformly placed pixels would have SD {res['uniform_sd']:.2f} px "
              f"({res['uniform_sd'] / size[1]:.3f} of the side). The paper (64x64): SD 8.2-10.8 "
              "px = 0.13-0.17 of the side. medrobust's study reports mean / median / SD but no "
              "test; the tests here: Wilcoxon signed-rank of X - centre (is the mean at the "
              "centre?), a Monte Carlo test that the SD is below that of uniformly placed pixels "
              "(concentration), and Mann-Whitney U of the distance to the centre, successful vs "
              "failed attacks' best pixels.", ""]
    rows = []
    for d, c in res["centre_tests"].items():
        pp = PAPER[res["kinds"][d]]
        for axis in ("X", "Y"):
            a = c[axis]
            rows.append([d, axis, c["n_successful"], _f(a.get("mean"), ".2f"),
                         _f(a.get("median"), ".1f"), _f(a.get("sd"), ".2f"),
                         _f(a.get("sd_relative_to_size"), ".3f"),
                         f"{pp['X' if axis == 'X' else 'Y'][0]:.2f} / "
                         f"{pp[axis][1]:.2f} ({pp[axis][1] / PAPER_SIZE:.3f})",
                         _p((a.get("wilcoxon_vs_centre") or {}).get("p")),
                         _p(a.get("sd_below_uniform_p")),
                         f"{_f(a.get('failed_mean'), '.2f')} / {_f(a.get('failed_sd'), '.2f')}"])
    lines += [markdown_table(["direction", "axis", "n succ.", "mean", "median", "SD", "SD / side",
                              "paper mean / SD (SD / side)", "Wilcoxon p (mean = centre)",
                              "p (SD < uniform)", "failed: mean / SD"], rows), ""]
    rows = []
    for d, c in res["centre_tests"].items():
        r = c["distance_to_centre"]
        mw = r.get("mannwhitney_successful_vs_failed") or {}
        rows.append([d, _f(r.get("mean_successful"), ".2f"), _f(r.get("mean_failed"), ".2f"),
                     _f(r.get("mean_uniform"), ".2f"), _p(r.get("closer_than_uniform_p")),
                     _f(mw.get("U"), ".0f"), _p(mw.get("p_two_sided"))])
    lines += [markdown_table(["direction", "mean distance to centre: succ.", "failed",
                              "uniform", "p (succ. closer than uniform)",
                              "Mann-Whitney U (succ. vs failed)", "p"], rows), ""]
    lines += [f"- **{d}**: {v}" for d, v in res["verdicts"]["c"].items()]
    lines += ["", "## The study's tables (medrobust analysis/study.py, as they come out)", ""]
    st = res["study"]
    for d, e in st["stats"]["successful"].items():
        cols = [k for k, v in e.items() if isinstance(v, dict)]
        lines += [f"Successful attacks, {d} (n = {e['n']}; SD ddof = 1):", "",
                  markdown_table(["", *cols], [[lab] + [e[k][key] for k in cols] for key, lab in
                                               (("mean", "mean"), ("median", "median"),
                                                ("sd", "SD"))]), ""]
    rows = [[d, c["n"], c["n_successful"], c["mean_h_successful"], c["mean_h_failed"],
             c["pearson_r"], _p(c["pearson_p"]), c["spearman_rho"], _p(c["spearman_p"]),
             _p(c["mannwhitney_p_success_vs_failed"])] for d, c in st["chromatic"].items()]
    lines += ["Chromatic summary:", "",
              markdown_table(["direction", "n", "n successful", "mean h succ.", "mean h failed",
                              "Pearson r (h, change)", "p", "Spearman rho", "p",
                              "Mann-Whitney p"], rows), ""]
    rows = [[d, p["n"], p["even_even"], p["share"], p["expected"], _p(p["p_value"])]
            for d, p in st["periodicity"].items()]
    lines += ["Even/even periodicity of successful attacks (finding (a); exact binomial test):", "",
              markdown_table(["direction", "n", "even/even", "share", "chance", "p"], rows), ""]
    lines += ["## Plots", ""]
    lines += [f"![{Path(p).stem}]({Path(p).relative_to(Path(res['out_dir']).parent)})"
              for p in res["plots"]]
    lines += ["", "All study tables (CSV/Markdown), every attack point (attacks.csv) and "
              f"study.json are in `{rel(res['out_dir'])}/`.", ""]
    return "\n".join(lines)


# --- main --------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (a couple of minutes)")
    ap.add_argument("--data-dir", default=str(SHARED_DATA))
    ap.add_argument("--cache", default=str(DEFAULT_CACHE / "onepixel_findings"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    set_threads(args.threads)
    start = time.perf_counter()
    s = dict(QUICK if args.quick else FULL)
    name = "onepixel_findings_quick" if args.quick else "onepixel_findings"
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    out_dir = RESULTS / name
    cmd = "python benchmarks/onepixel_findings.py" + (" --quick" if args.quick else "")
    machine = machine_info("cpu")
    with Store(cache / f"{name}.db") as store:
        camp = run_campaigns(s, Path(args.data_dir), cache, store)
        study = run_study(store, out_dir)
        rows = onepixel_rows(store, onepixel_runs(store))
    points = attack_points(rows)
    size = (study["image_size"]["height"], study["image_size"]["width"])
    kinds = {r["direction"]: ("pos2neg" if r["label"] == 1 else "neg2pos")
             for r in rows if r.get("direction")}
    counts = {}
    for d in sorted(points["direction"].unique()):
        g = [r for r in rows if r["direction"] == d]
        att = [r for r in g if r["status"] != "skipped"]
        flipped = sum(1 for r in att if r["success"] and (
            (kinds[d] == "pos2neg" and r["final_score"] < 0.5)
            or (kinds[d] == "neg2pos" and r["final_score"] > 0.5)))
        counts[d] = {"attacked": len(att), "successful": sum(r["success"] for r in att),
                     "flipped": flipped, "skipped": len(g) - len(att)}
    chromatic = {d: chromatic_tests(points[points["direction"] == d], kinds[d])
                 for d in counts}
    centre = {d: centre_tests(points[points["direction"] == d], size, s["monte_carlo_draws"],
                              s["analysis_seed"]) for d in counts}
    plots = [plot_h(points, out_dir / "h_distributions.png")]
    plots += [Path(v["png"]) for v in study["heatmaps"].values()]
    plots += [out_dir / "chromatic.png", out_dir / "parity.png"]
    # the study writes absolute paths; keep the committed copy relative to the project root
    study_json = json.dumps(study)
    study_json = study_json.replace(str(ROOT) + "/", "")
    study = json.loads(study_json)
    (out_dir / "study.json").write_text(json.dumps(study, indent=2, sort_keys=True))
    res = {
        "command": cmd, "commit": git_commit(), "settings": s,
        "paper": {"size": PAPER_SIZE, **PAPER},
        "paper_names": {d: PAPER[k]["name"] for d, k in kinds.items()}, "kinds": kinds,
        **camp, "counts": counts,
        "total": {"attacked": sum(c["attacked"] for c in counts.values()),
                  "successful": sum(c["successful"] for c in counts.values())},
        "chromatic": chromatic, "centre_tests": centre,
        "centre": {"X": (size[1] - 1) / 2, "Y": (size[0] - 1) / 2},
        "uniform_sd": math.sqrt((size[1] ** 2 - 1) / 12),
        "verdicts": {"b": {d: verdict_b(c) for d, c in chromatic.items()},
                     "c": {d: verdict_c(c, size) for d, c in centre.items()}},
        "study": study, "out_dir": str(out_dir), "plots": [str(p) for p in plots],
        "machine": machine, "wall_seconds": round(time.perf_counter() - start, 1),
    }
    md = markdown(res, cmd)
    res["out_dir"] = rel(out_dir)
    res["plots"] = [rel(p) for p in plots]
    write_json(RESULTS / f"{name}.json", res)
    (RESULTS / f"{name}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
