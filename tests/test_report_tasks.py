"""The report's landmark/detection attack section and its metric-vs-budget curves, built from a
store of real ``attack pgd|ifgsm`` runs (tiny untrained zoo models on tiny folders, through the
CLI, so the runs record exactly what the command records)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import CapturedOutput, run_json
from test_detection import _voc
from test_landmarks import make_folder as make_landmark_folder
from test_segmentation import make_folder as make_seg_folder

from medrobust.data import load_dataset
from medrobust.models import Classifier, build_model, save_model
from medrobust.models.detector import Detector
from medrobust.models.landmark_unet import LandmarkModel
from medrobust.models.segmenter import Segmenter
from medrobust.report import build_report
from medrobust.report.blocks import Figure, Table, num, pct
from medrobust.report.builder import SECTION_BUILDERS
from medrobust.report.context import ReportContext
from medrobust.report.robust_data import collect as collect_protocol
from medrobust.report.robust_plots import curve_lines
from medrobust.report.task_plots import detection_panel, landmark_panel
from medrobust.report.task_section import (
    budget_curves,
    budget_section,
    pick_examples,
    task_attack_section,
)
from medrobust.store import Store

pytestmark = pytest.mark.usefixtures("one_thread_module")

#: (task, attack, norm, eps) of every run the store holds
LANDMARK_RUNS = [("pgd", "linf", "2/255"), ("pgd", "linf", "8/255"), ("pgd", "l2", "0.5"),
                 ("ifgsm", "linf", "8/255")]
DETECTION_RUNS = [("pgd", "linf", "2/255"), ("pgd", "linf", "8/255")]
CLASSIFIER_RUNS = [("pgd", "linf", "2/255"), ("pgd", "linf", "8/255"), ("pgd", "linf", "16/255")]
SEG_RUNS = [("pgd", "linf", "2/255"), ("pgd", "linf", "8/255")]


def _checkpoints(root: Path) -> dict[str, tuple[Path, list[str]]]:
    """One saved untrained model per task, its dataset spec in meta.json; extra CLI args."""
    torch.manual_seed(0)
    out = {}
    lm = root / "lm"
    make_landmark_folder(lm, n=12, h=24, w=20,
                         splits={f"{i:03d}": "train" if i < 6 else "val" if i < 8 else "test"
                                 for i in range(12)})
    spec = load_dataset("landmarks", "test", data_dir=lm, size=(24, 20)).spec
    save_model(LandmarkModel(build_model("landmark_unet", 1, 3, width=2), [0.4], [0.2], 3, 4.0),
               root / "m_lm", {"model": "landmark_unet", "model_kwargs": {"width": 2},
                               "dataset": spec})
    out["landmarks"] = (root / "m_lm", [])
    boxes = {f"i{k}": [("RBC", 4 + k, 4, 20 + k, 18, 0), ("WBC", 30, 20, 56, 44, 0)]
             for k in range(8)}
    _voc(root / "voc", boxes, {"train": ["i0", "i1"], "val": ["i2"],
                               "test": ["i3", "i4", "i5", "i6", "i7"]})
    ds = load_dataset("voc", "test", data_dir=root / "voc", size=32)
    save_model(Detector(build_model("centernet", 3, 2, width=4), mean=[0.5] * 3, std=[0.25] * 3,
                        class_names=ds.class_names), root / "m_det",
               {"model": "centernet", "model_kwargs": {"width": 4}, "dataset": ds.spec})
    out["detection"] = (root / "m_det", [])
    syn = load_dataset("synthetic", "test", size=16, n=20, seed=3)
    save_model(Classifier(build_model("smallcnn", 3, 2, width=4), mean=[0.5] * 3,
                          std=[0.25] * 3, class_names=("normal", "mitosis")), root / "m_clf",
               {"model": "smallcnn", "model_kwargs": {"width": 4}, "dataset": syn.spec})
    out["classification"] = (root / "m_clf", ["--limit", "8"])
    seg_root = make_seg_folder(root / "seg", 6, [(24, 24)], colour=False, seed=1)
    kwargs = {"channels": [4, 8], "strides": [2]}
    save_model(Segmenter(build_model("unet", 1, 2, **kwargs), mean=[0.3], std=[0.2],
                         class_names=("background", "foreground"), multiple=2),
               root / "m_seg", {"model": "unet", "model_kwargs": kwargs})
    out["segmentation"] = (root / "m_seg", ["--task", "segmentation", "--dataset", "segfolder",
                                            "--data-dir", str(seg_root), "--size", "24",
                                            "--split", "train", "--limit", "3"])
    return out


@pytest.fixture(scope="module")
def store_path(tmp_path_factory) -> dict:
    """A store with gradient runs on all four tasks at several budgets (and one rerun)."""
    with CapturedOutput() as cap:
        return _fill(tmp_path_factory.mktemp("tasks"), cap)


def _fill(root: Path, capsys_module) -> dict:
    db = str(root / "runs.db")
    ckpts = _checkpoints(root)
    ids: dict[str, list[int]] = {}
    for task, runs in (("landmarks", LANDMARK_RUNS), ("detection", DETECTION_RUNS),
                       ("classification", CLASSIFIER_RUNS), ("segmentation", SEG_RUNS)):
        model, extra = ckpts[task]
        for kind, norm, eps in runs:
            out = run_json(capsys_module, "attack", kind, "--model", str(model), "--norm", norm,
                           "--eps", eps, "--steps", "2", "--store", db, *extra)
            ids.setdefault(task, []).append(out["run_id"])
    # a rerun at a budget already on the curve: still one point there (the newer run)
    model, extra = ckpts["classification"]
    out = run_json(capsys_module, "attack", "pgd", "--model", str(model), "--eps", "8/255",
                   "--steps", "2", "--store", db, "--no-resume", *extra)
    ids["rerun"] = [out["run_id"]]
    return {"db": db, "ids": ids, "root": root}


@pytest.fixture(scope="module")
def report(store_path, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("report")
    with Store(store_path["db"]) as store:
        path = build_report(store, out)
        ctx = ReportContext(store=store, out_dir=out, runs=store.runs())
        section = task_attack_section(ctx)
        curves = budget_curves(ctx)
        runs = {r["id"]: r for r in store.runs()}
        rows = {rid: store.rows("task_attack_results", run_id=rid)
                for rid in store_path["ids"]["landmarks"] + store_path["ids"]["detection"]}
    return {"html": path.read_text(), "section": section, "curves": curves, "runs": runs,
            "rows": rows, "ids": store_path["ids"]}


def _blocks(section, kind):
    return [b for b in section.blocks if isinstance(b, kind)]


def test_sections_are_registered_and_shown(report):
    assert task_attack_section in SECTION_BUILDERS and budget_section in SECTION_BUILDERS
    html = report["html"]
    for anchor in ("task-attacks", "budget-curves", "budget-classification",
                   "budget-segmentation", "budget-landmarks", "budget-detection"):
        assert f'id="{anchor}"' in html
    for rid in report["ids"]["landmarks"] + report["ids"]["detection"]:
        assert f'id="task-attack-run-{rid}"' in html


def test_every_image_has_alt_text(report):
    imgs = re.findall(r"<img\b[^>]*>", report["html"])
    assert len(imgs) >= 6 + 4 + 2 * 6  # curves, panels
    for tag in imgs:
        alt = re.search(r'alt="([^"]*)"', tag)
        assert alt and len(alt.group(1).strip()) > 20, tag[:200]


def test_panels_worst_and_median_with_replayed_perturbation(report):
    """Two panels per run (worst, median), the perturbation replayed and matching the store."""
    subs = {s.anchor: s for s in report["section"].subsections}
    for task in ("landmarks", "detection"):
        for rid in report["ids"][task]:
            sub = subs[f"task-attack-run-{rid}"]
            figures = _blocks(sub, Figure)
            assert [f.caption.split(" ")[0] for f in figures] == ["worst", "median"]
            word = "Landmark" if task == "landmarks" else "Detection"
            assert all(f.alt.startswith(f"{word} attack panel") for f in figures)
            assert all("amplified perturbation" in f.alt for f in figures)
            notes = [b.text for b in sub.blocks if getattr(b, "kind", "") == "note"]
            assert not notes, notes  # replay reproduced the stored metrics; nothing missing
            rows = report["rows"][rid]
            worst = max(rows, key=lambda r: ((r["adv_metric"] - r["clean_metric"])
                                             * (1 if task == "landmarks" else -1),
                                             -r["dataset_index"]))
            assert f"(index {worst['dataset_index']})" in figures[0].caption


def test_tables_equal_the_store_summaries(report):
    subs = {s.anchor: s for s in report["section"].subsections}
    for rid in report["ids"]["landmarks"]:
        s = report["runs"][rid]["summary"]
        (table,) = _blocks(subs[f"task-attack-run-{rid}"], Table)
        row = dict(zip(table.columns, table.rows[0], strict=True))
        assert s["unit"] == "mm"
        assert row["Images"] == num(s["images"]) == "4"
        assert row["MRE clean (mm)"] == num(s["clean_mre"])
        assert row["MRE attacked (mm)"] == num(s["adv_mre"])
        assert row["SDR@2mm clean"] == pct(s["clean_sdr_2"])
        assert row["SDR@2mm attacked"] == pct(s["adv_sdr_2"])
        assert float(row["Mean Linf"]) <= report["runs"][rid]["params"]["attack"]["eps"] + 1e-3
    for rid in report["ids"]["detection"]:
        s = report["runs"][rid]["summary"]
        table, damage = _blocks(subs[f"task-attack-run-{rid}"], Table)
        row = dict(zip(table.columns, table.rows[0], strict=True))
        lost = dict(zip(damage.columns, damage.rows[0], strict=True))  # damage by kind
        assert lost["Lost"] == str(s["objects_lost"]) and lost["Ghost detections"] == \
            str(s["ghosts"]) and lost["Class flips"] == str(s["class_flips"])
        assert row["Images"] == num(s["images"]) == "5"
        for col, key in (("mAP@0.5:0.95 clean", "clean_map"), ("mAP@0.5:0.95 attacked",
                                                               "adv_map"),
                         ("mAP@0.5 clean", "clean_map50"), ("mAP@0.5 attacked", "adv_map50")):
            assert row[col] == num(s[key]), col
    html = report["html"]
    for rid in report["ids"]["landmarks"]:
        assert f"<td class=\"num\">{num(report['runs'][rid]['summary']['adv_mre'])}</td>" in html


def test_curves_one_point_per_eps_from_the_summaries(report):
    curves, runs, ids = report["curves"], report["runs"], report["ids"]
    by = {(c.task, c.metric, c.label.split(" \u2014")[0]): c for c in report["curves"]}
    expected = {
        ("landmarks", "mre:mm", "PGD Linf, 2 steps"): (ids["landmarks"][:2], "adv_mre"),
        ("landmarks", "sdr:mm", "PGD Linf, 2 steps"): (ids["landmarks"][:2], "adv_sdr_2"),
        ("landmarks", "mre:mm", "PGD L2, 2 steps"): ([ids["landmarks"][2]], "adv_mre"),
        ("landmarks", "mre:mm", "IFGSM Linf, 2 steps"): ([ids["landmarks"][3]], "adv_mre"),
        ("detection", "map", "PGD Linf, 2 steps"): (ids["detection"], "adv_map"),
        ("detection", "map50", "PGD Linf, 2 steps"): (ids["detection"], "adv_map50"),
        ("classification", "accuracy", "PGD Linf, 2 steps"):
            ([ids["classification"][0], ids["classification"][2], ids["rerun"][0]],
             "adv_accuracy"),
        ("segmentation", "dice", "PGD Linf, 2 steps"): (ids["segmentation"], "mean_dice_truth"),
    }
    assert len(curves) == 3 * 2 + 2 + 1 + 1  # landmarks: 3 attack/norms x (MRE, SDR)
    for key, (run_ids, field) in expected.items():
        curve = by[key]
        eps = [p.eps for p in curve.points]
        assert eps == sorted(set(eps)) and len(eps) == len(run_ids), key  # one point per eps
        assert sorted(p.run_id for p in curve.points) == sorted(run_ids), key
        for p in curve.points:
            s = runs[p.run_id]["summary"]
            assert p.value == pytest.approx(s[field]) and p.n == s["images"]
            assert p.eps == pytest.approx(runs[p.run_id]["params"]["attack"]["eps"])
    assert "n = 8" in by[("classification", "accuracy", "PGD Linf, 2 steps")].n_text
    html = report["html"]
    assert "Linf budget" in html or "Linf 8/255" in html
    # the plotted-points table has one row per point of the first metric's curves
    assert html.count("Linf 8/255") >= 4


def test_unfinished_runs_are_summarised_from_their_rows(store_path, tmp_path):
    """A run stopped part-way has no stored summary: its table and curve point come from its
    rows through the task's own summary function (detection: dataset mAP on the true boxes)."""
    import shutil

    from medrobust.tasks import get_task

    db = tmp_path / "copy.db"
    shutil.copy(store_path["db"], db)
    with Store(db) as store:
        added = {}
        for task in ("landmarks", "detection"):
            source = store.get_run(store_path["ids"][task][1])  # pgd linf 8/255
            params = {**source["params"], "attack": {**source["params"]["attack"],
                                                     "eps": 4 / 255}}
            rid, _ = store.start_run(source["command"], params, model=source["model"],
                                     dataset=source["dataset"])
            rows = store.rows("task_attack_results", run_id=source["id"])[:2]
            table = _table()
            for r in rows:
                store.put(table, rid, r["dataset_index"], {k: r[k] for k in table.columns})
            added[task] = (rid, rows)
        ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
        curves = {(c.task, c.metric, c.label): c for c in budget_curves(ctx)}
        section = task_attack_section(ctx)
        ds = load_dataset("voc", "test", data_dir=store_path["root"] / "voc", size=32)
    subs = {s.anchor: s for s in section.subsections}
    for task, (rid, rows) in added.items():
        sub = subs[f"task-attack-run-{rid}"]
        assert "running" in sub.blocks[0].text  # the warning note comes first
        table = _blocks(sub, Table)[0]  # detection adds its damage-by-kind table
        row = dict(zip(table.columns, table.rows[0], strict=True))
        assert row["Images"] == "2"
        expected = get_task(task).attack_summary(rows, ds)
        metric, key = ("mre:mm", "adv_mre") if task == "landmarks" else ("map", "adv_map")
        curve = curves[(task, metric, "PGD Linf, 2 steps")]
        assert [round(p.eps * 255) for p in curve.points] == [2, 4, 8]
        point = next(p for p in curve.points if p.run_id == rid)
        assert point.n == 2 and point.value == pytest.approx(expected[key])
        col = "MRE attacked (mm)" if task == "landmarks" else "mAP@0.5:0.95 attacked"
        assert row[col] == num(expected[key])


def _table():
    from medrobust.campaigns.task_attack import TASK_ATTACK_TABLE

    return TASK_ATTACK_TABLE


def test_nothing_without_gradient_runs(tmp_path):
    with Store(tmp_path / "s.db") as store:
        rid, _ = store.start_run("train", {"model": "smallcnn"}, model={"dir": "/nowhere"},
                                 dataset={"dataset": "synthetic", "size": 16, "n": 4})
        store.finish_run(rid, "completed", {"model": "smallcnn"})
        ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
        assert task_attack_section(ctx) is None and budget_section(ctx) is None
        html = build_report(store, tmp_path / "rep").read_text()
    assert 'id="task-attacks"' not in html and 'id="budget-curves"' not in html


def test_pick_examples_is_deterministic():
    rows = [{"dataset_index": i, "clean_metric": 1.0, "adv_metric": 1.0 + d}
            for i, d in enumerate([0.5, 2.0, 0.1, 2.0, 0.7])]
    picks = pick_examples(rows, "landmarks")
    assert [(n, r["dataset_index"]) for n, r in picks] == [("worst", 1), ("median", 4)]
    det = pick_examples([{"dataset_index": 3, "clean_metric": 0.5, "adv_metric": 0.1}],
                        "detection")
    assert [n for n, _ in det] == ["worst"]


def test_panels_draw_every_element():
    """Confident boxes of both classes and every landmark end up on the axes, with a legend."""
    img = np.zeros((32, 32, 3), np.uint8)
    dets = np.array([[2, 2, 10, 10, 0.9, 0], [5, 5, 20, 20, 0.2, 1]])
    adv = np.array([[1, 1, 30, 30, 0.8, 1]])
    fig = detection_panel(img, img, (np.array([[3, 3, 9, 9]]), np.array([0])), dets, adv,
                          ("RBC", "WBC"), 0.3, np.full((3, 32, 32), 0.01), "t")
    rects = [len(ax.patches) for ax in fig.axes[:3]]
    assert rects == [1, 1, 1]  # the 0.2 detection is below the threshold
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"RBC", "WBC", "truth", "clean", "adversarial"} <= set(legend)
    assert "2.55/255" in fig.axes[3].get_title()
    pts = np.array([[3.0, 4.0], [10.0, 12.0]])
    fig = landmark_panel(img[..., :1], None, pts, pts + 1, pts + 5, None, "t")
    assert len(fig.axes) == 2 and len(fig.axes[1].lines) == 2  # one displacement per landmark


def test_protocol_curves_are_drawn_once(store_path, tmp_path, capsys):
    """One protocol run (``evaluate --attack``) and one plain ``attack pgd`` on one landmark
    model. The protocol's campaigns are drawn by the adversarial-training section (one line per
    model); the budget curves keep the plain run only. Both use PGD, L2 and 2 steps, so the
    curve key (which ignores budget and step) matched: the budget section used to merge the
    protocol's points into the plain run's line, drawing them a second time."""
    db = str(tmp_path / "s.db")
    model = str(store_path["root"] / "m_lm")
    plain = run_json(capsys, "attack", "pgd", "--model", model, "--norm", "l2", "--eps", "0.25",
                     "--steps", "2", "--store", db)["run_id"]
    protocol = run_json(capsys, "evaluate", "--model", model, "--attack", "pgd", "--l2",
                        "0.5,1", "--steps", "2", "--store", db)
    cells = {c["run_id"] for c in protocol["cells"]}
    assert len(cells) == 2 and plain not in cells
    with Store(db) as store:
        ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
        curves = budget_curves(ctx)
        budget = budget_section(ctx)
        groups = collect_protocol(ctx)
        page = build_report(store, tmp_path / "report").read_text()
    # the budget section: the plain run's line, and nothing of the protocol's
    assert {p.run_id for c in curves for p in c.points} == {plain}
    assert budget is not None
    (sub,) = budget.subsections
    (figure,) = _blocks(sub, Figure)
    assert " at 0.25" in figure.alt and " at 0.5" not in figure.alt and " at 1" not in figure.alt
    (table,) = _blocks(sub, Table)
    assert [r[table.columns.index("Run")] for r in table.rows] == [str(plain)]
    notes = [b.text for b in budget.blocks if getattr(b, "kind", "") == "note"]
    assert any("adversarial-training section" in n for n in notes), notes
    # the adversarial-training section: the protocol's line, built from its campaigns only
    (group,) = groups
    (evaluated,) = group.models
    assert {c["run_id"] for c in evaluated.summary["cells"]} == cells
    ((_, lines),) = curve_lines(group).items()
    assert [sorted(ln.points) for ln in lines] == [[0.5, 1.0]]
    assert 'id="budget-landmarks"' in page and 'id="robust-training"' in page
    # one chart per section, and a protocol budget ('at 0.5' in one, 'at L2 0.5' in the
    # other's words) in one of them
    line_charts = re.findall(r'alt="(Line chart[^"]*)"', page)
    assert len(line_charts) == 2
    assert sum(bool(re.search(r" at (?:L2 )?0\.5\b", alt)) for alt in line_charts) == 1
