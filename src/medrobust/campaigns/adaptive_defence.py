"""Adaptive evaluation: attacks that see the defence (the denoising paper's stated limit).

A defence evaluated only on adversarial images made against the bare classifier can look strong
because the attacker never knew it was there. Here the attacker attacks the composed model
(denoiser, then classifier; ``DefendedClassifier``):

* a fresh one-pixel attack (black box, so it works for every defence as is);
* PGD-Linf and PGD-L2 end to end, through the autoencoder's real gradients, and through BPDA
  (identity backward) for the NumPy filters.

Robust accuracy at each budget is the share of images the defended model still classifies
correctly after the attack; images it gets wrong without any attack count as failures. The
undefended model (denoiser ``none``) is evaluated the same way, beside it. Every (attack, budget,
image) result is committed to ``adaptive_results`` as it is done, so the evaluation resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medrobust.attacks.onepixel import OnePixel
from medrobust.attacks.pgd import PGD
from medrobust.attacks.projection import check_budget
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.defences.base import Denoiser
from medrobust.defences.composed import DefendedClassifier
from medrobust.defences.registry import dataset_name, denoiser_label
from medrobust.defences.source import AttackedSet
from medrobust.errors import ConfigError
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.utils.validation import check_range

ADAPTIVE_COMMAND = "defend adaptive"

ADAPTIVE_TABLE = ResultTable(
    "adaptive_results",
    {
        "dataset_index": "INTEGER",
        "attack": "TEXT",  # clean | onepixel | pgd-linf | pgd-l2
        "eps": "REAL",
        "label": "INTEGER",
        "pred": "INTEGER",
        "correct": "INTEGER",
        "status": "TEXT",
        "queries": "INTEGER",
        "linf": "REAL",
        "l2": "REAL",
    },
)


@dataclass
class AdaptiveConfig:
    """Budgets of the adaptive attacks; eps on the [0,1] pixel scale."""

    linf_eps: tuple[float, ...] = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
    l2_eps: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0)
    pgd_steps: int = 20
    onepixel: bool = True
    onepixel_population: int = 100
    onepixel_generations: int = 20
    limit: int | None = None
    batch_size: int = 32
    seed: int = 0
    attacks: tuple[str, ...] = field(default=("onepixel", "pgd-linf", "pgd-l2"))

    def validate(self) -> None:
        check_range("pgd_steps", self.pgd_steps, 1)
        check_range("onepixel_population", self.onepixel_population, 4)
        check_range("onepixel_generations", self.onepixel_generations, 0)
        check_range("batch_size", self.batch_size, 1)
        if self.limit is not None:
            check_range("limit", self.limit, 1)
        for e in self.linf_eps:
            check_budget("eps", e, "linf", positive=True, unit="/255")
        for e in self.l2_eps:
            check_budget("eps", e, "l2", positive=True)
        for a in self.attacks:
            if a not in ("onepixel", "pgd-linf", "pgd-l2"):
                raise ConfigError(f"unknown adaptive attack {a!r}: use onepixel, pgd-linf, pgd-l2")

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("linf_eps", "l2_eps", "attacks"):
            out[k] = list(out[k])
        return out


def _budgets(config: AdaptiveConfig) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [("clean", 0.0)]
    if "onepixel" in config.attacks and config.onepixel:
        out.append(("onepixel", 0.0))
    if "pgd-linf" in config.attacks:
        out += [("pgd-linf", float(e)) for e in config.linf_eps]
    if "pgd-l2" in config.attacks:
        out += [("pgd-l2", float(e)) for e in config.l2_eps]
    return out


def _key(attack: str, eps: float, index: int) -> str:
    return f"{attack}:{eps:.6g}:{index}"


def summarise_adaptive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Robust accuracy per attack and budget: {"clean": acc, "onepixel": acc, "pgd-linf": {eps: acc}}."""
    out: dict[str, Any] = {"images": len({r["dataset_index"] for r in rows})}
    groups: dict[tuple[str, float], list[int]] = {}
    for r in rows:
        groups.setdefault((r["attack"], float(r["eps"] or 0.0)), []).append(int(r["correct"]))
    for (attack, eps), vals in sorted(groups.items()):
        acc = float(np.mean(vals))
        if attack in ("clean", "onepixel"):
            out[attack] = acc
            out[f"{attack}_n"] = len(vals)
        else:
            out.setdefault(attack, {})[f"{eps:.6g}"] = acc
    return out


def _pgd(model: DefendedClassifier, norm: str, eps: float, steps: int, seed: int,
         x: torch.Tensor, y: torch.Tensor, keys: list[int]) -> torch.Tensor:
    attack = PGD(model, norm=norm, eps=eps, steps=steps, random_start=True, seed=seed,
                 batch_size=x.shape[0])
    return attack(x, y, keys=keys).adversarial


def evaluate_adaptive(store: Store, classifier: Classifier, denoiser: Denoiser,
                      attacked: AttackedSet, config: AdaptiveConfig | None = None,
                      resume: bool = True, show_progress: bool = True) -> CampaignOutcome:
    """Attack ``denoiser`` + ``classifier`` end to end on the clean images of a one-pixel run.

    The images are the run's attacked images (those the undefended model got right), the first
    ``config.limit`` of them.
    """
    config = config or AdaptiveConfig()
    config.validate()
    run = attacked.run
    n = len(attacked) if config.limit is None else min(config.limit, len(attacked))
    indices = attacked.indices[:n]
    clean = attacked.clean[:n]
    labels = attacked.labels[:n]
    defended = DefendedClassifier(classifier, denoiser, batch_size=min(classifier.batch_size or 256, 256))
    params = {"source_run": run["id"], "denoiser": denoiser.spec(), "images": indices.tolist(),
              "config": config.params()}
    start = time.perf_counter()
    position = {int(i): j for j, i in enumerate(indices.tolist())}
    items = [_key(attack, eps, int(i)) for attack, eps in _budgets(config) for i in indices]
    budget_of = {_key(attack, eps, int(i)): (attack, eps, int(i))
                 for attack, eps in _budgets(config) for i in indices}
    with batch_run(store, ADAPTIVE_TABLE, ADAPTIVE_COMMAND, params, model=run.get("model"),
                   dataset=run.get("dataset"), items=items, size=config.batch_size,
                   desc=f"adaptive {denoiser.name}", resume=resume,
                   show_progress=show_progress, group=lambda k: budget_of[k][:2]) as br:
        for batch in br.batches():
            attack, eps, _ = budget_of[batch[0]]
            sel = np.asarray([position[budget_of[k][2]] for k in batch])
            br.record_many(_attack_batch(defended, attack, eps, config, indices[sel],
                                         clean[sel], labels[sel]))
    run_id, resumed, computed = br.run_id, br.resumed, len(br.todo)
    summary = {"denoiser": denoiser.spec(), "label": denoiser_label(denoiser.spec()),
               "dataset": dataset_name(run.get("dataset")), "source_run": run["id"],
               "config": config.params(),
               **summarise_adaptive(store.rows(ADAPTIVE_TABLE, run_id=run_id))}
    store.finish_run(run_id, "completed", summary)
    return CampaignOutcome(run_id, resumed, computed, time.perf_counter() - start, summary)


def _attack_batch(model: DefendedClassifier, attack: str, eps: float, config: AdaptiveConfig,
                  indices: np.ndarray, clean: np.ndarray, labels: np.ndarray
                  ) -> list[tuple[str, dict[str, Any]]]:
    """One batch of one attack at one budget; rows keyed by (attack, eps, dataset index)."""
    keys = [int(i) for i in indices]
    x = model.to_tensor(clean)
    extra: list[dict[str, Any]] = [{} for _ in keys]
    if attack == "clean":
        adv = x
    elif attack == "onepixel":
        # The reference engine: plain forward passes of the whole defended model, exact for
        # any denoiser (the fast cone engine assumes it can trace the model).
        op = OnePixel(model, population=config.onepixel_population,
                      generations=config.onepixel_generations, seed=config.seed,
                      engine="reference", max_batch_images=len(keys))
        result = op(clean, labels, keys=keys)
        adv = result.adversarial
        extra = [{"status": r.status, "queries": r.queries} for r in result.records]
    else:
        norm = attack.split("-")[1]
        adv = _pgd(model, norm, eps, config.pgd_steps, config.seed, x,
                   torch.as_tensor(labels, device=x.device), keys)
    pred = model.predict(adv)
    delta = (adv - x).flatten(1)
    linf = delta.abs().amax(1).tolist() if delta.numel() else [0.0] * len(keys)
    l2 = delta.norm(dim=1).tolist() if delta.numel() else [0.0] * len(keys)
    rows = []
    for j, i in enumerate(keys):
        rows.append((_key(attack, eps, i), {
            "dataset_index": i, "attack": attack, "eps": eps, "label": int(labels[j]),
            "pred": int(pred[j]), "correct": int(pred[j] == labels[j]), "linf": float(linf[j]),
            "l2": float(l2[j]), **extra[j]}))
    return rows


def robust_curve(summary: dict[str, Any], attack: str) -> list[tuple[float, float]]:
    """(eps, robust accuracy) pairs of one PGD attack from a summary, by increasing eps."""
    values: Sequence[tuple[str, float]] = list((summary.get(attack) or {}).items())
    return sorted((float(k), float(v)) for k, v in values)
