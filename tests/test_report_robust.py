"""The adversarial-training report section, on a real store built through the CLI.

STD, VAT@0.1 and adaptive-margin models are trained (one epoch, a 4-channel smallcnn on 16x16
synthetic images) and each is judged by the attack protocol; the report must show exactly the
protocol's numbers, one curve per model, the adaptive model's margins, alt text on every image
and a finding that follows from the numbers. The finding's logic (direction of the metric,
tolerances, missing models) is also checked on hand-made summaries, where the answer is known.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from medrobust.cli.main import main
from medrobust.report import build_report
from medrobust.report.builder import SECTION_BUILDERS
from medrobust.report.context import ReportContext
from medrobust.report.robust_plots import curve_alt, curve_figure, margin_data
from medrobust.report.robust_section import (
    MAX_COLUMNS,
    BudgetSet,
    Evaluated,
    Group,
    budget_tables,
    collect,
    finding,
    model_label,
    robust_section,
)
from medrobust.store import Store
from medrobust.training.robust.margins import Margins

pytestmark = pytest.mark.usefixtures("one_thread_module")

LEVELS = (0.1, 0.3)
ATTACKS = ("pgd", "ifgsm")


def _json(*args: str) -> dict:
    """One CLI command's ``--json`` line. ``cli_util.run_json`` reads stdout through the
    function-scoped ``capsys``; the store here is built once per module, so stdout is
    redirected directly."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main([*args, "--json"])
    assert code == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Three trained models, each evaluated by the protocol, and the report of that store."""
    root = tmp_path_factory.mktemp("robust_report")
    db = str(root / "s.db")
    common = ["--dataset", "synthetic", "--size", "16", "--store", db, "--epochs", "1"]
    std = root / "std"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEDROBUST_QUIET", "1")
        _json("train", *common, "--width", "4", "--out", str(std))
        _json("train", *common, "--robust", "vat", "--eps", "0.1", "--xi-from", str(std),
              "--out", str(root / "vat"))
        _json("train", *common, "--robust", "adaptive-margin", "--delta", "0.05",
              "--xi-from", str(std), "--out", str(root / "am"))
        summaries = {}
        for name in ("std", "vat", "am"):
            summaries[name] = _json(
                "evaluate", "--model", str(root / name), "--attack", ",".join(ATTACKS),
                "--l2", ",".join(map(str, LEVELS)), "--steps", "2", "--ifgsm-steps", "2",
                "--limit", "8", "--store", db)
        with Store(db) as store:
            report = build_report(store, root / "report")
    return {"root": root, "db": db, "summaries": summaries,
            "html": report.read_text(encoding="utf-8")}


class _Page(HTMLParser):
    """Tables (as rows of cell texts, bold marked '*') and images (alt) of one section."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[dict[str, str]] = []
        self._cell: list[str] | None = None
        self._bold = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "strong":
            self._bold = True
        elif tag == "img":
            self.images.append(dict(attrs))

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif tag == "strong":
            self._bold = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(f"*{data}*" if self._bold else data)


def _section(page: str) -> str:
    start = page.index('<section id="robust-training"')
    end = page.index('<section id="provenance"')
    return page[start:end]


def _pct(v: float) -> str:
    return f"{100 * v:.1f} %"


def test_section_is_registered_after_the_defences():
    names = [fn.__name__ for fn in SECTION_BUILDERS]
    assert names.index("robust_section") > names.index("defence_section")
    assert names.index("robust_section") > names.index("budget_section")


def test_table_shows_the_protocol_numbers(built):
    page = built["html"]
    assert "Adversarial training: robustness under the attack protocol" in page
    section = _section(page)
    parser = _Page()
    parser.feed(section)
    assert len(parser.tables) == 1, "2 attacks x 2 budgets fit one table"
    head, *rows = parser.tables[0]
    assert len(head) <= MAX_COLUMNS
    assert head[:3] == ["Model", "n", "Clean accuracy"]
    # budgets in one convention: L2 on [0,1] with the per-pixel RMS of 3x16x16 images
    assert head[3] == "PGD L2 0.1 (RMS 0.92/255)" and head[6] == "IFGSM L2 0.3 (RMS 2.76/255)"
    labels = {"std": "STD", "vat": "VAT L2 0.1 (RMS 0.92/255)",
              "am": "Adaptive margin, D = L2 0.05 (RMS 0.46/255)"}
    assert [r[0] for r in rows] == list(labels.values())
    plain = [[c.strip("*") for c in r] for r in rows]
    for name, label in labels.items():
        s = built["summaries"][name]
        row = next(r for r in plain if r[0] == label)
        expect = [label, str(s["images"]), _pct(s["clean"])]
        expect += [_pct(next(c["attacked"] for c in s["cells"]
                             if c["attack"] == a and c["eps"] == e))
                   for a in ATTACKS for e in LEVELS]
        expect += [_pct(s["average_by_attack"][a]) for a in ATTACKS]
        expect += [_pct(s["average_attacked"])]
        assert row == expect, name
    # the best of each numeric column is bold (all ties), nothing else
    for col in range(2, len(head)):
        values = [float(r[col].rstrip(" %")) for r in plain]
        bold = [rows[i][col].startswith("*") for i in range(len(rows))]
        assert bold == [v == max(values) for v in values], head[col]


def test_one_curve_per_model_and_alt_text_everywhere(built):
    section = _section(built["html"])
    parser = _Page()
    parser.feed(section)
    assert parser.images and all(img.get("alt", "").strip() for img in parser.images)
    assert all(img.get("alt", "").strip() for img in _all_images(built["html"]))
    with Store(built["db"]) as store:
        ctx = ReportContext(store=store, out_dir=built["root"] / "x", runs=store.runs())
        (group,) = collect(ctx)
    fig = curve_figure(group)
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["PGD (L2)", "IFGSM (L2)"]
    for ax in panels:
        lines = ax.get_lines()
        assert len(lines) == 3, "one line per model"
        assert all(line.get_xdata()[0] == 0 for line in lines), "clean score at budget 0"
        assert "L2 budget" in ax.get_xlabel() and ax.get_ylabel() == "accuracy (%)"
    alt = curve_alt(group)
    assert alt.count("STD: ") == 2
    curve_img = next(i for i in parser.images if i["alt"].startswith("Line chart"))
    assert html.unescape(curve_img["alt"]) == alt


def _all_images(page: str) -> list[dict[str, str]]:
    parser = _Page()
    parser.feed(page)
    return parser.images


def test_margin_histogram_of_the_adaptive_model(built):
    section = _section(built["html"])
    parser = _Page()
    parser.feed(section)
    hist = [i for i in parser.images if i["alt"].startswith("Histogram of the final L2 margins")]
    assert len(hist) == 1 and "Adaptive margin, D = L2 0.05" in hist[0]["alt"]
    values = Margins.load(built["root"] / "am" / "margins.safetensors").values
    assert f"mean {float(values.mean()):.3g}" in hist[0]["alt"]
    assert "epoch 0: 0.05" in hist[0]["alt"] and "epoch 1: " in hist[0]["alt"]
    with Store(built["db"]) as store:
        ctx = ReportContext(store=store, out_dir=built["root"] / "x", runs=store.runs())
        (group,) = collect(ctx)
    am = next(m for m in group.models if m.method == "adaptive-margin")
    data = margin_data(am)
    assert data is not None and data.source.startswith("final margins from margins.safetensors")
    assert data.factor == pytest.approx(255 / (3 * 16 * 16) ** 0.5)
    # Two records of the final margins must agree: the file the left panel bins, and the last
    # epoch's histogram that training stored in the checkpoint's history (the right panel's
    # last point). Both bin from 0 to max(largest margin, D), so the report's 20 edges refine
    # the history's 10 and each history bin is the sum of the report bins inside it. A file
    # written from other margins than the last epoch's, or a report binning over another
    # range, breaks this.
    final = am.meta["history"][-1]["margins"]
    v = values.numpy()
    assert data.edges[0] == 0.0 and data.edges[-1] == max(float(v.max()), am.robust["delta"])
    step, rest = divmod(len(data.edges) - 1, len(final["counts"]))
    assert rest == 0, "the report's bins must split the history's evenly to be compared"
    assert data.edges[::step] == final["edges"]
    assert [sum(data.counts[i:i + step]) for i in range(0, len(data.counts), step)] \
        == final["counts"]
    assert (data.final_mean, float(v.min()), float(v.max())) == pytest.approx(
        (final["mean"], final["min"], final["max"]))
    assert data.means[-1] == pytest.approx(data.final_mean)


def test_finding_follows_the_numbers(built):
    s = built["summaries"]
    text = html.unescape(re.sub(r"<[^>]+>", "", _section(built["html"])))

    def pair(x):
        return sum(c["attacked"] for c in x["cells"]) / len(x["cells"])

    am, vat = pair(s["am"]), pair(s["vat"])
    beats = am > vat
    kept = s["am"]["clean"] >= s["std"]["clean"] - 0.01
    verdict = "yes" if beats and kept else "no"
    assert f"at L2 0.1, L2 0.3: {verdict}." in text
    assert f"averages {_pct(am)} accuracy over PGD and IFGSM against {_pct(vat)} for VAT" in text
    assert ("beats every VAT level" if beats else "does not beat every VAT level") in text
    assert f"its clean accuracy is {_pct(s['am']['clean'])} against " \
           f"{_pct(s['std']['clean'])} for STD" in text
    assert ("within 1 percentage point" if kept else "more than 1 percentage point worse") \
        in text


def test_no_heading_without_protocol_runs(built):
    with Store(built["db"]) as store:
        runs = [r for r in store.runs() if r["command"] == "train"]
        assert robust_section(ReportContext(store=store, out_dir=built["root"] / "y",
                                            runs=runs)) is None


# -- the finding and the tables on hand-made summaries -------------------------------------------

def _model(method: str, clean: float, attacked: list[float], folder: str, metric="mre",
           unit="mm", higher=False, attacks=ATTACKS, levels=LEVELS, **robust) -> Evaluated:
    cells = [{"attack": a, "norm": "l2", "eps": e, "budget": f"L2 {e:g} (RMS 1/255 per pixel)",
              "run_id": 0, "images": 5, "clean": clean, "attacked": v}
             for (a, e), v in zip([(a, e) for a in attacks for e in levels], attacked,
                                  strict=True)]
    by = {a: sum(c["attacked"] for c in cells if c["attack"] == a) / len(levels)
          for a in attacks}
    summary = {"metric": metric, "unit": unit, "higher_is_better": higher, "clean": clean,
               "images": 5, "cells": cells, "average_by_attack": by,
               "average_attacked": sum(attacked) / len(attacked)}
    meta = {"robust": {"method": method, **robust}} if method != "none" else {}
    m = Evaluated({"id": 1}, summary, folder, meta, method)
    m.label = model_label(method, m.robust)
    return m


def _group(*models: Evaluated, task="landmarks") -> Group:
    return Group(task, {"dataset": "landmarks", "split": "test"},
                 [BudgetSet("l2", LEVELS, ATTACKS, '{"pgd_steps": 2, "ifgsm_steps": 2}',
                            list(models))])


def test_finding_on_a_lower_is_better_metric():
    std = _model("none", 2.0, [9, 9, 9, 9], "s")
    vat = _model("vat", 2.5, [5, 5, 5, 5], "v", eps=0.5)
    good = _model("adaptive-margin", 2.1, [4, 4, 4, 4], "a", delta=0.1)
    assert ": yes." in finding(_group(std, vat, good))
    blurry = _model("adaptive-margin", 2.3, [4, 4, 4, 4], "a", delta=0.1)  # 0.3 mm worse
    text = finding(_group(std, vat, blurry))
    assert ": no." in text and "more than 0.2 mm worse" in text
    weak = _model("adaptive-margin", 2.0, [5, 5, 6, 6], "a", delta=0.1)
    assert "does not beat every VAT level" in finding(_group(std, vat, weak))
    px = [_model(k, c, v, f, unit="px", **r) for k, c, v, f, r in (
        ("none", 2.0, [9] * 4, "s", {}), ("vat", 2.5, [5] * 4, "v", {"eps": 0.5}),
        ("adaptive-margin", 2.1, [4] * 4, "a", {"delta": 0.1}))]
    assert "cannot say" in finding(_group(*px)) and "needs MRE in mm" in finding(_group(*px))


def test_finding_says_what_is_missing():
    vat = _model("vat", 0.9, [0.5] * 4, "v", metric="dice", higher=True, eps=0.5)
    am = _model("adaptive-margin", 0.9, [0.6] * 4, "a", metric="dice", higher=True, delta=0.1)
    text = finding(_group(vat, am))
    assert ": cannot say: the store holds no standard (STD) model evaluated" in text
    assert "adaptive margin averages 60.0" not in text and "0.600 Dice" in text
    assert "adaptive-margin model" in finding(_group(vat))


def test_wide_tables_are_split_per_attack():
    levels = (0.5, 1.0, 2.0)
    m = _model("none", 0.9, [0.1] * 6, "s", metric="dice", higher=True, levels=levels)
    bset = BudgetSet("l2", levels, ATTACKS, '{"pgd_steps": 2, "ifgsm_steps": 2}', [m])
    tables = budget_tables(bset, "dice", "", True)
    assert len(tables) == 3 and all(len(t.columns) <= MAX_COLUMNS for t in tables)
    assert tables[-1].columns[-1] == "Average attacked"


@pytest.mark.slow
def test_section_fits_a_1400_px_window(built):
    """In a real browser: no table of the section scrolls sideways, every image has alt text
    and decodes (skipped without Playwright and a Chromium, like test_report_browser)."""
    from test_report_browser import VIEWPORT, _browser, _launch

    sync_playwright, exe = _browser()
    with sync_playwright() as p:
        browser = _launch(p, exe)
        try:
            page = browser.new_page(viewport={"width": VIEWPORT, "height": 900})
            page.goto((Path(built["root"]) / "report" / "report.html").as_uri(),
                      wait_until="load")
            wraps = page.evaluate("() => [...document.querySelectorAll("
                                  "'#robust-training .table-wrap')].map(w => "
                                  "w.scrollWidth <= w.clientWidth)")
            assert wraps and all(wraps), "a table of the section scrolls sideways"
            images = page.evaluate("() => [...document.querySelectorAll("
                                   "'#robust-training img')].map(i => "
                                   "[(i.getAttribute('alt') || '').trim(), i.naturalWidth])")
            assert len(images) == 2 and all(alt and w > 0 for alt, w in images)
        finally:
            browser.close()


def test_other_budget_sets_get_their_own_table_and_unfinished_runs_a_note(built):
    """A model evaluated at other budgets is not mixed into the first table; a protocol run that
    did not finish is named, not silently dropped."""
    summaries = built["summaries"]
    am_run = summaries["am"]["run_id"]

    def change(run):
        if run["id"] == am_run:
            run["status"] = "running"
        return run

    with Store(built["db"]) as store:
        runs = [change(dict(r)) for r in store.runs()]
        std = next(r for r in runs if r["id"] == summaries["std"]["run_id"])
        other = {**std, "id": 10_000, "params": {**std["params"], "levels": [0.5]},
                 "summary": {**std["summary"], "cells": [
                     {**c, "eps": 0.5, "budget": "L2 0.5 (RMS 4.6/255 per pixel)"}
                     for c in std["summary"]["cells"] if c["eps"] == LEVELS[0]]}}
        ctx = ReportContext(store=store, out_dir=built["root"] / "z", runs=[*runs, other])
        section = robust_section(ctx)
    assert section is not None
    notes = [b.text for b in section.blocks if getattr(b, "kind", "") == "note"]
    assert any(f"run(s) {am_run} did not finish" in n for n in notes)
    (sub,) = section.subsections
    tables = [b for b in sub.blocks if getattr(b, "kind", "") == "table"]
    assert len(tables) == 2
    assert [r[0] for r in tables[0].rows] == ["STD", "VAT L2 0.1 (RMS 0.92/255)"]
    assert [r[0] for r in tables[1].rows] == ["STD"] and "L2 0.5" in tables[1].columns[3]
    text = " ".join(b.texts[0] for b in sub.blocks if getattr(b, "kind", "") == "paragraphs")
    assert "no adaptive-margin model has been evaluated" in text
