"""Tests of the HTML report: one self-contained file holding every section, built offline."""

from __future__ import annotations

import html
import re
from pathlib import Path

import numpy as np
import pytest

from medrobust.campaigns.onepixel import ONEPIXEL_TABLE
from medrobust.data import load_dataset
from medrobust.errors import MedrobustError
from medrobust.report import Note, Section, build_report
from medrobust.report.builder import SECTION_BUILDERS
from medrobust.report.plots import zoom_patch
from medrobust.store import Store

SPEC = {"dataset": "synthetic", "size": 16, "n": 20, "seed": 0, "split": "test"}
MODEL = {"dir": "/nowhere/model", "model": "smallcnn", "head": "softmax",
         "class_names": ["normal", "mitosis"]}
METRICS = {"n": 20, "accuracy": 0.9, "auc": 0.95, "balanced_accuracy": 0.9,
           "recall": {"normal": 1.0, "mitosis": 0.8}, "confusion_matrix": [[10, 0], [2, 8]]}
# (dataset index, status, x, y, colour, score change)
ATTACKS = [(0, "success", 2, 4, [255, 0, 0], -0.6), (1, "success", 6, 8, [0, 0, 0], -0.5),
           (2, "failed", 5, 5, [0, 255, 0], -0.1), (3, "success", 15, 0, [0, 0, 255], -0.4)]


def fill_store(store: Store, spec: dict = SPEC, wrong_original: bool = False,
               finish: bool = True) -> int:
    """A train run and a one-pixel run whose rows match the real synthetic images."""
    train_id, _ = store.start_run("train", {"model": "smallcnn", "epochs": 1},
                                  model={"dir": "/nowhere/model"}, dataset=SPEC)
    store.finish_run(train_id, "completed", {"model": "smallcnn", "val": METRICS,
                                             "test": METRICS, "train_seconds": 3.0})
    run_id, _ = store.start_run("attack onepixel", {"attack": {"pixels": 1, "population": 10,
                                                               "generations": 2}},
                                model=MODEL, dataset=spec)
    ds = load_dataset("synthetic", "test", n=20, size=16)
    for index, status, x, y, colour, change in ATTACKS:
        label = int(ds.labels[index])
        direction = "mitosis->normal" if label == 1 else "normal->mitosis"
        original = ds.images[index, y, x].tolist()
        if wrong_original:
            original = [(v + 1) % 256 for v in original]
        store.put(ONEPIXEL_TABLE, run_id, index, {
            "dataset_index": index, "status": status, "success": int(status == "success"),
            "direction": direction, "label": label, "queries": 30, "generations": 2,
            "x": x, "y": y, "pixels": [[x, y]], "colours": [colour],
            "original_colours": [original], "h": 0.5 + change / 10,
            "original_scores": [0.9, 0.1] if label == 0 else [0.1, 0.9],
            "final_scores": [0.9 + change, 0.1 - change] if label == 0
            else [0.1 - change, 0.9 + change],
            "original_score": 0.9, "final_score": 0.9 + change, "score_change": change,
        })
    if not finish:
        return run_id
    store.finish_run(run_id, "completed", {
        "images": 4, "skipped": 0, "attacked": 4, "successes": 3, "success_rate": 0.75,
        "mean_queries": 30.0, "images_per_second": 2.0,
        "by_direction": {"normal->mitosis": {"attacked": 4, "successes": 3,
                                             "success_rate": 0.75, "mean_queries": 30.0}},
        "by_label": {"0": {"attacked": 4, "successes": 3, "success_rate": 0.75,
                           "mean_queries": 30.0}},
    })
    return run_id


def directions_of(store: Store) -> set[str]:
    return {r["direction"] for r in store.rows("onepixel_results")}


def test_report_is_one_self_contained_html_file(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        run_id = fill_store(store)
        path = build_report(store, tmp_path / "report")
        dirs = directions_of(store)
    assert path == tmp_path / "report" / "report.html"
    assert [p.name for p in path.parent.iterdir() if p.is_file()] == ["report.html"]
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    # Plots and gallery images are embedded PNGs: 1 confusion matrix, 3 gallery cards of 4
    # images, chromatic, parity and one heatmap per direction.
    assert text.count("data:image/png;base64,") >= 1 + 12 + 2 + len(dirs)
    for src in re.findall(r'src="([^"]*)"', text):
        assert src.startswith("data:image/png;base64,")
    assert "<link" not in text and "<script" not in text
    assert not re.search(r"url\(\s*['\"]?(?!data:)", text)
    assert not re.search(r"(src|href)=\"(https?:|file:|//)", text)
    # Provenance, sections and content
    assert f"Run {run_id}: attack onepixel" in text
    assert "Run 1" in text or ">1<" in text
    for d in dirs:
        assert html.escape(d) in text
    for heading in ("At a glance", "Appendix: provenance", "Model quality", "One-pixel attacks",
                    "Examples of successful", "Why and where"):
        assert heading in text
    assert "Confusion matrix" in text and "90.0 %" in text  # train run's test accuracy
    assert "P(normal)" in text or "P(mitosis)" in text  # gallery scores with class names
    assert "differs from the attacked one" not in text
    assert "h (colour distance)" in text
    assert (tmp_path / "report" / "analysis" / f"run_{run_id}" / "study.json").is_file()


def test_report_flags_a_changed_dataset(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        fill_store(store, wrong_original=True)
        text = build_report(store, tmp_path / "r").read_text()
    assert "differs from the attacked one" in text


def test_report_survives_an_unloadable_dataset_and_an_unfinished_run(tmp_path: Path) -> None:
    spec = {"dataset": "no-such-dataset", "size": 16, "split": "test"}
    with Store(tmp_path / "s.db") as store:
        fill_store(store, spec=spec, finish=False)
        text = build_report(store, tmp_path / "r").read_text()
    assert "could not be reloaded" in text
    assert "even/even" in text.lower()  # the analysis still runs on the stored rows
    # No stored summary yet: the attack table is computed from the rows (3 of 4 fooled).
    assert "is &#39;running&#39;" in text and "75.0 %" in text


def test_report_without_attacks_and_with_extra_sections(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store:
        store.start_run("evaluate", {"split": "test"}, model={"dir": "/nowhere"}, dataset=SPEC)
        store.finish_run(1, "completed", METRICS)

        def extra(ctx):  # a later feature adds a section without touching the builder
            return Section("extra", "Denoising defence").add(Note(f"{len(ctx.runs)} run(s)"))

        text = build_report(store, tmp_path / "r", [*SECTION_BUILDERS, extra]).read_text()
    assert "Denoising defence" in text and "1 run(s)" in text
    assert "Why and where" not in text  # no one-pixel run, no analysis section
    assert "Confusion matrix" in text


def test_report_of_an_empty_store_is_a_clear_error(tmp_path: Path) -> None:
    with Store(tmp_path / "s.db") as store, pytest.raises(MedrobustError, match="no runs"):
        build_report(store, tmp_path / "r")


def test_zoom_keeps_the_pixel_centred_and_outlined() -> None:
    image = np.zeros((5, 5, 3), dtype=np.uint8)
    image[0, 0] = [200, 100, 50]
    patch = zoom_patch(image, 0, 0, radius=2, scale=10)
    assert patch.shape == (50, 50, 3)
    assert patch[25, 25].tolist() == [200, 100, 50]  # centre of the 5x5 patch
    assert patch[5, 5].tolist() == [128, 128, 128]  # outside the image: grey
    assert patch[20, 25].tolist() == [255, 255, 255]  # white outline on the pixel's edge
    grey = zoom_patch(np.full((5, 5, 1), 7, dtype=np.uint8), 4, 4, radius=1, scale=4)
    assert grey.shape == (12, 12, 3) and grey[0, 0].tolist() == [7, 7, 7]


def test_the_glossary_example_direction_comes_from_the_runs_own_classes():
    """A PneumoniaMNIST report explains 'Direction' with its own classes, not synthetic's."""
    from medrobust.report.sections import _direction_example

    runs = [{"summary": {"by_direction": {"pneumonia->normal": {}, "normal->pneumonia": {}}}}]
    text = _direction_example(runs)
    assert "'pneumonia->normal' means a pneumonia image made to be classified as normal" in text
    assert "mitosis" not in text and "A->B" in _direction_example([{"summary": {}}])
