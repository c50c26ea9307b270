"""Tests of the one-pixel study: statistics, heatmaps, periodicity and ``run_study`` outputs.

The store is filled by hand with attacks whose numbers are easy to check on paper.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from medrobust.analysis.chromatic import colour_distance, neighbour_mean
from medrobust.analysis.periodicity import (
    chance_even_even,
    map_parity,
    parity_table,
    periodicity,
)
from medrobust.analysis.spatial import (
    attack_points,
    colour_columns,
    heatmap_shape,
    location_heatmap,
    spatial_stats,
)
from medrobust.analysis.study import chromatic_summary, run_image_size, run_study
from medrobust.campaigns.onepixel import ONEPIXEL_TABLE
from medrobust.errors import MedrobustError
from medrobust.store import Store

SPEC = {"dataset": "synthetic", "size": 16, "n": 20, "seed": 0, "split": "test"}
MODEL = {"dir": "/nowhere/model", "model": "smallcnn", "head": "softmax",
         "class_names": ["normal", "mitosis"]}
M2N, N2M = "mitosis->normal", "normal->mitosis"

# (item, direction, status, x, y, colour, h, score change)
ATTACKS = [
    (0, M2N, "success", 2, 4, [10, 20, 30], 0.50, -0.60),
    (1, M2N, "success", 4, 6, [20, 40, 60], 0.40, -0.50),
    (2, M2N, "success", 6, 3, [30, 60, 90], 0.30, -0.40),
    (3, M2N, "failed", 1, 1, [255, 0, 0], 0.10, -0.05),
    (4, N2M, "success", 8, 8, [0, 0, 0], 0.80, -0.45),
    (5, N2M, "success", 9, 2, [100, 100, 100], 0.70, -0.42),
    (6, N2M, "success", 8, 8, [50, 50, 50], 0.60, -0.41),
]


def make_row(item: int, direction: str, status: str, x: int, y: int, colour: list[int],
             h: float, change: float) -> dict:
    label = 1 if direction == M2N else 0
    before = 0.9
    return {"dataset_index": item, "status": status, "success": int(status == "success"),
            "direction": direction, "label": label, "target": None, "queries": 100,
            "generations": 1, "x": x, "y": y, "pixels": [[x, y]], "colours": [colour],
            "original_colours": [[0, 0, 0]], "neighbour_means": [[0, 0, 0]], "h": h,
            "original_scores": [1 - before, before] if label else [before, 1 - before],
            "final_scores": [1 - before - change, before + change] if label
            else [before + change, 1 - before - change],
            "original_score": before, "final_score": before + change, "score_change": change,
            "seconds": 0.1}


def fill_store(store: Store, spec: dict = SPEC, attacks: list = ATTACKS, seed: int = 0) -> int:
    run_id, _ = store.start_run("attack onepixel", {"attack": {"pixels": 1, "seed": seed}},
                                model=MODEL, dataset=spec)
    for a in attacks:
        store.put(ONEPIXEL_TABLE, run_id, a[0], make_row(*a))
    skipped = {"dataset_index": 19, "status": "skipped", "success": 0, "direction": N2M,
               "label": 0, "queries": 0, "generations": 0, "pixels": [], "colours": [],
               "original_scores": [0.4, 0.6], "final_scores": [0.4, 0.6]}
    store.put(ONEPIXEL_TABLE, run_id, 19, skipped)
    store.finish_run(run_id, "completed", {"success_rate": 6 / 7})
    return run_id


@pytest.fixture
def store(tmp_path: Path):
    with Store(tmp_path / "s.db") as s:
        fill_store(s)
        yield s


def test_points_leave_out_skipped_and_keep_conventions(store: Store) -> None:
    points = attack_points(store.rows("onepixel_results"))
    assert len(points) == 7  # the skipped image has no pixel
    first = points[points["item"] == "5"].iloc[0]
    assert (first["X"], first["Y"]) == (9, 2)
    assert colour_columns(points) == ["R", "G", "B"]


def test_stats_equal_hand_computed_numbers(store: Store) -> None:
    stats = spatial_stats(attack_points(store.rows("onepixel_results")), "successful")
    m2n = stats[M2N]
    assert m2n["n"] == 3
    # X = 2, 4, 6; Y = 4, 6, 3; R = 10, 20, 30; G = 20, 40, 60; B = 30, 60, 90
    assert m2n["X"] == pytest.approx({"n": 3, "mean": 4.0, "median": 4.0, "sd": 2.0})
    assert m2n["Y"]["mean"] == pytest.approx(13 / 3)
    assert m2n["Y"]["median"] == 4.0
    assert m2n["Y"]["sd"] == pytest.approx(math.sqrt(7 / 3))  # sample SD, ddof = 1
    assert m2n["R"] == pytest.approx({"n": 3, "mean": 20.0, "median": 20.0, "sd": 10.0})
    assert m2n["G"] == pytest.approx({"n": 3, "mean": 40.0, "median": 40.0, "sd": 20.0})
    assert m2n["B"] == pytest.approx({"n": 3, "mean": 60.0, "median": 60.0, "sd": 30.0})
    # N2M: X = 8, 9, 8 -> mean 25/3, median 8; one attack has no SD
    assert stats[N2M]["X"]["mean"] == pytest.approx(25 / 3)
    assert stats[N2M]["X"]["median"] == 8.0


def test_stats_over_all_attacked_include_failed(store: Store) -> None:
    stats = spatial_stats(attack_points(store.rows("onepixel_results")), "attacked")
    assert stats[M2N]["n"] == 4
    assert stats[M2N]["X"]["mean"] == pytest.approx(13 / 4)  # 2, 4, 6, 1
    assert stats[M2N]["X"]["median"] == pytest.approx(3.0)
    assert stats[M2N]["R"]["mean"] == pytest.approx((10 + 20 + 30 + 255) / 4)


def test_single_attack_has_no_sd_and_greyscale_uses_I() -> None:
    rows = [make_row(0, M2N, "success", 3, 5, [77], 0.2, -0.3)]
    points = attack_points(rows)
    assert colour_columns(points) == ["I"]
    stats = spatial_stats(points)
    assert stats[M2N]["I"] == {"n": 1, "mean": 77.0, "median": 77.0, "sd": None}
    assert "R" not in stats[M2N]


def test_h_from_neighbour_mean_equals_hand_value() -> None:
    image = np.zeros((3, 3, 3), dtype=np.uint8)
    image[:, :] = [51, 102, 153]
    image[1, 1] = [0, 0, 0]  # the centre pixel itself does not count
    mean = neighbour_mean(image, 1, 1)
    assert mean == pytest.approx([51, 102, 153])
    # (255 - mean) / 255 = 0.8, 0.6, 0.4 -> sqrt((0.64 + 0.36 + 0.16) / 3)
    assert colour_distance([255, 255, 255], mean) == pytest.approx(math.sqrt(1.16 / 3))
    grey = np.array([[0, 30], [60, 90]], dtype=np.uint8)
    corner = neighbour_mean(grey, 0, 0)  # neighbours 30, 60, 90
    assert corner == pytest.approx([60.0])
    assert colour_distance([120], corner) == pytest.approx(60 / 255)


def test_heatmap_counts_at_chosen_pixels(store: Store) -> None:
    points = attack_points(store.rows("onepixel_results"))
    n2m = points[(points["direction"] == N2M) & points["success"]]
    counts = location_heatmap(n2m["X"], n2m["Y"], 16, 16)
    assert counts.shape == (16, 16)
    assert counts[8, 8] == 2  # two attacks on x = 8, y = 8
    assert counts[2, 9] == 1  # indexed [y, x]: the attack at x = 9, y = 2
    assert counts[9, 2] == 0
    assert counts.sum() == 3
    with pytest.raises(ValueError, match="outside"):
        location_heatmap([16], [0], 16, 16)


def test_image_size_from_dataset_or_fallbacks() -> None:
    assert run_image_size({"dataset": SPEC}) == ((16, 16), "reloaded dataset")
    size, source = run_image_size({"dataset": {"dataset": "no-such-dataset", "size": 28}})
    assert size == (28, 28) and "not loadable" in source
    size, source = run_image_size({"dataset": {"dataset": "no-such-dataset"}})
    assert size is None and "largest attacked coordinate" in source
    assert heatmap_shape([3, 9], [5, 2]) == (6, 10)
    assert heatmap_shape([3, 9], [5, 2], (16, 16)) == (16, 16)


def test_parity_counts_and_binomial_p_value() -> None:
    # (2,4) and (4,6) even/even; (6,3) x even, y odd; (1,1) odd/odd
    x, y = [2, 4, 6, 1], [4, 6, 3, 1]
    assert parity_table(x, y).tolist() == [[2, 1], [0, 1]]
    result = periodicity(x[:3], y[:3])
    assert (result["n"], result["even_even"]) == (3, 2)
    assert result["share"] == pytest.approx(2 / 3)
    assert result["table"] == [[2, 1], [0, 0]]
    assert result["alternative"] == "two-sided"
    # By hand: P(2) + P(3) = 3 * 0.25^2 * 0.75 + 0.25^3 = 0.15625 (P(0), P(1) exceed P(2))
    assert result["p_value"] == pytest.approx(0.15625)
    assert result["p_value"] == pytest.approx(binomtest(2, 3, 0.25).pvalue)
    big = periodicity([0] * 9 + [1] * 11, [0] * 20)
    assert big["p_value"] == pytest.approx(binomtest(9, 20, 0.25).pvalue)
    assert big["ci_low"] < 9 / 20 < big["ci_high"]
    assert periodicity([], [])["p_value"] is None
    assert chance_even_even(64, 64) == 0.25
    assert chance_even_even(3, 3) == pytest.approx(4 / 9)


def test_map_parity_separates_even_even_pixels() -> None:
    score_map = np.zeros((4, 6))
    score_map[::2, ::2] = 1.0  # rows and columns 0, 2, ...
    result = map_parity(score_map)
    assert result["even_even_mean"] == 1.0
    assert result["other_mean"] == 0.0
    assert result["difference"] == 1.0
    assert (result["n_even_even"], result["n_other"]) == (6, 18)
    assert result["cell_means"] == [[1.0, 0.0], [0.0, 0.0]]
    score_map[0, 0] = np.nan
    assert map_parity(score_map)["n_even_even"] == 5
    with pytest.raises(ValueError):
        map_parity(np.zeros(5))


def test_map_parity_ranks_the_most_extreme_pixels() -> None:
    """A saturated min map (all within 1e-5 of 1) whose odd/odd pixels dip a little deeper: the
    means barely differ, the ranks say it plainly."""
    rng = np.random.default_rng(0)
    score_map = 1 - 1e-6 * rng.random((16, 16))
    score_map[1::2, 1::2] -= 5e-6  # y odd, x odd
    low = map_parity(score_map, "low", k=20)
    assert low["top_k"] == 20 and low["top_table"] == [[0, 0], [0, 20]]
    assert low["top_even_even"] == 0 and low["top_p_value"] < 0.01
    high = map_parity(score_map, "high", k=8)
    assert high["top_table"][1][1] == 0 and sum(map(sum, high["top_table"])) == 8
    assert map_parity(score_map)["top_k"] == 16  # 256 / 64 = 4, raised to the floor of 16
    with pytest.raises(ValueError):
        map_parity(score_map, "middle")


def test_chromatic_summary_from_rows(store: Store) -> None:
    summary = chromatic_summary(attack_points(store.rows("onepixel_results")))
    m2n = summary[M2N]
    assert (m2n["n"], m2n["n_successful"]) == (4, 3)
    assert m2n["mean_h"] == pytest.approx((0.5 + 0.4 + 0.3 + 0.1) / 4)
    assert m2n["mean_h_successful"] == pytest.approx(0.4)
    assert m2n["mean_h_failed"] == pytest.approx(0.1)
    # h and score change are perfectly rank-anticorrelated here
    assert m2n["spearman_rho"] == pytest.approx(-1.0)


def test_run_study_writes_the_files_it_claims(store: Store, tmp_path: Path) -> None:
    out = tmp_path / "study"
    result = run_study(store, out)
    json.dumps(result)  # JSON-able
    assert result["runs"] == [1]
    assert result["image_size"]["height"] == 16 and result["image_size"]["width"] == 16
    names = {Path(f).name for f in result["files"]}
    for name in ("stats_successful.csv", "stats_successful.md", "periodicity.csv",
                 "periodicity.md", "chromatic.csv", "chromatic.png", "parity.png",
                 "heatmap_mitosis_to_normal.png", "heatmap_normal_to_mitosis.png",
                 "study.json"):
        assert name in names
    for f in result["files"]:
        assert Path(f).is_file() and Path(f).stat().st_size > 0
        if f.endswith(".png"):
            assert Path(f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    p = result["periodicity"][M2N]
    assert (p["n"], p["even_even"]) == (3, 2)
    assert p["p_value"] == pytest.approx(binomtest(2, 3, 0.25).pvalue)
    assert result["periodicity_attacked"][M2N]["n"] == 4
    assert result["stats"]["successful"][M2N]["X"]["mean"] == pytest.approx(4.0)
    assert result["counts"]["skipped"] == 1 and result["counts"]["attacked"] == 7
    table = pd.read_csv(out / "periodicity.csv")
    row = table[(table["direction"] == M2N) & (table["attacks"] == "successful")].iloc[0]
    assert row["even_even"] == 2 and row["n"] == 3
    heat = np.loadtxt(out / "heatmap_normal_to_mitosis.csv", delimiter=",")
    assert heat[8, 8] == 2 and heat[2, 9] == 1
    assert json.loads((out / "study.json").read_text())["periodicity"][M2N]["even_even"] == 2


def test_run_study_errors_are_one_line(tmp_path: Path) -> None:
    with Store(tmp_path / "empty.db") as empty:
        with pytest.raises(MedrobustError, match="no one-pixel attack runs"):
            run_study(empty, tmp_path / "out")
        train_id, _ = empty.start_run("train", {"epochs": 1})
        with pytest.raises(MedrobustError, match="not a one-pixel attack run"):
            run_study(empty, tmp_path / "out", run_id=train_id)
        run_id, _ = empty.start_run("attack onepixel", {"x": 1}, dataset=SPEC)
        with pytest.raises(MedrobustError, match="no attacked image"):
            run_study(empty, tmp_path / "out", run_id=run_id)


def test_run_study_pools_runs_by_direction(store: Store, tmp_path: Path) -> None:
    second = fill_store(store, attacks=ATTACKS[:2], seed=1)
    pooled = run_study(store, tmp_path / "pooled")
    assert pooled["runs"] == [1, second]
    assert pooled["periodicity"][M2N]["n"] == 5  # 3 + 2 successful
    assert pooled["periodicity"][M2N]["even_even"] == 4
    alone = run_study(store, tmp_path / "alone", run_id=second)
    assert alone["runs"] == [second] and alone["periodicity"][M2N]["n"] == 2
