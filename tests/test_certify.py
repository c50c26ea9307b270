"""Randomized smoothing (issue 25, classifiers): the Clopper-Pearson bound against SciPy's exact
binomial interval, CERTIFY's and PREDICT's abstain rules on models whose vote under noise is
known, the radius formula at its limit, seeds, the independence of an image's counts from its
batch, resume after an interruption, and the command's one-line refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from cli_util import run_cli, run_json
from scipy.stats import binom, binomtest, norm
from torch import nn

from medrobust.campaigns.certify import (
    CERTIFY_TABLE,
    CertifySettings,
    certified_accuracy,
    run_certify_campaign,
)
from medrobust.certify import ABSTAIN, SmoothedClassifier, binomial_p_value, clopper_pearson_lower
from medrobust.errors import ConfigError
from medrobust.store import Store


class Vote(nn.Module):
    """Logits (N,2) that pick class 1 when the image's mean exceeds ``threshold``."""

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        up = (x.mean(dim=(1, 2, 3)) > self.threshold).float()
        return torch.stack([1 - up, up], dim=1)


@pytest.mark.parametrize("k,n,alpha", [(1, 10, 0.05), (37, 100, 0.001), (9990, 10000, 0.001),
                                       (10000, 10000, 0.001), (50, 100, 0.2)])
def test_clopper_pearson_lower_is_scipys_exact_interval(k, n, alpha):
    bound = clopper_pearson_lower(k, n, alpha)
    # the one-sided (1 - alpha) bound is the low end of the two-sided (1 - 2 alpha) interval
    assert bound == pytest.approx(binomtest(k, n).proportion_ci(1 - 2 * alpha, "exact").low,
                                  rel=1e-9, abs=1e-12)
    # and by definition: seeing k or more of n at p = bound has probability alpha
    assert binom.sf(k - 1, n, bound) == pytest.approx(alpha, rel=1e-6)
    assert clopper_pearson_lower(0, n, alpha) == 0.0


def test_clopper_pearson_refuses_impossible_counts():
    with pytest.raises(ConfigError):
        clopper_pearson_lower(11, 10, 0.01)
    with pytest.raises(ConfigError):
        clopper_pearson_lower(5, 10, 0.0)


def test_a_constant_vote_certifies_the_largest_radius_n_allows():
    """Every noisy copy votes class 1: pA = alpha^(1/n), radius sigma * Phi^-1(pA)."""
    smooth = SmoothedClassifier(Vote(-1.0), sigma=0.5, num_classes=2, batch_size=300, seed=0)
    cert = smooth.certify(torch.full((1, 4, 4), 0.5), n0=50, n=1000, alpha=0.001, key=0)
    assert cert.prediction == 1 and cert.counts.tolist() == [0, 1000]
    assert cert.p_lower == pytest.approx(0.001 ** (1 / 1000), rel=1e-9)
    assert cert.radius == pytest.approx(0.5 * norm.ppf(0.001 ** (1 / 1000)), rel=1e-9)
    assert cert.certifies(1, cert.radius) and not cert.certifies(1, cert.radius + 1e-6)
    assert smooth.predict(torch.full((1, 4, 4), 0.5), 200, 0.001, key=0) == 1


def test_a_coin_flip_vote_abstains_in_certify_and_predict():
    """At the threshold itself half the noisy copies go each way: no class has pA > 1/2."""
    smooth = SmoothedClassifier(Vote(0.5), sigma=0.25, num_classes=2, batch_size=500, seed=1)
    x = torch.full((1, 4, 4), 0.5)
    cert = smooth.certify(x, n0=100, n=2000, alpha=0.001, key=3)
    assert cert.abstained and cert.prediction == ABSTAIN and cert.radius == 0.0
    assert cert.p_lower <= 0.5 and 800 < cert.counts[0] < 1200
    assert smooth.predict(x, 2000, 0.001, key=3) == ABSTAIN
    assert binomial_p_value(1000, 1000) == 1.0


def test_counts_follow_the_seed_and_the_image_key_not_the_call():
    smooth = SmoothedClassifier(Vote(0.5), sigma=0.25, num_classes=2, batch_size=64, seed=7)
    x = torch.full((1, 4, 4), 0.5)
    a = smooth.counts(x, 500, key=4, phase=1)
    assert np.array_equal(a, smooth.counts(x, 500, key=4, phase=1))
    assert not np.array_equal(a, smooth.counts(x, 500, key=5, phase=1))  # another image
    assert not np.array_equal(a, smooth.counts(x, 500, key=4, phase=0))  # selection != estimate
    other = SmoothedClassifier(Vote(0.5), sigma=0.25, num_classes=2, batch_size=64, seed=8)
    assert not np.array_equal(a, other.counts(x, 500, key=4, phase=1))
    assert a.sum() == 500


def _run(store, clf, ds, settings, indices, **kw):
    info = {"dir": "", "model": "smallcnn"}
    return run_certify_campaign(store, clf, info, ds, settings, indices, show_progress=False,
                                **kw)


SMALL = CertifySettings(sigma=0.25, n0=20, n=200, alpha=0.01, radii=(0.0, 0.1, 0.5),
                        batch_size=100, seed=3)


def test_an_image_gets_the_same_certificate_in_any_batch(tmp_path, tiny_classifier,
                                                         tiny_synthetic):
    ds = tiny_synthetic[2]
    with Store(tmp_path / "a.db") as a, Store(tmp_path / "b.db") as b:
        _run(a, tiny_classifier, ds, SMALL, list(range(6)))
        _run(b, tiny_classifier, ds, SMALL, [4, 2])
        rows_a = {r["dataset_index"]: r for r in a.rows(CERTIFY_TABLE)}
        rows_b = {r["dataset_index"]: r for r in b.rows(CERTIFY_TABLE)}
    for i in (2, 4):  # per image, its own noise stream and its own forward batches
        for key in ("prediction", "radius", "counts", "selection_counts"):
            assert rows_a[i][key] == rows_b[i][key]


def test_an_interrupted_certification_resumes_to_the_uninterrupted_rows(
        tmp_path, tiny_classifier, tiny_synthetic):
    ds = tiny_synthetic[2]
    with Store(tmp_path / "whole.db") as store:
        whole = _run(store, tiny_classifier, ds, SMALL, list(range(6)))
        expected = {r["dataset_index"]: r for r in store.rows(CERTIFY_TABLE)}

    calls = {"n": 0}

    class Dies(nn.Module):  # the classifier, killed on its 9th forward pass (image 3)
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny_classifier

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            calls["n"] += 1
            if calls["n"] == 9:
                raise KeyboardInterrupt
            return self.inner(x)

        def to_tensor(self, images):
            return self.inner.to_tensor(images)

        @property
        def num_classes(self) -> int:
            return self.inner.num_classes

    with Store(tmp_path / "cut.db") as store:
        with pytest.raises(KeyboardInterrupt):
            # in eval mode like the classifier it wraps: the smoother restores the mode it
            # finds, and a wrapper left in training mode would switch the shared fixture too
            _run(store, Dies().eval(), ds, SMALL, list(range(6)))
        done = len(store.rows(CERTIFY_TABLE))
        assert 0 < done < 6  # images finished before the kill are kept
        again = _run(store, tiny_classifier, ds, SMALL, list(range(6)))
        rows = {r["dataset_index"]: r for r in store.rows(CERTIFY_TABLE)}
    assert again.resumed and again.computed_now == 6 - done
    assert again.summary["certified_accuracy"] == whole.summary["certified_accuracy"]
    for i, r in expected.items():
        assert rows[i]["counts"] == r["counts"] and rows[i]["radius"] == r["radius"]


def test_certified_accuracy_counts_abstentions_and_small_radii_as_failures():
    rows = [{"correct": 1, "radius": 0.6}, {"correct": 1, "radius": 0.2},
            {"correct": 0, "radius": 0.0}, {"correct": 0, "radius": 0.9}]
    assert [certified_accuracy(rows, r)["certified"] for r in (0.0, 0.2, 0.5, 1.0)] == \
        [2, 2, 1, 0]
    lo, hi = certified_accuracy(rows, 0.0)["ci95"]
    assert lo < 0.5 < hi


def test_certify_from_the_cli_resumes_and_refuses_what_it_cannot_do(tmp_path, capsys,
                                                                    checkpoint):
    db = str(tmp_path / "c.db")
    args = ["certify", "--model", str(checkpoint), "--limit", "3", "--n0", "10", "--n", "100",
            "--alpha", "0.01", "--radii", "0,0.1,1/4", "--batch-size", "50", "--store", db]
    out = run_json(capsys, *args)
    assert out["images"] == 3 and [c["radius"] for c in out["certified_accuracy"]] == \
        [0.0, 0.1, 0.25]
    # at n = 100 and alpha = 0.01 no radius can exceed sigma * Phi^-1(0.01^(1/100))
    with Store(db) as store:
        radii = [r["radius"] for r in store.rows(CERTIFY_TABLE)]
    assert max(radii) <= 0.25 * norm.ppf(0.01 ** (1 / 100)) + 1e-12
    again = run_json(capsys, *args)
    assert again["resumed"] and again["certified_now"] == 0
    # the radii only summarise the certificates: other radii reuse them, nothing recomputed
    other = run_json(capsys, *[a if a != "0,0.1,1/4" else "0,0.2" for a in args])
    assert other["run_id"] == out["run_id"] and other["certified_now"] == 0
    assert [c["radius"] for c in other["certified_accuracy"]] == [0.0, 0.2]
    with Store(db) as store:  # each row's top count is the one its bound was computed from
        for r in store.rows(CERTIFY_TABLE):
            assert clopper_pearson_lower(r["top_count"], r["n"], 0.01) == \
                pytest.approx(r["p_lower"], abs=1e-12)
    checked = run_json(capsys, *args, "--check", "--check-steps", "2", "--check-samples", "2")
    assert checked["check"]["consistent"] and len(checked["check"]["radii"]) == 2
    rep = run_json(capsys, "report", "--store", db, "--out", str(tmp_path / "rep"))
    html = Path(rep["report"]).read_text()
    assert "Certified robustness" in html and "attacked" in html and "Evaluation bug" not in html
    for bad, message in ((["--sigma", "0"], "sigma"), (["--alpha", "1.5"], "alpha"),
                         (["--radii", "-1"], "--radii")):
        code, _, err = run_cli(capsys, *args[:-2], "--store", str(tmp_path / "x.db"), *bad)
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert code == 2 and len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "x.db").exists()
    assert out["certified_accuracy"][0]["accuracy"] == pytest.approx(
        out["certified_accuracy"][0]["certified"] / 3)


def test_noise_training_gives_the_smoothed_model_its_accuracy(tmp_path, capsys):
    """train --noise-sd records the noise and selects on noisy validation images; smoothing
    that model at the same sigma keeps most of its accuracy, and other tasks refuse it."""
    db, model = str(tmp_path / "s.db"), str(tmp_path / "m")
    out = run_json(capsys, "train", "--dataset", "synthetic", "--size", "16", "--epochs", "4",
                   "--width", "8", "--noise-sd", "0.25", "--out", model, "--store", db)
    from medrobust.models.checkpoint import read_meta

    assert read_meta(model)["train_config"]["noise_sd"] == 0.25 and out["test"]["n"] > 0
    cert = run_json(capsys, "certify", "--model", model, "--limit", "20", "--n0", "20", "--n",
                    "200", "--alpha", "0.01", "--radii", "0,0.25", "--store", db)
    assert cert["trained_noise_sd"] == 0.25
    assert cert["certified_accuracy"][0]["accuracy"] >= 0.6
    with Store(db) as store:  # the summary counts the rows correct and certified that far
        rows = store.rows(CERTIFY_TABLE, run_id=cert["run_id"])
    assert cert["certified_accuracy"][1]["certified"] == sum(
        bool(r["correct"]) and r["radius"] >= 0.25 for r in rows)
    code, _, err = run_cli(capsys, "train", "--task", "landmarks", "--dataset", "landmarks",
                           "--noise-sd", "0.1", "--out", str(tmp_path / "s"), "--store", db)
    assert code == 2 and "--noise-sd" in err  # median smoothing there needs no noise training


@pytest.fixture(scope="module")
def noise_classifier(tiny_synthetic):
    """A narrow smallcnn trained under the smoothing noise, so the smoothed model is accurate."""
    from medrobust.training import TrainConfig, train_classifier

    train, val, _ = tiny_synthetic
    return train_classifier(train, val, TrainConfig(model="smallcnn", model_kwargs={"width": 8},
                                                    epochs=4, noise_sd=0.25, seed=0)).classifier


def test_the_crosscheck_holds_for_real_certificates_and_catches_false_ones(
        tmp_path, noise_classifier, tiny_synthetic):
    """Certified accuracy never exceeds what PGD on the smoothed model leaves; certificates
    inflated by a bug (every image 'certified' at radius 10) are caught as violations. alpha is
    tiny so that a true certificate or PREDICT is wrong by chance with probability ~1e-5 here
    (at n = 300 every vote for one class still certifies 0.42)."""
    from medrobust.campaigns.certify import CheckSettings, run_crosscheck_campaign

    ds = tiny_synthetic[2]
    tiny_classifier = noise_classifier
    settings = CertifySettings(sigma=0.25, n0=20, n=300, alpha=1e-6, radii=(0.0, 0.25, 1.0),
                               batch_size=150, seed=0)
    check = CheckSettings(steps=10, samples=8)
    info = {"dir": "", "model": "smallcnn"}
    with Store(tmp_path / "c.db") as store:
        cert = _run(store, tiny_classifier, ds, settings, list(range(8)))
        rows = store.rows(CERTIFY_TABLE, run_id=cert.run_id)
        real = run_crosscheck_campaign(store, tiny_classifier, info, ds, settings, check, rows,
                                       show_progress=False)
        assert cert.summary["certified_accuracy"][1]["certified"] >= 2  # something to check
        assert real.summary["consistent"] and real.summary["violations"] == 0
        for c in real.summary["radii"]:
            assert c["certified_accuracy"] <= c["empirical_accuracy"]
        inflated = [{**r, "correct": 1, "radius": 10.0} for r in rows]
        fake = run_crosscheck_campaign(store, tiny_classifier, info, ds, settings, check,
                                       inflated, show_progress=False)
    assert not fake.summary["consistent"] and fake.summary["violations"] > 0
    at_one = fake.summary["radii"][-1]
    assert at_one["certified_accuracy"] == 1.0 > at_one["empirical_accuracy"]
    # the report leads the certificates with the bug the latest cross-check found
    from medrobust.report import build_report

    with Store(tmp_path / "c.db") as store:
        html = Path(build_report(store, tmp_path / "rep")).read_text()
    assert "Certified robustness" in html and "Evaluation bug:" in html


def test_denoised_smoothing_with_a_gaussian_denoiser(tmp_path, capsys, checkpoint):
    """train-denoiser --noise gaussian learns to remove smoothing's noise (its validation error
    on noisy images falls well below the noise's own), certify --denoiser puts it in front of
    the unchanged classifier and records it; impulse-only options are refused with it, and an
    impulse denoiser in front of smoothing gets a note."""
    db, den = str(tmp_path / "d.db"), str(tmp_path / "den")
    trained = run_json(capsys, "train-denoiser", "--dataset", "synthetic", "--size", "16",
                       "--noise", "gaussian", "--sd", "0.25", "--epochs", "3", "--width", "8",
                       "--patch", "0", "--out", den, "--store", db)
    v = trained["val"]
    assert v["noisy_mse_before"] == pytest.approx(0.25 ** 2, rel=0.1)
    assert v["noisy_mse_after"] < 0.5 * v["noisy_mse_before"]
    from medrobust.models.checkpoint import read_meta

    assert read_meta(den)["train_config"]["noise"] == "gaussian"
    args = ["certify", "--model", str(checkpoint), "--limit", "2", "--n0", "10", "--n", "60",
            "--alpha", "0.05", "--radii", "0,0.1", "--store", db]
    cert = run_json(capsys, *args, "--denoiser", den)
    assert cert["denoiser"] == str(Path(den).resolve()) and cert["trained_noise_sd"] == 0.25
    plain = run_json(capsys, *args)
    assert plain["run_id"] != cert["run_id"] and plain["denoiser"] is None
    code, _, err = run_cli(capsys, "train-denoiser", "--dataset", "synthetic", "--size", "16",
                           "--noise", "gaussian", "--density-max", "0.1", "--out",
                           str(tmp_path / "x"), "--store", db)
    assert code == 2 and "--density-max" in err and not (tmp_path / "x").exists()
    code, out, _ = run_cli(capsys, *args, "--denoiser", "median3")
    assert code == 0 and "denoiser was not trained for Gaussian noise" in out
