"""``certify`` on every task (issue 25): SegCertify for segmenters, median smoothing for landmark
and detection models, through the one campaign and command. Each checks a property that could
fail: bounds that only loosen as the radius grows, summaries that equal their rows, a resume that
recomputes nothing, radii that are part of a dense run, and the certified column of evaluate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_util import run_cli, run_json
from test_segmentation import make_folder as seg_folder

from medrobust.store import Store

pytestmark = pytest.mark.usefixtures("one_thread_module")

SMALL = ["--n0", "10", "--n", "60", "--alpha", "0.05", "--batch-size", "30"]


@pytest.fixture(scope="module")
def seg_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("certseg")
    data = seg_folder(root / "data", 30, [(32, 32)], colour=False, seed=2)
    db, ck = str(root / "s.db"), str(root / "m")
    from click.testing import CliRunner

    from medrobust.cli.main import cli

    res = CliRunner().invoke(cli, ["train", "--task", "segmentation", "--dataset", "segfolder",
                                   "--data-dir", str(data), "--size", "32", "--epochs", "3",
                                   "--out", ck, "--store", db, "--json"])
    assert res.exit_code == 0, res.output
    return ck, db


def test_segcertify_bounds_loosen_with_the_radius_and_resume(seg_model, tmp_path, capsys):
    ck, _ = seg_model
    db = str(tmp_path / "c.db")
    args = ["certify", "--model", ck, "--sigma", "0.1", "--radii", "0,0.05,0.2", "--limit",
            "3", *SMALL, "--store", db]
    out = run_json(capsys, *args)
    assert out["task"] == "segmentation" and out["metric"] == "Dice" and out["images"] == 3
    cells = out["certified"]
    assert [c["radius"] for c in cells] == [0.0, 0.05, 0.2]
    with Store(db) as store:
        rows = store.rows("certify_segmentation_results", run_id=out["run_id"])
    assert len(rows) == 3
    for row in rows:  # a larger radius tests a higher tau: never more pixels certified
        dice = [c["certified_dice"] for c in row["by_radius"]]
        abst = [c["abstained"] for c in row["by_radius"]]
        assert dice == sorted(dice, reverse=True) and abst == sorted(abst)
        assert all(0.0 <= d <= 1.0 for d in dice)
    for j, c in enumerate(cells):  # the summary is the mean of its rows
        assert c["value"] == pytest.approx(np.mean([r["by_radius"][j]["certified_dice"]
                                                    for r in rows]))
    assert cells[0]["abstained"] <= cells[-1]["abstained"]
    again = run_json(capsys, *args)
    assert again["resumed"] and again["certified_now"] == 0 and again["certified"] == cells
    # each radius is a certificate of its own here: other radii are another run
    other = run_json(capsys, *[a if a != "0,0.05,0.2" else "0,0.1" for a in args])
    assert other["run_id"] != out["run_id"]
    code, text, _ = run_cli(capsys, *args[:-2], "--store", db)
    assert code == 0 and "certified Dice at L2 0.05" in text and "SegCertify" in text
    # the attack protocol shows the certificate beside the attack at the same L2 budget
    ev = run_json(capsys, "evaluate", "--model", ck, "--attack", "pgd", "--l2", "0.2",
                  "--steps", "2", "--limit", "3", "--store", db)
    assert ev["certified"]["run"] == other["run_id"] or ev["certified"]["run"] == out["run_id"]
    # a U-Net trained under the smoothing noise: recorded, and reported by certify
    data = str(Path(ck).parent / "data")
    noisy = str(tmp_path / "noisy")
    trained = run_json(capsys, "train", "--task", "segmentation", "--dataset", "segfolder",
                       "--data-dir", data, "--size", "32", "--epochs", "1", "--noise-sd", "0.1",
                       "--out", noisy, "--store", db)
    assert trained["run_id"] and json.loads((Path(noisy) / "meta.json").read_text())[
        "train_config"]["noise_sd"] == 0.1
    again = run_json(capsys, "certify", "--model", noisy, "--sigma", "0.1", "--radii", "0",
                     "--limit", "2", *SMALL, "--store", db)
    assert again["trained_noise_sd"] == 0.1
    checked = run_json(capsys, *args, "--check", "--check-steps", "3", "--check-samples", "2")
    assert checked["check"]["consistent"] and len(checked["check"]["radii"]) == 2
    with Store(db) as store:
        checks = store.rows("certify_dense_check_results", run_id=checked["check"]["run_id"])
    assert len(checks) == 2 * 3 and all(r["l2"] <= r["radius"] + 1e-5 for r in checks)
    for c in checks:  # the attacked smoothed Dice is not below what was certified
        assert c["violation"] == 0 and c["attacked"] >= c["certified"] - 1e-9
    code, _, err = run_cli(capsys, *args[:-2], "--store", db, "--denoiser", "median3")
    assert code == 2 and "--denoiser" in err


def _certify(store, model, ds, radii, n=60, indices=(0, 1, 2, 3)):
    from medrobust.campaigns.certify import CertifySettings, run_certify_campaign

    settings = CertifySettings(sigma=0.05, n0=10, n=n, alpha=0.05, radii=radii, batch_size=30,
                               seed=1)
    return run_certify_campaign(store, model, {"dir": ""}, ds, settings, list(indices),
                                show_progress=False)


def test_detection_certificates_shrink_with_the_radius(tmp_path):
    """Median smoothing of each true box's matched detection: boxes certified found (worst IoU
    >= 0.5) only fall as the radius grows, the summary counts its rows, a detector that finds
    nothing certifies nothing, and the rows do not depend on which images share a run."""
    from test_detection_attacks import _toy

    from medrobust.models.detector import Detector
    from medrobust.training.detection import train_detector

    train, test = _toy(48, 0), _toy(6, 1)
    net, hist = train_detector(train, test, epochs=20, batch_size=8, lr=1e-2, seed=0, width=4,
                               augment=False)
    model = Detector(net, mean=hist["mean"], std=hist["std"],
                     class_names=train.class_names).eval()
    with Store(tmp_path / "d.db") as store:
        out = _certify(store, model, test, (0.0, 0.02, 0.5))
        rows = store.rows("certify_detection_results", run_id=out.run_id)
        alone = _certify(store, model, test, (0.0, 0.02, 0.5), indices=(2,))
        row2 = store.rows("certify_detection_results", run_id=alone.run_id)[0]
    s = out.summary
    assert s["task"] == "detection" and s["boxes"] == sum(r["boxes"] for r in rows) == 4
    counts = [c["certified"] for c in s["certified"]]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 0  # 0.5 is 10 sigma
    assert counts[0] >= 2  # found boxes are certified at radius 0 (the median is found)
    for r in rows:
        bounds = [c["mean_iou_bound"] for c in r["by_radius"]]
        assert bounds == sorted(bounds, reverse=True)
        assert all(c["certified"] <= r["boxes"] for c in r["by_radius"])
    assert s["certified"][0]["value"] == counts[0] / 4
    assert s["smoothed_found"] > 0  # the fitted detector finds squares under the noise
    assert row2["by_radius"] == next(r for r in rows if r["dataset_index"] == 2)["by_radius"]
    blind = Detector(train_detector(train, test, epochs=1, batch_size=8, lr=1e-9, seed=0,
                                    width=4, augment=False)[0], mean=hist["mean"],
                     std=hist["std"], class_names=train.class_names).eval()
    with Store(tmp_path / "b.db") as store:
        none = _certify(store, blind, test, (0.0, 0.02), n=30)
    assert [c["certified"] for c in none.summary["certified"]] == [0, 0]


def test_landmark_certificates_bound_the_radial_error_from_the_cli(tmp_path, capsys):
    """Median smoothing of every landmark coordinate: the certified MRE bound is never below
    the smoothed median's own error (radius 0 bounds around the median), grows with the radius,
    is in mm where the data has pixel sizes, and the certificate stands beside the attack in
    evaluate's table."""
    from test_landmarks import make_folder as landmark_folder

    landmark_folder(tmp_path / "lm", n=16, h=32, w=32)
    db, ck = str(tmp_path / "s.db"), str(tmp_path / "m")
    run_json(capsys, "train", "--task", "landmarks", "--dataset", "landmarks", "--data-dir",
             str(tmp_path / "lm"), "--size", "32", "--epochs", "3", "--width", "4", "--out", ck,
             "--store", db)
    out = run_json(capsys, "certify", "--model", ck, "--sigma", "0.02", "--radii",
                   "0,0.01,0.1", "--limit", "3", *SMALL, "--store", db)
    assert out["task"] == "landmarks" and out["unit"] == "mm" and out["lower_is_better"]
    with Store(db) as store:
        rows = store.rows("certify_landmark_results", run_id=out["run_id"])
    for r in rows:
        bounds = [c["mre_bound"] for c in r["by_radius"]]
        assert bounds == sorted(bounds) and bounds[0] >= r["smoothed_mre"] - 1e-9
        # at 5 sigma no 60 samples bound the percentile: an infinite bound, not a made-up one
        assert bounds[-1] == np.inf
    # JSON output carries an infinite bound as null
    values = [np.inf if c["value"] is None else c["value"] for c in out["certified"]]
    assert values == sorted(values) and np.isfinite(values[1])
    ev = run_json(capsys, "evaluate", "--model", ck, "--attack", "pgd", "--l2", "0.01,0.1",
                  "--steps", "2", "--limit", "3", "--store", db)
    assert ev["cells"][0]["certified"] == pytest.approx(values[1])
    code, text, _ = run_cli(capsys, "evaluate", "--model", ck, "--attack", "pgd", "--l2",
                            "0.01", "--steps", "2", "--limit", "3", "--store", db)
    assert code == 0 and f"certified (run {out['run_id']})" in text
    # the cross-check: PGD on the noise-averaged loss, the attacked median within the bounds
    checked = run_json(capsys, "certify", "--model", ck, "--sigma", "0.02", "--radii",
                       "0,0.01,0.1", "--limit", "3", *SMALL, "--store", db, "--check",
                       "--check-steps", "3", "--check-samples", "2")
    assert checked["check"]["consistent"]
    first = checked["check"]["radii"][0]
    assert first["radius"] == 0.01 and first["attacked"] <= first["certified"] + 1e-9


def test_the_mean_interval_is_a_seeded_bootstrap_that_keeps_infinite_bounds():
    from medrobust.metrics.mean_interval import mean_ci95

    v = np.random.default_rng(0).random(50)
    lo, hi = mean_ci95(v)
    assert lo < v.mean() < hi and mean_ci95(v) == (lo, hi) and hi - lo < 0.25
    assert mean_ci95([]) is None and mean_ci95([np.nan]) is None
    lo, hi = mean_ci95([1.0, 2.0, 3.0, np.inf])  # an unbounded image: the top end is infinite
    assert np.isfinite(lo) and hi == np.inf


def test_the_dense_crosscheck_catches_a_false_certificate(tmp_path, monkeypatch):
    """A certificate too tight to be true (every box coordinate pinned to the clean median)
    must be reported as a violation once the attack moves a box; the true one is not. And the
    violation test itself: a median whose confidence interval misses the interval, not one
    merely estimated past its edge."""
    from test_detection_attacks import _toy

    from medrobust.campaigns.certify import (
        CertifySettings,
        CheckSettings,
        run_certify_campaign,
        run_dense_check_campaign,
    )
    from medrobust.certify.attack import median_violation
    from medrobust.certify.median import MedianCertificate, MedianSmoother
    from medrobust.models.detector import Detector
    from medrobust.training.detection import train_detector

    rng = np.random.default_rng(0)
    shifted = rng.normal(5.0, 1.0, (400, 2))
    assert median_violation(shifted, 0.1, 0.01, np.zeros(2), np.ones(2)).all()
    assert not median_violation(shifted, 0.1, 0.01, np.full(2, 4.9), np.full(2, 5.1)).any()

    train, test = _toy(48, 0), _toy(6, 1)
    net, hist = train_detector(train, test, epochs=20, batch_size=8, lr=1e-2, seed=0, width=4,
                               augment=False)
    model = Detector(net, mean=hist["mean"], std=hist["std"],
                     class_names=train.class_names).eval()
    settings = CertifySettings(sigma=0.05, n0=10, n=60, alpha=0.05, radii=(0.0, 3.0),
                               batch_size=30, seed=1)
    check = CheckSettings(steps=5, samples=2)
    with Store(tmp_path / "d.db") as store:
        cert = run_certify_campaign(store, model, {"dir": ""}, test, settings, [0, 1, 2],
                                    show_progress=False)
        rows = store.rows("certify_detection_results", run_id=cert.run_id)
        real = run_dense_check_campaign(store, model, {"dir": ""}, test, settings, check, rows,
                                        show_progress=False)
        assert real.summary["consistent"]
        original = MedianSmoother.certify

        def pinned(self, x, n, alpha, radii, key):  # the interval shrunk to the median
            c = original(self, x, n, alpha, radii, key)
            m = np.broadcast_to(c.median, c.lower.shape)
            return MedianCertificate(median=c.median, radii=c.radii, lower=m.copy(),
                                     upper=m.copy(), n=c.n, sigma=c.sigma, alpha=c.alpha)

        monkeypatch.setattr(MedianSmoother, "certify", pinned)
        fake = run_dense_check_campaign(store, model, {"dir": ""}, test,
                                        CertifySettings(**{**settings.params(),
                                                           "radii": (0.0, 3.0), "seed": 2}),
                                        check, rows, show_progress=False)
    assert not fake.summary["consistent"] and fake.summary["violations"] > 0
