"""Certifying a model over a split, one row per image, resumable: any task with a
``Task.certification`` (classifiers by randomized smoothing, segmenters by SegCertify,
landmark and detection models by median smoothing).

Each image's certificate is committed as it finishes: at n = 10 000 noise samples an image costs
thousands of forward passes, so a kill loses at most the image in flight. The task says how one
image is certified and how the rows are summarised (certified accuracy, Dice or error bounds at
each radius, with intervals); this loop only batches, records and resumes.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote, is_remote
from medrobust.certify import classification as classifier_certificates
from medrobust.certify.settings import CertifySettings
from medrobust.errors import ConfigError
from medrobust.metrics.proportion import proportion
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.tasks import DEFAULT_TASK, Task, get_task
from medrobust.utils.validation import check_range

#: the classifiers' table (other tasks declare theirs in ``Task.certification``)
CERTIFY_TABLE = classifier_certificates.TABLE
COMMAND = "certify smoothing"
certified_accuracy = classifier_certificates.certified_accuracy

__all__ = ["CERTIFY_TABLE", "COMMAND", "CertifySettings", "certified_accuracy",
           "run_certify_campaign"]


def certifying_task(model: Any) -> Task:
    """The task of ``model`` (a wrapper without one is a classifier, as in old checkpoints),
    refused in one line when it has no certificate."""
    task = get_task(getattr(model, "task", None) or DEFAULT_TASK)
    if task.certification is None:
        raise ConfigError(f"{task.name} models have no certificate in this version")
    return task


@dataclass
class CertifyContext:
    task: Task
    certify_one: Any
    dataset: Any


def certify_context(model: Any, dataset: Any, params: dict[str, Any]) -> CertifyContext:
    """A Ray worker's context, around the model it loaded from the checkpoint."""
    task = get_task(params["task"])
    assert task.certification is not None
    settings = CertifySettings.from_params(params["settings"])
    return CertifyContext(task, task.certification.certifier(model, settings), dataset)


def certify_chunk(ctx: CertifyContext, chunk: list[int], emit: Any
                  ) -> tuple[list[tuple[int, dict[str, Any]]], None]:
    """Certify each image of the chunk; in process every row is committed as it finishes."""
    rows = []
    for i in chunk:
        t0 = time.perf_counter()
        row = {"dataset_index": int(i), **ctx.certify_one(ctx.dataset, int(i)),
               "seconds": time.perf_counter() - t0}
        if emit is None:
            rows.append((int(i), row))
        else:
            emit(int(i), row)
    return rows, None


def run_certify_campaign(store: Store, model: Any, model_info: dict[str, Any],
                         dataset: Any, settings: CertifySettings, indices: Sequence[int],
                         resume: bool = True, show_progress: bool = True,
                         executor: Executor | None = None) -> CampaignOutcome:
    """Certify ``dataset[indices]`` with the method of the model's task and record each image;
    the summary is the task's (certified accuracy, Dice or error bound at ``settings.radii``).
    Ray workers load the checkpoint ``model_info["dir"]``."""
    settings.validate()
    task = certifying_task(model)
    how = task.certification
    assert how is not None
    if is_remote(executor):
        check_remote(executor, model_info.get("dir"))
    params = {"smoothing": settings.certify_params(how.radii_free),
              "indices": [int(i) for i in indices]}
    if task.name != DEFAULT_TASK:  # classifier runs keep the fingerprint they always had
        params["task"] = task.name
    start = time.perf_counter()
    with batch_run(store, how.table, COMMAND, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split},
                   items=[int(i) for i in indices], size=4,
                   desc=f"certify sigma={settings.sigma:g}", resume=resume,
                   show_progress=show_progress) as run:
        run.execute(Work(
            compute=certify_chunk,
            local=lambda: CertifyContext(task, how.certifier(model, settings), dataset),
            remote=certify_context,
            params={"task": task.name, "settings": settings.params()},
            model_dir=model_info.get("dir", ""), data=dataset), executor)
    return _finish(store, run, {**how.summary(store.rows(how.table, run_id=run.run_id),
                                              settings),
                                "task": task.name, "method": how.method}, start)


def _finish(store: Store, run: Any, summary: dict[str, Any], start: float) -> CampaignOutcome:
    """Close a run with its summary and this session's seconds."""
    seconds = time.perf_counter() - start
    summary["seconds_this_session"] = seconds
    store.finish_run(run.run_id, "completed", summary)
    return CampaignOutcome(run.run_id, run.resumed, len(run.todo), seconds, summary)


def certified_at(store: Store, model_dir: str, dataset: dict[str, Any]) -> dict[str, Any]:
    """The newest finished certification of this checkpoint on this split (``dataset``: the
    spec and split a run records): ``{"run": id, "sigma": s, "metric": name, "cells": {radius:
    {"value", "ci95"}}}`` or {} when there is none. Commands put it beside the attacks'
    numbers: a certificate bounds the smoothed model from below where an attack bounds the model
    from above."""
    for run in reversed(store.runs(COMMAND)):
        if run.get("status") != "completed" or (run.get("model") or {}).get("dir") != model_dir \
                or run.get("dataset") != dataset:
            continue
        s = run.get("summary") or {}
        return {"run": run["id"], "sigma": s.get("sigma"), "metric": s.get("metric"),
                "cells": {float(c["radius"]): c for c in s.get("certified") or []}}
    return {}


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


def parse_check_item(item: str) -> tuple[float, int]:
    """(radius, dataset index) of a ``check_item``."""
    r_text, i_text = item.split("/")
    return float(r_text), int(i_text)


def certificates_digest(entries: list[Any]) -> str:
    """The fingerprint of the certificates a check ran on: other certificates, another run."""
    return hashlib.sha256(json.dumps(entries, default=str).encode()).hexdigest()


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
    digest = certificates_digest(
        [[i, certified[i]["prediction"], certified[i]["radius"], certified[i]["correct"]]
         for i in sorted(certified)])
    params = {"smoothing": settings.params(), "check": asdict(check),
              "indices": sorted(certified), "certificates": digest,
              "certify_run": certify_run}
    smooth = classifier_certificates.smoothed(classifier, settings)
    eot = SmoothedLogits(classifier, settings.sigma, check.samples)
    start = time.perf_counter()
    with batch_run(store, CHECK_TABLE, CHECK_COMMAND, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split}, items=items, size=1,
                   desc="certify check", resume=resume, show_progress=show_progress) as run:
        for (item,) in run.chunks():
            t0 = time.perf_counter()
            radius, i = parse_check_item(item)
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
    return _finish(store, run, summarise_check(store.rows(CHECK_TABLE, run_id=run.run_id),
                                               radii), start)


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


# -- the cross-check of dense certificates: the task's attack on its smoothed model --------------

DENSE_CHECK_TABLE = ResultTable(
    "certify_dense_check_results",
    {
        "dataset_index": "INTEGER",
        "radius": "REAL",
        "attacked": "REAL",
        "certified": "REAL",
        "violation": "INTEGER",
        "l2": "REAL",
        "seconds": "REAL",
    },
)


def run_dense_check_campaign(store: Store, model: Any, model_info: dict[str, Any],
                             dataset: Any, settings: CertifySettings, check: CheckSettings,
                             certify_rows: list[dict[str, Any]], resume: bool = True,
                             show_progress: bool = True,
                             certify_run: int | None = None) -> CampaignOutcome:
    """Attack the smoothed segmentation, landmark or detection model at every positive radius
    of its certificates (``Task.certification.check``) and record, per image and radius, the
    attacked metric beside the certified one and the violations: outputs the certificate says
    no perturbation within the radius can move, moved beyond doubt. A violation is an
    evaluation bug, reported, never hidden."""
    import numpy as np

    settings.validate()
    check.validate()
    task = certifying_task(model)
    how = task.certification
    assert how is not None and how.check is not None and task.attack_targets is not None
    rows = {int(r["dataset_index"]): r for r in certify_rows}
    radii = [r for r in settings.radii if r > 0]
    items = [check_item(r, i) for r in radii for i in sorted(rows)]
    digest = certificates_digest([[i, rows[i]["by_radius"]] for i in sorted(rows)])
    params = {"smoothing": settings.params(), "check": asdict(check), "task": task.name,
              "indices": sorted(rows), "certificates": digest, "certify_run": certify_run}
    check_one = how.check(model, settings, check, task.attack_loss(model))
    start = time.perf_counter()
    with batch_run(store, DENSE_CHECK_TABLE, CHECK_COMMAND, params, model=model_info,
                   dataset={**dataset.spec, "split": dataset.split}, items=items, size=1,
                   desc="certify check", resume=resume, show_progress=show_progress) as run:
        for (item,) in run.chunks():
            t0 = time.perf_counter()
            radius, i = parse_check_item(item)
            targets = task.attack_targets(dataset, np.asarray([i]))
            out = check_one(dataset, i, targets, rows[i], radius)
            run.record(item, {"dataset_index": i, "radius": radius, **out,
                              "seconds": time.perf_counter() - t0})
            run.advance()
    return _finish(store, run, summarise_dense_check(
        store.rows(DENSE_CHECK_TABLE, run_id=run.run_id), radii), start)


def summarise_dense_check(rows: list[dict[str, Any]], radii: Sequence[float]) -> dict[str, Any]:
    """Per radius: the attacked metric's mean beside the certified one's, and violations."""
    import numpy as np

    out = []
    for r in radii:
        at = [x for x in rows if abs(x["radius"] - r) < 1e-12]
        attacked = [x["attacked"] for x in at if x["attacked"] is not None]
        certified = [x["certified"] for x in at if x["certified"] is not None]
        out.append({"radius": r, "images": len(at),
                    "attacked": float(np.mean(attacked)) if attacked else None,
                    "certified": float(np.mean(certified)) if certified else None,
                    "violations": sum(int(x["violation"] > 0) for x in at)})
    return {"radii": out, "violations": sum(c["violations"] for c in out),
            "consistent": all(c["violations"] == 0 for c in out)}
