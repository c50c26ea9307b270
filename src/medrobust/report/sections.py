"""The report's standard sections, one function each: ``fn(ctx) -> Section | None``.

Order of the page: at a glance (``glance.py``), model quality, attack summary, gallery
(``gallery.py``), one-pixel analysis, ..., and provenance as the appendix at the end. Each
function reads only the store (through the context) and returns blocks; None means "nothing to
show" and the section is left out. Text is written for a clinician-scientist: plain headings
and a line on what each number means.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from medrobust.analysis.study import ONEPIXEL_COMMAND
from medrobust.report.blocks import (
    Definitions,
    Figure,
    FigureRow,
    Note,
    Paragraphs,
    Section,
    Table,
    flatten_params,
    num,
    pct,
    pvalue,
    spec_text,
)
from medrobust.report.context import ReportContext, class_name, class_names
from medrobust.report.names import budget_text, data_text, dataset_display_name
from medrobust.report.plots import (
    confusion_matrix_figure,
    figure_to_data_uri,
    history_figure,
    png_file_to_data_uri,
)

MODEL_COMMANDS = ("train", "evaluate")
MAX_CONFUSION_FIGURES = 8


# -- small helpers --------------------------------------------------------------------------------

def _time(text: str | None) -> str:
    """ISO timestamp -> 'YYYY-MM-DD HH:MM:SS UTC' (or the text unchanged)."""
    if not text:
        return "-"
    try:
        return datetime.fromisoformat(text).strftime("%Y-%m-%d %H:%M:%S UTC")
    except ValueError:
        return text


def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "-"
    try:
        seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return "-"
    return _duration_text(seconds)


def _duration_text(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


def run_duration(run: dict[str, Any]) -> str:
    """How long a run computed: the time its attempts actually ran (the store adds each
    attempt's seconds when it ends), not the wall clock from its first start to its last end,
    which counts the hours between a run and a rerun. Training runs report their training
    time; stores from before the store recorded attempts fall back to the wall clock, which is
    exact only for a run never resumed, and say so otherwise."""
    trained = _number((run.get("summary") or {}).get("train_seconds"))
    if trained is not None:
        # 'train' records its run after training; the summary has the training time.
        return f"{_duration_text(trained)} training"
    active = _number(run.get("active_seconds"))
    if active is not None:
        if run["status"] != "running":
            return _duration_text(active)
        return f"{_duration_text(active)} before this attempt" if active > 0 else "-"
    span = _duration(run["started_at"], run["ended_at"])
    if span != "-" and run.get("resumed_count"):
        return f"{span} from first start to last end (time per attempt not recorded)"
    return span


def run_rate(run: dict[str, Any]) -> float | None:
    """Items (images) per second the run's attempts computed: the items they recorded over the
    seconds they ran, so a rerun that had nothing left to do neither zeroes nor dilutes it.
    None while the run is open (its current attempt's seconds are not added yet) or where the
    store did not record it."""
    items, seconds = _number(run.get("computed_items")), _number(run.get("active_seconds"))
    if run["status"] == "running" or not items or not seconds:
        return None
    return items / seconds


def resumed_text(run: dict[str, Any]) -> str:
    """How often a run was resumed, counting only the resumes that computed something; a
    rerun that found every item recorded is named as such, not as a resume. Runs that record
    no items (training, evaluation) and runs from stores that did not record attempts count
    every reopening."""
    count = int(run.get("resumed_count") or 0)
    if not count:
        return "no"
    work = run.get("work_resumes")
    if not isinstance(work, int) or not run.get("computed_items"):
        return f"{count} time(s)"
    idle = count - work
    text = f"{work} time(s)" if work else "no"
    if idle > 0:
        text += f"; rerun {idle} time(s) with nothing left to compute"
    return text


def model_label(run: dict[str, Any]) -> str:
    """'name (folder)' of the model a run used, from what the run recorded."""
    model = run.get("model") or {}
    summary = run.get("summary") or {}
    params = run.get("params") or {}
    folder = model.get("dir")
    name = model.get("model") or summary.get("model") or params.get("model") or \
        (read_checkpoint_meta(folder) or {}).get("model")
    if name and folder:
        return f"{name} ({folder})"
    return str(name or folder or "-")


def run_title(run: dict[str, Any]) -> str:
    """'Run 3: attack onepixel on smallcnn, synthetic test split'."""
    spec = run.get("dataset") or {}
    model = run.get("model") or {}
    name = model.get("model") or (run.get("summary") or {}).get("model") or \
        (read_checkpoint_meta(model.get("dir")) or {}).get("model") or "model"
    return f"Run {run['id']}: {run['command']} of {name} on {data_text(spec)}"


def read_checkpoint_meta(folder: str | None) -> dict[str, Any] | None:
    """A checkpoint's meta.json, read as plain JSON (no model is loaded); None if unreadable."""
    if not folder:
        return None
    try:
        return json.loads((Path(folder) / "meta.json").read_text())
    except (OSError, ValueError):
        return None


# -- provenance ---------------------------------------------------------------------------------

def _direction_example(runs: list[dict[str, Any]]) -> str:
    """The glossary's 'Direction' with an example from these runs' own classes."""
    seen = next((d for r in runs for d in ((r.get("summary") or {}).get("by_direction") or {})
                 if "->" in d), None)
    if seen is None:
        return ("which way the answer was pushed, e.g. 'A->B' means an image of class A made "
                "to be classified as B.")
    a, b = seen.split("->", 1)
    return (f"which way the answer was pushed, e.g. '{seen}' means a {a} image made to be "
            f"classified as {b}.")


def provenance_section(ctx: ReportContext) -> Section:
    """Where every number came from: each run's command, code version, model, data, settings,
    and the sections that show it. Built last (an appendix), so it can say which runs no
    section shows: every run of the store appears on the page at least here."""
    section = Section("provenance", "Appendix: provenance of every run")
    section.add(Paragraphs([
        "Each row is one recorded run. 'Code version' is the medrobust version (with the git "
        "commit when known) that produced it; 'Dataset' is what is needed to reload exactly the "
        "same images. A run that is not 'completed' was interrupted or is still running, and "
        "its numbers cover only what had finished. 'Duration' is the time the run computed, "
        "summed over its attempts when it was stopped and resumed; 'Resumed' counts the "
        "resumes that computed something. 'Shown in' lists the sections above that use the "
        "run.",
    ]))
    rows = []
    for run in ctx.runs:
        rows.append([str(run["id"]), run["command"], run["status"], _time(run["started_at"]),
                     run_duration(run), str(run.get("code_version") or "-")])
    section.add(Table(["Run", "Command", "Status", "Started", "Duration", "Code version"],
                      rows, caption="Runs"))
    where = []
    for run in ctx.runs:
        shown = [ctx.anchor_title(a) for a in ctx.shown.get(run["id"], [])]
        where.append([str(run["id"]), model_label(run),
                      f"{dataset_display_name(run.get('dataset'))}: "
                      f"{spec_text(run.get('dataset'))}" if run.get("dataset") else "-",
                      "; ".join(dict.fromkeys(shown)) or "only here (no section draws on it)"])
    section.add(Table(["Run", "Model", "Dataset", "Shown in"], where,
                      caption="Model, data and where each run is shown"))
    detail = []
    for run in ctx.runs:
        params = "; ".join(f"{k} = {v}" for k, v in flatten_params(
            _budgets_in_units(run.get("params"))))
        detail.append([str(run["id"]), str(run.get("host") or "-"), resumed_text(run),
                       params or "-"])
    section.add(Table(["Run", "Host", "Resumed", "Settings"], detail,
                      caption="Settings of each run (long lists abbreviated)"))
    return section


def _budgets_in_units(params: Any, norm: str | None = None) -> Any:
    """Run settings with every budget written in the page's convention ('Linf 8/255',
    'L2 0.5') instead of the raw [0,1]-scale float, so the appendix reads like the rest."""
    if isinstance(params, dict):
        here = params.get("norm") if isinstance(params.get("norm"), str) else norm
        out = {}
        for key, value in params.items():
            budget_norm = "linf" if key.startswith("linf_eps") else "l2" if \
                key.startswith("l2_eps") else here if key in ("eps", "levels") else None
            if budget_norm in ("linf", "l2") and isinstance(value, (int, float, list)) and \
                    not isinstance(value, bool):
                values = value if isinstance(value, list) else [value]
                if all(isinstance(v, (int, float)) for v in values):
                    texts = [budget_text(budget_norm, v) for v in values]
                    out[key] = texts if isinstance(value, list) else texts[0]
                    continue
            out[key] = _budgets_in_units(value, here)
        return out
    return params


# -- model quality ------------------------------------------------------------------------------

def _metric_sets(ctx: ReportContext) -> list[dict[str, Any]]:
    """Every recorded set of classification metrics: train (val, test), evaluate, checkpoints."""
    sets = []
    trained_dirs = set()
    for run in ctx.runs_of(*MODEL_COMMANDS):
        summary = run.get("summary") or {}
        if run["command"] == "train":
            trained_dirs.add((run.get("model") or {}).get("dir"))
            for split in ("val", "test"):
                if isinstance(summary.get(split), dict):
                    sets.append({"run": run, "source": f"run {run['id']} (train)",
                                 "split": split, "metrics": summary[split]})
        elif "accuracy" in summary:
            split = (run.get("params") or {}).get("split", "?")
            sets.append({"run": run, "source": f"run {run['id']} (evaluate)", "split": split,
                         "metrics": summary})
    # Attacked models trained elsewhere: their checkpoint carries its own metrics.
    seen = set()
    for run in ctx.onepixel_runs:
        folder = (run.get("model") or {}).get("dir")
        if not folder or folder in trained_dirs or folder in seen:
            continue
        seen.add(folder)
        meta = read_checkpoint_meta(folder) or {}
        for split, metrics in (meta.get("metrics") or {}).items():
            if isinstance(metrics, dict) and "accuracy" in metrics:
                sets.append({"run": run, "source": f"checkpoint {folder}", "split": split,
                             "metrics": metrics})
    return sets


def _cm_class_names(metrics: dict[str, Any], run: dict[str, Any], k: int) -> list[str]:
    """Class names in matrix order: recall keys (stored in class order), dataset, model, index."""
    recall = metrics.get("recall")
    if isinstance(recall, dict) and len(recall) == k:
        return list(recall)
    classes = (metrics.get("dataset") or {}).get("classes")
    if isinstance(classes, list) and len(classes) == k:
        return [str(c) for c in classes]
    return class_names(run, k)[:k]


def model_quality_section(ctx: ReportContext) -> Section:
    """Accuracy, AUC, balanced accuracy, recall per class and confusion matrices."""
    section = Section("model-quality", "Model quality: how well the model classifies clean images")
    section.add(Definitions([
        ("Accuracy", "share of images whose predicted class is the true class."),
        ("Balanced accuracy", "the mean of the per-class recalls, so a rare class counts as "
                              "much as a common one."),
        ("AUC", "area under the ROC curve: the chance that the model scores a random positive "
                "image above a random negative one (0.5 = guessing, 1 = perfect; "
                "one-vs-rest average for more than two classes)."),
        ("Recall (sensitivity)", "per true class, the share of its images classified correctly."),
        ("Confusion matrix", "rows are the true class, columns the predicted class; the "
                             "diagonal holds the correct answers."),
        ("Split", "val = validation images used to choose the model, test = held-out images."),
    ]))
    sets = _metric_sets(ctx)
    if not sets:
        section.add(Note("No training or evaluation results are recorded in this store, so the "
                         "attacked model's accuracy on clean images is not shown here. Run "
                         "'medrobust evaluate' to add it.", "warning"))
        return section
    rows = []
    for s in sets:
        ctx.cite(s["run"]["id"], section.anchor, section.title)
        m = s["metrics"]
        recall = m.get("recall") or {}
        recall_text = ", ".join(f"{k} {pct(v)}" for k, v in recall.items()) or "-"
        rows.append([s["source"], model_label(s["run"]), str(s["split"]), num(m.get("n")),
                     pct(m.get("accuracy")), num(m.get("auc")), pct(m.get("balanced_accuracy")),
                     recall_text])
    section.add(Table(["Source", "Model", "Split", "Images", "Accuracy", "AUC",
                       "Balanced accuracy", "Recall per class"], rows))
    figures = []
    for s in [s for s in sets if s["split"] != "val"][:MAX_CONFUSION_FIGURES]:
        cm = s["metrics"].get("confusion_matrix")
        if not cm:
            continue
        names = _cm_class_names(s["metrics"], s["run"], len(cm))
        fig = confusion_matrix_figure(cm, names, f"{s['source']}, {s['split']} split")
        figures.append(Figure(figure_to_data_uri(fig), f"Confusion matrix, {s['source']}, "
                              f"{s['split']} split (count and share of the true class)",
                              alt="confusion matrix", max_width="360px"))
    if figures:
        section.add(FigureRow(figures))
    for run in ctx.runs_of("train"):
        meta = read_checkpoint_meta((run.get("model") or {}).get("dir")) or {}
        history = meta.get("history")
        if isinstance(history, list) and history:
            fig = history_figure(history, f"Training of run {run['id']}")
            section.add(Figure(figure_to_data_uri(fig),
                               f"Training curves of run {run['id']} (from the checkpoint; "
                               "the checkpoint may have been overwritten by a later run)",
                               alt="training curves"))
    return section


# -- attack summary -----------------------------------------------------------------------------

def _onepixel_summary(ctx: ReportContext, run: dict[str, Any]) -> dict[str, Any] | None:
    """The run's stored summary, or one computed from its rows if it has none yet."""
    summary = run.get("summary") or {}
    if "by_direction" in summary:
        return summary
    rows = ctx.onepixel_rows(run["id"])
    if not rows:
        return None
    from medrobust.campaigns.onepixel import summarise_onepixel

    return summarise_onepixel(rows)


def _budget_text(params: dict[str, Any]) -> str:
    attack = params.get("attack") or {}
    if not attack:
        return ""
    pop, gens = attack.get("population"), attack.get("generations")
    budget = pop * (gens + 1) if isinstance(pop, int) and isinstance(gens, int) else None
    thr = attack.get("thresholds")
    parts = [f"{attack.get('pixels', 1)} pixel(s) changed",
             f"population {pop}, at most {gens} generations"
             + (f" (at most {budget:,} model queries per image)" if budget else "")]
    if thr:
        parts.append(f"success thresholds {summarise_thresholds(thr)}")
    return "Attack settings: " + "; ".join(parts) + "."


def summarise_thresholds(thr: Any) -> str:
    if isinstance(thr, (list, tuple)) and len(thr) == 2:
        return f"{thr[0]:g} (lowering) / {thr[1]:g} (raising)"
    return str(thr)


def _images_per_second(run: dict[str, Any], summary: dict[str, Any]) -> float | None:
    """The store's images per second over every attempt of the run (a rerun with nothing to
    compute writes None into the campaign's summary); the summary's own figure otherwise."""
    rate = run_rate(run)
    return rate if rate is not None else _number(summary.get("images_per_second"))


def attack_summary_section(ctx: ReportContext) -> Section | None:
    """Success rate overall, per direction and per true class, per one-pixel run."""
    runs = ctx.onepixel_runs
    if not runs:
        return None
    section = Section("attacks", "One-pixel attacks: how often the model was fooled")
    section.add(Definitions([
        ("Skipped", "images the model already got wrong before any attack; not attacked."),
        ("Attacked", "images the model classified correctly, which the attack then tried to "
                     "flip."),
        ("Success rate", "share of attacked images whose answer the one-pixel change flipped "
                         "(for single-score models: pushed past the threshold)."),
        ("Direction", _direction_example(runs)),
        ("Queries", "how many times the attack asked the model for a score; a proxy for "
                    "effort (fewer = easier to fool)."),
    ]))
    for run in runs:
        sub = Section(f"attacks-run-{run['id']}", run_title(run))
        ctx.cite(run["id"], sub.anchor, f"One-pixel attacks: run {run['id']}")
        summary = _onepixel_summary(ctx, run)
        if run["status"] != "completed":
            sub.add(Note(f"This run is '{run['status']}': the numbers cover only the images "
                         "finished so far.", "warning"))
        budget = _budget_text(run.get("params") or {})
        if budget:
            sub.add(Paragraphs([budget]))
        if summary is None:
            sub.add(Note("No results recorded for this run yet.", "warning"))
            section.subsections.append(sub)
            continue
        sub.add(Table(
            ["Images", "Skipped (already wrong)", "Attacked", "Fooled", "Success rate",
             "Mean queries", "Images per second"],
            [[num(summary.get("images")), num(summary.get("skipped")),
              num(summary.get("attacked")), num(summary.get("successes")),
              pct(summary.get("success_rate")), num(summary.get("mean_queries"), 0),
              num(_images_per_second(run, summary), 2)]],
            caption="Overall"))
        sub.add(Table(
            ["Direction", "Attacked", "Fooled", "Success rate", "Mean queries"],
            [[d, num(r.get("attacked")), num(r.get("successes")), pct(r.get("success_rate")),
              num(r.get("mean_queries"), 0)]
             for d, r in (summary.get("by_direction") or {}).items()],
            caption="Per direction"))
        names = class_names(run)
        sub.add(Table(
            ["True class", "Attacked", "Fooled", "Success rate", "Mean queries"],
            [[class_name(names, lbl), num(r.get("attacked")), num(r.get("successes")),
              pct(r.get("success_rate")), num(r.get("mean_queries"), 0)]
             for lbl, r in (summary.get("by_label") or {}).items()],
            caption="Per true class"))
        section.subsections.append(sub)
    return section


# -- analysis -----------------------------------------------------------------------------------

def _periodicity_sentence(direction: str, p: dict[str, Any], what: str) -> str:
    n, k = p["n"], p["even_even"]
    if n == 0:
        return f"{direction}: no {what} attacks to count."
    text = (f"{direction}: {k} of {n} {what} attacks ({pct(p['share'])}) hit a pixel whose "
            f"column and row are both even; chance alone gives {pct(p['expected'])}.")
    if n < 10:
        return text + " Too few attacks to judge."
    if p["p_value"] is not None and p["p_value"] < 0.05:
        more = "more" if p["share"] > p["expected"] else "less"
        return (text + f" That is {more} often than chance (p {_p_phrase(p['p_value'])}): the "
                "model treats even and odd pixels differently, as a stride-2 layer can.")
    return text + f" That is consistent with chance (p {_p_phrase(p['p_value'])})."


def _p_phrase(value: float | None) -> str:
    text = pvalue(value)
    return text if text.startswith("<") else f"= {text}"


def _chromatic_sentence(direction: str, c: dict[str, Any]) -> str:
    text = f"{direction}: mean h {num(c['mean_h'], 2)} over {c['n']} attacked images"
    if c["mean_h_successful"] is not None and c["mean_h_failed"] is not None:
        text += (f" (successful: {num(c['mean_h_successful'], 2)}, failed: "
                 f"{num(c['mean_h_failed'], 2)})")
    text += "."
    if c["spearman_rho"] is not None:
        text += (f" Rank correlation of h with the score change: {num(c['spearman_rho'], 2)} "
                 f"(p {_p_phrase(c['spearman_p'])}).")
    return text


def _stats_tables(study: dict[str, Any]) -> list[Table]:
    """One paper-style table per direction: rows mean/median/SD, columns X, Y and colours."""
    tables = []
    columns = ["X", "Y", *study.get("colour_columns", [])]
    successful, attacked = study["stats"]["successful"], study["stats"]["attacked"]
    for direction in attacked:
        rows = []
        for label, group in (("successful", successful.get(direction)),
                             ("all attacked", attacked.get(direction))):
            if not group or not group.get("n"):
                rows.append([f"{label} (n = 0)", "-", *["-"] * len(columns)])
                continue
            for key, name in (("mean", "mean"), ("median", "median"), ("sd", "SD")):
                rows.append([f"{label} (n = {group['n']})" if key == "mean" else "", name,
                             *[num(group.get(c, {}).get(key), 1) for c in columns]])
        tables.append(Table(["Attacks", "Statistic", *columns], rows, caption=direction))
    return tables


def analysis_section(ctx: ReportContext) -> Section | None:
    """The one-pixel study (colour distance, where attacks land, even/odd periodicity)."""
    runs = ctx.onepixel_runs
    if not runs:
        return None
    section = Section("analysis", "Why and where the attacks work")
    section.add(_analysis_definitions())
    for run in runs:
        section.subsections.append(_analysis_run(ctx, run))
    return section


def _analysis_definitions() -> Definitions:
    """What the analysis' terms mean, once above every run."""
    return Definitions([
        ("h (colour distance)", "how different the attack colour is from the mean of the 8 "
                                "surrounding pixels in the original image, as a root-mean-square "
                                "over the colour channels on a 0-1 scale: 0 = same colour, 1 = "
                                "black next to white."),
        ("Score change", "final minus original value of the score the attack pushes (the "
                         "true-class probability for most models, P(positive) for single-score "
                         "models); the bigger its size, the stronger the attack."),
        ("X, Y", "column and row of the attacked pixel, counted from the top-left corner "
                 "(0, 0)."),
        ("R, G, B (or I)", "the attack colour, 0-255 per channel (I = intensity of a greyscale "
                           "image)."),
        ("SD", "sample standard deviation (n - 1 in the denominator)."),
        ("Even/even share", "share of attacks on pixels whose column and row are both even. "
                            "By chance about 25 %; far more points to a periodic weakness of "
                            "the network (the checkerboard of Alatalo et al. 2022)."),
        ("p-value", "exact two-sided binomial test of the even/even count against chance; "
                    "small values (below 0.05) mean the share is unlikely to be chance."),
    ])


def _analysis_run(ctx: ReportContext, run: dict[str, Any]) -> Section:
    """One run's study: its colour, position and periodicity subsections (or why there is none)."""
    sub = Section(f"analysis-run-{run['id']}", run_title(run))
    ctx.cite(run["id"], sub.anchor, f"Why and where the attacks work: run {run['id']}")
    study = ctx.study(run["id"])
    if isinstance(study, str):
        sub.add(Note(f"No analysis for this run: {study}", "warning"))
        return sub
    for note in study.get("notes", []):
        sub.add(Note(note, "warning"))
    size = study["image_size"]
    sub.add(Paragraphs([
        f"{study['counts']['attacked']} attacked images, {study['counts']['successful']} "
        f"fooled. Image grid {size['height']} x {size['width']} pixels (from "
        f"{size['source']}). Tables and plots are also saved in {study['out_dir']}.",
    ]))
    files = {Path(f).name: f for f in study["files"]}
    sub.subsections.append(_colour_section(run["id"], study, files))
    sub.subsections.append(_place_section(run["id"], study))
    sub.subsections.append(_period_section(run["id"], study, files))
    return sub


def _colour_section(run_id: int, study: dict[str, Any], files: dict[str, str]) -> Section:
    colour = Section(f"analysis-run-{run_id}-colour", "Attack colour (chromatic analysis)")
    colour.add(Paragraphs([_chromatic_sentence(d, c) for d, c in study["chromatic"].items()]))
    if "chromatic.png" in files:
        colour.add(Figure(png_file_to_data_uri(files["chromatic.png"]),
                          "Each dot is one attacked image: h of its attack pixel against the "
                          "score change it achieved; red = successful (fooled the model), grey = "
                          "failed.",
                          alt="h versus score change"))
    colour.add(Table(
        ["Direction", "n", "Mean h", "Mean h (successful)", "Mean h (failed)",
         "Spearman rho (h, score change)", "p"],
        [[d, num(c["n"]), num(c["mean_h"]), num(c["mean_h_successful"]),
          num(c["mean_h_failed"]), num(c["spearman_rho"]), pvalue(c["spearman_p"])]
         for d, c in study["chromatic"].items()]))
    return colour


def _place_section(run_id: int, study: dict[str, Any]) -> Section:
    place = Section(f"analysis-run-{run_id}-place", "Attack position and colour statistics")
    place.add(Paragraphs([
        "Mean, median and SD of the attacked pixel's position and colour, as in tables 1-2 "
        "of Alatalo et al. 2022. A mean X and Y near the image centre means the model "
        "relies on the centre.",
    ]))
    place.add(*_stats_tables(study))
    heatmaps = [Figure(png_file_to_data_uri(info["png"]),
                       f"{d}: how many attacks chose each pixel (left: attacks that fooled "
                       "the model; right: every attacked image). One square = one pixel.",
                       alt=f"heatmap {d}")
                for d, info in study["heatmaps"].items() if Path(info["png"]).is_file()]
    place.add(*heatmaps)
    return place


def _period_section(run_id: int, study: dict[str, Any], files: dict[str, str]) -> Section:
    period = Section(f"analysis-run-{run_id}-period", "Even/odd periodicity")
    period.add(Paragraphs(
        [_periodicity_sentence(d, p, "successful") for d, p in study["periodicity"].items()]))
    if "parity.png" in files:
        period.add(Figure(png_file_to_data_uri(files["parity.png"]),
                          "Share of successful attacks in each combination of even/odd "
                          "column (X) and row (Y); dashed line: the even/even share expected "
                          "by chance.", alt="parity bar chart", max_width="720px"))
    rows = []
    for which, label in (("periodicity", "successful"),
                         ("periodicity_attacked", "all attacked")):
        for d, p in study[which].items():
            ci = "-" if p["ci_low"] is None else f"{pct(p['ci_low'])} - {pct(p['ci_high'])}"
            rows.append([d, label, num(p["n"]), num(p["even_even"]), pct(p["share"]), ci,
                         pct(p["expected"]), pvalue(p["p_value"])])
    period.add(Table(["Direction", "Attacks", "n", "Even/even", "Share", "95 % CI",
                      "Chance", "p (two-sided binomial)"], rows))
    return period


__all__ = [
    "ONEPIXEL_COMMAND",
    "analysis_section",
    "attack_summary_section",
    "model_quality_section",
    "provenance_section",
]
