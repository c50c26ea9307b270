"""The "At a glance" panel states the store's own numbers; the demo is idempotent; one unit and
dataset-name convention throughout the page.

One real store, filled through the CLI: ``medrobust demo`` (trained classifier, one-pixel
campaign, denoiser defences with adaptive evaluation), run twice into the same folder, plus PGD
runs at two budgets on the demo's model.
"""

from __future__ import annotations

import html as html_lib
import re
from pathlib import Path

import pytest
from cli_util import CapturedOutput, run_json

from medrobust.metrics.proportion import proportion
from medrobust.report import build_report
from medrobust.report.blocks import pct
from medrobust.report.context import ReportContext
from medrobust.report.glance import best_defence, collect, glance_section
from medrobust.report.names import budget_text, dataset_display_name
from medrobust.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread_module")]

DEMO = ["--epochs", "1", "--limit", "8", "--population", "20", "--generations", "3",
        "--device", "cpu", "--seed", "0"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("demo")
    out = root / "demo"
    with CapturedOutput() as cap:
        first = run_json(cap, "demo", "--out", str(out), *DEMO)
        db = out / "medrobust.db"
        with Store(db) as store:
            runs_after_first = [(r["id"], r["command"]) for r in store.runs()]
        second = run_json(cap, "demo", "--out", str(out), *DEMO)
        with Store(db) as store:
            runs_after_second = [(r["id"], r["command"]) for r in store.runs()]
        demo_html = (out / "report.html").read_text()
        pgd = [run_json(cap, "attack", "pgd", "--model", str(out / "model"), "--eps", eps,
                        "--steps", "2", "--limit", "8", "--store", str(db), "--device", "cpu")
               for eps in ("2/255", "8/255")]

    report_dir = root / "report"
    with Store(db) as store:
        path = build_report(store, report_dir)
        runs = store.runs()
        ctx = ReportContext(store=store, out_dir=root / "ctx", runs=runs)
        models = collect(ctx)
    return {"first": first, "second": second, "db": db, "runs": {r["id"]: r for r in runs},
            "after_first": runs_after_first, "after_second": runs_after_second,
            "demo_html": demo_html, "html": path.read_text(), "models": models,
            "pgd": [p["run_id"] for p in pgd]}


def _by(runs: dict, command: str) -> list[dict]:
    return [r for r in runs.values() if r["command"] == command]


def test_demo_twice_records_each_run_once(demo):
    assert demo["after_first"] == demo["after_second"]
    commands = [c for _, c in demo["after_second"]]
    assert commands.count("train") == 1 and commands.count("attack onepixel") == 1
    # the demo's own report (written by the second demo) lists every run once in provenance
    page = demo["demo_html"]
    prov = page[page.index('id="provenance"'):]
    first_table = prov[:prov.index("</table>")]
    ids = re.findall(r"<tr><td class=\"num\">(\d+)</td>", first_table)
    assert sorted(map(int, ids)) == [i for i, _ in demo["after_second"]]


def test_glance_numbers_equal_the_store_summaries(demo):
    runs = demo["runs"]
    (g,) = demo["models"]
    train = _by(runs, "train")[0]["summary"]["test"]
    assert g.clean.p == proportion(round(train["accuracy"] * train["n"]), train["n"])
    assert g.clean.rate == pytest.approx(train["accuracy"])
    onepixel = _by(runs, "attack onepixel")[0]["summary"]
    assert [(e.p.k, e.p.n) for e in g.onepixel] == [(onepixel["successes"],
                                                     onepixel["attacked"])]
    # robust accuracy without defence: the PGD runs' summaries
    for rid in demo["pgd"]:
        s = runs[rid]["summary"]
        a = runs[rid]["params"]["attack"]
        e = g.robust[("PGD", "linf", a["eps"])]
        assert e.run_id == rid and e.p.n == s["images"]
        assert e.rate == pytest.approx(s["adv_accuracy"])
    # with and without each defence: the adaptive runs' summaries, n and interval
    adaptive = _by(runs, "defend adaptive")
    assert set(g.adaptive) == {r["summary"]["label"] for r in adaptive}
    for run in adaptive:
        s = run["summary"]
        cells = g.adaptive[s["label"]]
        for eps, value in s["pgd-linf"].items():
            e = cells[("pgd-linf", float(eps))]
            assert e.rate == pytest.approx(value)
            assert e.p.n == s["n"]["pgd-linf"][eps]
            assert e.p.ci95 == pytest.approx(tuple(s["ci95"]["pgd-linf"][eps]))
    # best defence: highest ensemble accuracy at the largest common Linf budget, cost from
    # the defend run of the same defence
    costs = {r["summary"]["label"]: r["summary"]["clean_accuracy_cost"]
             for r in _by(runs, "defend")}
    defences = [r["summary"] for r in adaptive if r["summary"]["label"] != "none"]
    eps = max(set.intersection(*[set(s["ensemble-linf"]) for s in defences]), key=float)
    expected = sorted(defences, key=lambda s: (-s["ensemble-linf"][eps],
                                               costs.get(s["label"], 0.0), s["label"]))[0]
    best = best_defence(g)
    assert best is not None and best.label == expected["label"]
    assert best.attack == "ensemble-linf" and best.eps == pytest.approx(float(eps))
    assert best.cost == pytest.approx(costs[expected["label"]])
    # and the page says so
    page = html_lib.unescape(demo["html"])
    glance = page[page.index('id="overview"'):page.index('id="model-quality"')]
    assert f"Clean accuracy: {pct(train['accuracy'])} (n = {train['n']}" in glance
    # a winner is named only when its interval clears every other defence's
    lead = expected["ci95"]["ensemble-linf"][eps]
    ties = [d["label"] for d in defences if d is not expected
            and d["ci95"]["ensemble-linf"][eps][0] <= lead[1]
            and lead[0] <= d["ci95"]["ensemble-linf"][eps][1]]
    assert [label for label, _ in best.overlapping] == sorted(
        ties, key=lambda t: next((-d["ensemble-linf"][eps], costs.get(t, 0.0), t)
                                 for d in defences if d["label"] == t))
    if ties:
        assert "Best defence: no defence is distinguishable" in glance
        assert all(t in glance for t in [expected["label"], *ties])
    else:
        assert f"Best defence: {expected['label']}" in glance
        assert f"clean-accuracy cost {100 * costs[expected['label']]:.1f} points" in glance
    assert "Small samples" in glance  # 4 to 8 images per cell
    assert glance.index("At a glance") < page.index("Appendix: provenance")


def test_every_run_is_shown_outside_the_appendix(demo):
    page = html_lib.unescape(demo["html"])
    prov = page[page.index('id="provenance"'):]
    where = prov[prov.index("Shown in"):]
    rows = re.findall(r"<tr><td class=\"num\">(\d+)</td><td>[^<]*</td><td>[^<]*</td>"
                      r"<td>([^<]*)</td></tr>", where)
    shown = {int(rid): text for rid, text in rows}
    assert set(shown) == set(demo["runs"])
    for rid, text in shown.items():
        assert "only here" not in text, (rid, demo["runs"][rid]["command"])


def test_units_and_display_names_in_the_page(demo):
    page = html_lib.unescape(demo["html"])
    assert "Synthetic (built-in) test split" in page
    for text in ("Linf 2/255", "Linf 8/255", "L2 0.5"):
        assert text in page
    # no raw budget in radians of the [0,1] scale, no 'linf 8/255' lower-case variant
    assert "0.0313725" not in page and "0.00784314" not in page
    assert "linf 8/255" not in page
    assert budget_text("linf", 8 / 255) == "Linf 8/255"
    assert budget_text("l2", 0.5) == "L2 0.5"


def test_dataset_display_names():
    assert dataset_display_name({"dataset": "medmnist", "flag": "pneumoniamnist"}) == \
        "PneumoniaMNIST"
    assert dataset_display_name("medmnist/pneumoniamnist") == "PneumoniaMNIST"
    assert dataset_display_name("pneumoniamnist") == "PneumoniaMNIST"
    assert dataset_display_name({"dataset": "bccd", "size": 64}) == "BCCD"
    assert dataset_display_name({"dataset": "segfolder",
                                 "data_dir": "/d/dsb2018_nuclei"}) == "DSB2018 nuclei"
    assert dataset_display_name({"dataset": "landmarks",
                                 "data_dir": "/d/isbi2015_ceph"}) == "ISBI 2015 cephalograms"
    assert dataset_display_name({"dataset": "segfolder", "data_dir": "/x/mine"}) == \
        "segfolder (mine)"


def test_glance_without_models_says_so(tmp_path: Path):
    with Store(tmp_path / "s.db") as store:
        rid, _ = store.start_run("train-denoiser", {}, model={"dir": "/nowhere"})
        store.finish_run(rid, "completed", {})
        ctx = ReportContext(store=store, out_dir=tmp_path, runs=store.runs())
        section = glance_section(ctx)
    assert not section.subsections
    assert any("No model results" in getattr(b, "text", "") for b in section.blocks)


@pytest.mark.parametrize("n,named", [(8, False), (400, True)])
def test_best_defence_is_named_only_when_its_interval_clears_the_others(n, named):
    """87.5 % vs 75.0 % on 8 images overlap (no winner); the same shares on 400 images do not."""
    from medrobust.report.glance import Estimate, ModelGlance, _headline

    g = ModelGlance("m", "smallcnn", "classification")
    for label, share in (("none", 0.25), ("median3", 0.875), ("dae", 0.75)):
        g.adaptive[label] = {("ensemble-linf", 8 / 255): Estimate(
            proportion(round(share * n), n), 1)}
    best = best_defence(g)
    assert best is not None and best.label == "median3"
    assert best.distinguishable is named
    assert [label for label, _ in best.overlapping] == ([] if named else ["dae"])
    line = next(t for t in _headline(g) if t.startswith("Best defence"))
    assert ("no defence is distinguishable" in line) is not named
    assert ("dae" in line) is not named


def test_table_headers_never_break_mid_word(demo):
    """'overflow-wrap: anywhere' on cells broke narrow headers as 'Accurac y', 'H os t'."""
    css = demo["html"][:demo["html"].index("</style>")]
    assert "overflow-wrap: anywhere;" not in css and "word-break: break-all" not in css
    assert re.search(r"th, td \{[^}]*overflow-wrap: break-word", css)
