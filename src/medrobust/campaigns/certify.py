"""Certifying a classifier by randomized smoothing over a split, one row per image, resumable.

Each image's CERTIFY answer (class or abstain, certified L2 radius, the bound ``pA`` and the
counts behind it) is committed as it finishes: at n = 10 000 noise samples an image costs
thousands of forward passes, so a kill loses at most the image in flight. The summary gives
certified accuracy (correct and certified at least that radius) at each radius asked for, with
its Wilson interval, and the abstention rate.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote, is_remote
from medrobust.certify.smoothing import SmoothedClassifier
from medrobust.metrics.proportion import proportion
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.utils.validation import check_range

CERTIFY_TABLE = ResultTable(
    "certify_results",
    {
        "dataset_index": "INTEGER",
        "label": "INTEGER",
        "prediction": "INTEGER",
        "correct": "INTEGER",
        "radius": "REAL",
        "p_lower": "REAL",
        "top_count": "INTEGER",
        "n": "INTEGER",
        "counts": "JSON",
        "selection_counts": "JSON",
        "seconds": "REAL",
    },
)
COMMAND = "certify smoothing"


@dataclass(frozen=True)
class CertifySettings:
    """CERTIFY's knobs (Cohen et al.'s defaults: n0 = 100, n = 100 000, alpha = 0.001; n =
    10 000 here, which caps the certifiable radius at sigma * Phi^-1(alpha^(1/n)), about
    3.2 sigma at alpha = 0.001), the radii certified accuracy is reported at, and the noise."""

    sigma: float = 0.25
    n0: int = 100
    n: int = 10_000
    alpha: float = 0.001
    radii: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    batch_size: int = 200
    seed: int = 0

    def validate(self) -> CertifySettings:
        check_range("sigma", self.sigma, 0, low_inclusive=False)
        check_range("n0", self.n0, 1)
        check_range("n", self.n, 1)
        check_range("alpha", self.alpha, 0, 1, low_inclusive=False, high_inclusive=False)
        check_range("batch_size", self.batch_size, 1)
        for r in self.radii:
            check_range("radius", r, 0)
        return self

    def params(self) -> dict[str, Any]:
        return {**asdict(self), "radii": list(self.radii)}

    def certify_params(self) -> dict[str, Any]:
        """What decides the certificates (a run's fingerprint): not the radii, which only
        summarise them, so asking for other radii reuses the certificates already computed."""
        return {k: v for k, v in self.params().items() if k != "radii"}


@dataclass
class CertifyContext:
    smoothed: SmoothedClassifier
    classifier: Classifier
    images: np.ndarray
    labels: np.ndarray
    settings: CertifySettings


def certify_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                    ) -> CertifyContext:
    """A Ray worker's context, around the model it loaded from the checkpoint."""
    settings = CertifySettings(**{**params["settings"], "radii": tuple(params["settings"]["radii"])})
    return CertifyContext(_smoothed(classifier, settings), classifier, data["images"],
                          data["labels"], settings)


def _smoothed(classifier: Classifier, s: CertifySettings) -> SmoothedClassifier:
    return SmoothedClassifier(classifier, s.sigma, max(2, classifier.num_classes),
                              batch_size=s.batch_size, seed=s.seed)


def certify_chunk(ctx: CertifyContext, chunk: list[int], emit: Any
                  ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Certify each image of the chunk; in process every row is committed as it finishes."""
    s = ctx.settings
    rows = []
    for i in chunk:
        t0 = time.perf_counter()
        x = ctx.classifier.to_tensor(ctx.images[i:i + 1])[0]
        cert = ctx.smoothed.certify(x, s.n0, s.n, s.alpha, key=int(i))
        label = int(ctx.labels[i])
        row = {"dataset_index": int(i), "label": label, "prediction": cert.prediction,
               "correct": int(cert.prediction == label), "radius": cert.radius,
               "p_lower": cert.p_lower, "top_count": int(cert.counts[cert.top]), "n": s.n,
               "counts": cert.counts.tolist(), "selection_counts": cert.selection_counts.tolist(),
               "seconds": time.perf_counter() - t0}
        if emit is None:
            rows.append((int(i), row))
        else:
            emit(int(i), row)
    return rows, None


def run_certify_campaign(store: Store, classifier: Classifier, model_info: dict[str, Any],
                         dataset: Any, settings: CertifySettings, indices: Sequence[int],
                         resume: bool = True, show_progress: bool = True,
                         executor: Executor | None = None) -> CampaignOutcome:
    """Certify ``dataset[indices]`` and record each image; the summary has certified accuracy
    at ``settings.radii``. Ray workers load the checkpoint ``model_info["dir"]``."""
    settings.validate()
    if is_remote(executor):
        check_remote(executor, model_info.get("dir"))
    params = {"smoothing": settings.certify_params(), "indices": [int(i) for i in indices]}
    start = time.perf_counter()
    with batch_run(store, CERTIFY_TABLE, COMMAND, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=4,
                   desc=f"certify sigma={settings.sigma:g}", resume=resume,
                   show_progress=show_progress) as run:
        run.execute(Work(
            compute=certify_chunk,
            local=lambda: CertifyContext(_smoothed(classifier, settings), classifier,
                                         dataset.images, dataset.labels, settings),
            remote=certify_context, params={"settings": settings.params()},
            model_dir=model_info.get("dir", ""),
            data={"images": dataset.images, "labels": dataset.labels}), executor)
    seconds = time.perf_counter() - start
    summary = summarise_certify(store.rows(CERTIFY_TABLE, run_id=run.run_id), settings)
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)


def certified_accuracy(rows: list[dict[str, Any]], radius: float) -> dict[str, Any]:
    """Share of images correct and certified at ``radius`` or more (abstentions count as
    wrong), with its 95 % Wilson interval."""
    p = proportion(sum(r["correct"] and r["radius"] >= radius for r in rows), len(rows))
    return {"radius": radius, "certified": p.k, "images": p.n, "accuracy": p.rate,
            "ci95": p.ci95}


def summarise_certify(rows: list[dict[str, Any]], settings: CertifySettings) -> dict[str, Any]:
    abstained = proportion(sum(r["prediction"] < 0 for r in rows), len(rows))
    correct = [r["radius"] for r in rows if r["correct"]]
    return {"images": len(rows), "sigma": settings.sigma, "n": settings.n,
            "alpha": settings.alpha,
            "certified_accuracy": [certified_accuracy(rows, r) for r in settings.radii],
            "abstain_rate": abstained.rate, "abstain_ci95": abstained.ci95,
            "mean_radius_correct": float(np.mean(correct)) if correct else None,
            "median_radius_correct": float(np.median(correct)) if correct else None}


# -- the cross-check: an attack on the smoothed classifier at each certified radius ---------------

CHECK_TABLE = ResultTable(
    "certify_check_results",
    {
        "dataset_index": "INTEGER",
        "radius": "REAL",
        "label": "INTEGER",
        "adv_prediction": "INTEGER",
        "robust": "INTEGER",
        "certified": "INTEGER",
        "violation": "INTEGER",
        "l2": "REAL",
        "seconds": "REAL",
    },
)
CHECK_COMMAND = "certify check"


@dataclass(frozen=True)
class CheckSettings:
    """PGD (L2, on the smoothed classifier's EOT loss) at each positive radius, judged by
    PREDICT on ``n`` fresh noise samples at the same ``alpha``."""

    steps: int = 20
    samples: int = 16

    def validate(self) -> CheckSettings:
        check_range("steps", self.steps, 1)
        check_range("samples", self.samples, 1)
        return self


def check_item(radius: float, index: int) -> str:
    return f"{radius:g}/{index}"


def run_crosscheck_campaign(store: Store, classifier: Classifier, model_info: dict[str, Any],
                            dataset: Any, settings: CertifySettings, check: CheckSettings,
                            certify_rows: list[dict[str, Any]], resume: bool = True,
                            show_progress: bool = True,
                            certify_run: int | None = None) -> CampaignOutcome:
    """Attack the smoothed classifier at every positive radius on the certified images
    (``certify_run``: the run that wrote them, so the report pairs the two);
    a *violation* is an image certified at that radius whose attacked image PREDICT assigns
    to another class (abstentions are not violations, but do not count as robust)."""
    from medrobust.attacks.pgd import PGD
    from medrobust.certify.attack import SmoothedLogits
    from medrobust.certify.smoothing import ABSTAIN

    settings.validate()
    check.validate()
    certified = {int(r["dataset_index"]): r for r in certify_rows}
    radii = [r for r in settings.radii if r > 0]
    items = [check_item(r, i) for r in radii for i in sorted(certified)]
    # the certificates checked are part of what the run is: other certificates, another run
    digest = hashlib.sha256(json.dumps(
        [[i, certified[i]["prediction"], certified[i]["radius"], certified[i]["correct"]]
         for i in sorted(certified)]).encode()).hexdigest()
    params = {"smoothing": settings.params(), "check": asdict(check),
              "indices": sorted(certified), "certificates": digest,
              "certify_run": certify_run}
    smooth = _smoothed(classifier, settings)
    eot = SmoothedLogits(classifier, settings.sigma, check.samples)
    start = time.perf_counter()
    with batch_run(store, CHECK_TABLE, CHECK_COMMAND, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split}, items=items, size=1,
                   desc="certify check", resume=resume, show_progress=show_progress) as run:
        for (item,) in run.chunks():
            t0 = time.perf_counter()
            r_text, i_text = item.split("/")
            radius, i = float(r_text), int(i_text)
            label = int(dataset.labels[i])
            x = classifier.to_tensor(dataset.images[i:i + 1])
            eot.reseed(settings.seed * 1_000_003 + i)
            attack = PGD(eot, norm="l2", eps=radius, steps=check.steps, random_start=True,
                         seed=settings.seed)
            adv = attack(x, torch.tensor([label]), keys=[i]).adversarial
            pred = smooth.predict(adv[0], settings.n, settings.alpha, key=i)
            row = certified[i]
            is_certified = bool(row["correct"]) and row["radius"] >= radius
            run.record(item, {
                "dataset_index": i, "radius": radius, "label": label, "adv_prediction": pred,
                "robust": int(pred == label), "certified": int(is_certified),
                "violation": int(is_certified and pred not in (label, ABSTAIN)),
                "l2": float((adv - x).flatten().norm()), "seconds": time.perf_counter() - t0})
            run.advance()
    seconds = time.perf_counter() - start
    summary = summarise_check(store.rows(CHECK_TABLE, run_id=run.run_id), radii)
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)


def summarise_check(rows: list[dict[str, Any]], radii: Sequence[float]) -> dict[str, Any]:
    """Per radius: the attack's robust accuracy beside certified accuracy, and violations."""
    out = []
    for r in radii:
        at = [x for x in rows if abs(x["radius"] - r) < 1e-12]
        robust = proportion(sum(x["robust"] for x in at), len(at))
        cert = proportion(sum(x["certified"] for x in at), len(at))
        out.append({"radius": r, "images": len(at), "empirical_accuracy": robust.rate,
                    "empirical_ci95": robust.ci95, "certified_accuracy": cert.rate,
                    "violations": sum(x["violation"] for x in at)})
    return {"radii": out, "violations": sum(c["violations"] for c in out),
            "consistent": all(c["violations"] == 0 for c in out)}
