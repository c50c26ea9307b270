"""Adaptive evaluation: attacks that see the defence (the denoising paper's stated limit).

A defence evaluated only on adversarial images made against the bare classifier can look strong
because the attacker never knew it was there. Here the attacker attacks the composed model
(denoiser, then classifier; ``DefendedClassifier``):

* a fresh one-pixel attack (black box, so it works for every defence as is);
* PGD-Linf and PGD-L2 end to end, through the autoencoder's real gradients, and through BPDA
  (identity backward) for the NumPy filters;
* Square (score-based black box: it queries the real defended model, so a filter that only
  breaks gradients cannot hide from it);
* the AutoAttack-style ensemble (APGD-CE, APGD-T, Square, and the BPDA/end-to-end PGD): an image
  counts as robust only if it survives every member, so this is the number to quote.

Robust accuracy at each budget is the share of images the defended model still classifies
correctly after the attack; images it gets wrong without any attack count as failures. The
undefended model (denoiser ``none``) is evaluated the same way, beside it. Every (attack, budget,
image) result is committed to ``adaptive_results`` as it is done, so the evaluation resumes.
A defence whose robust accuracy under PGD exceeds its accuracy under Square at the same budget
by more than ``MASKING_GAP`` is flagged: gradients that mislead PGD but not a black-box search
are the signature of gradient masking (the 3x3 median filter on PneumoniaMNIST: 75 % under
PGD-Linf 8/255, 9 % under Square).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from medrobust.attacks.ensemble import AttackEnsemble, standard_attacks
from medrobust.attacks.onepixel import OnePixel
from medrobust.attacks.pgd import PGD
from medrobust.attacks.projection import check_budget
from medrobust.attacks.result import perturbation_norms
from medrobust.attacks.square import Square
from medrobust.campaigns.base import CampaignOutcome, batch_run
from medrobust.campaigns.executor import Executor, Work, check_remote
from medrobust.defences.base import Denoiser
from medrobust.defences.composed import DefendedClassifier
from medrobust.defences.registry import dataset_name, denoiser_label
from medrobust.defences.source import AttackedSet
from medrobust.errors import ConfigError
from medrobust.metrics.proportion import proportion
from medrobust.models.classifier import Classifier
from medrobust.store import ResultTable, Store
from medrobust.utils.validation import check_range

ADAPTIVE_COMMAND = "defend adaptive"
#: every adaptive attack; the budgeted ones come in a Linf and an L2 form
ATTACKS = ("onepixel", "pgd-linf", "pgd-l2", "square-linf", "square-l2", "ensemble-linf",
           "ensemble-l2")
#: robust accuracy under PGD above Square's by more than this flags likely gradient masking
MASKING_GAP = 0.10

ADAPTIVE_TABLE = ResultTable(
    "adaptive_results",
    {
        "dataset_index": "INTEGER",
        "attack": "TEXT",  # clean | onepixel | pgd-*, square-*, ensemble-* (linf | l2)
        "eps": "REAL",
        "label": "INTEGER",
        "pred": "INTEGER",
        "correct": "INTEGER",
        "status": "TEXT",  # one-pixel status; the ensemble: the member that fooled it
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
    square_queries: int = 1000
    limit: int | None = None
    batch_size: int = 32
    seed: int = 0
    attacks: tuple[str, ...] = field(default=ATTACKS)

    def validate(self) -> None:
        check_range("pgd_steps", self.pgd_steps, 1)
        check_range("onepixel_population", self.onepixel_population, 4)
        check_range("onepixel_generations", self.onepixel_generations, 0)
        check_range("square_queries", self.square_queries, 1)
        check_range("batch_size", self.batch_size, 1)
        if self.limit is not None:
            check_range("limit", self.limit, 1)
        for e in self.linf_eps:
            check_budget("eps", e, "linf", positive=True)
        for e in self.l2_eps:
            check_budget("eps", e, "l2", positive=True)
        for a in self.attacks:
            if a not in ATTACKS:
                raise ConfigError(f"unknown adaptive attack {a!r}: use {', '.join(ATTACKS)}")

    def params(self) -> dict[str, Any]:
        out = asdict(self)
        for k in ("linf_eps", "l2_eps", "attacks"):
            out[k] = list(out[k])
        return out


def _budgets(config: AdaptiveConfig) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = [("clean", 0.0)]
    if "onepixel" in config.attacks and config.onepixel:
        out.append(("onepixel", 0.0))
    for family in ("pgd", "square", "ensemble"):
        for norm, levels in (("linf", config.linf_eps), ("l2", config.l2_eps)):
            if f"{family}-{norm}" in config.attacks:
                out += [(f"{family}-{norm}", float(e)) for e in levels]
    return out


def _key(attack: str, eps: float, index: int) -> str:
    return f"{attack}:{eps:.6g}:{index}"


def summarise_adaptive(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Robust accuracy per attack and budget: {"clean": acc, "onepixel": acc, "pgd-linf":
    {eps: acc}, ...}, with ``n`` and 95 % Wilson intervals (``ci95``) for every cell, and the
    budgets where PGD and Square disagree enough to suggest gradient masking."""
    out: dict[str, Any] = {"images": len({r["dataset_index"] for r in rows})}
    groups: dict[tuple[str, float], list[int]] = {}
    for r in rows:
        groups.setdefault((r["attack"], float(r["eps"] or 0.0)), []).append(int(r["correct"]))
    n: dict[str, Any] = {}
    ci: dict[str, Any] = {}
    for (attack, eps), vals in sorted(groups.items()):
        p = proportion(sum(vals), len(vals))
        if attack in ("clean", "onepixel"):
            out[attack] = p.rate
            out[f"{attack}_n"] = len(vals)
            n[attack], ci[attack] = len(vals), p.ci95
        else:
            out.setdefault(attack, {})[f"{eps:.6g}"] = p.rate
            n.setdefault(attack, {})[f"{eps:.6g}"] = len(vals)
            ci.setdefault(attack, {})[f"{eps:.6g}"] = p.ci95
    out["n"], out["ci95"] = n, ci
    out["gradient_masking"] = masking_flags(out)
    return out


def masking_flags(summary: dict[str, Any], gap: float = MASKING_GAP) -> list[dict[str, Any]]:
    """Budgets where robust accuracy under PGD (gradients through the defence, BPDA for
    filters) exceeds robust accuracy under Square (no gradients at all) by more than ``gap``."""
    flags = []
    for norm in ("linf", "l2"):
        pgd, square = summary.get(f"pgd-{norm}") or {}, summary.get(f"square-{norm}") or {}
        for eps in sorted(set(pgd) & set(square), key=float):
            if pgd[eps] is not None and square[eps] is not None and pgd[eps] - square[eps] > gap:
                flags.append({"norm": norm, "eps": float(eps), "pgd": pgd[eps],
                              "square": square[eps], "gap": pgd[eps] - square[eps]})
    return flags


@dataclass
class AdaptiveContext:
    """What a worker needs: the defended model, the settings and the images by key."""

    model: DefendedClassifier
    config: AdaptiveConfig
    budget_of: dict[str, tuple[str, float, int]]
    position: dict[int, int]
    indices: np.ndarray
    clean: np.ndarray
    labels: np.ndarray


def _adaptive_items(config: AdaptiveConfig, indices: np.ndarray
                    ) -> dict[str, tuple[str, float, int]]:
    return {_key(attack, eps, int(i)): (attack, eps, int(i))
            for attack, eps in _budgets(config) for i in indices}


def adaptive_context(classifier: Classifier, data: dict[str, Any], params: dict[str, Any]
                     ) -> AdaptiveContext:
    from medrobust.defences.registry import rebuild_denoiser

    config = AdaptiveConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in params["config"].items()})
    denoiser = rebuild_denoiser(params["denoiser"], classifier.device)
    defended = DefendedClassifier(classifier, denoiser, batch_size=params["batch_size"])
    indices = data["indices"]
    return AdaptiveContext(defended, config, _adaptive_items(config, indices),
                           {int(i): j for j, i in enumerate(indices.tolist())}, indices,
                           data["clean"], data["labels"])


def adaptive_chunk(ctx: AdaptiveContext, batch: list[str], emit: Any
                   ) -> tuple[list[tuple[str, dict[str, Any]]], None]:
    """One batch (one attack at one budget) of keyed items."""
    attack, eps, _ = ctx.budget_of[batch[0]]
    sel = np.asarray([ctx.position[ctx.budget_of[k][2]] for k in batch])
    return _attack_batch(ctx.model, attack, eps, ctx.config, ctx.indices[sel], ctx.clean[sel],
                         ctx.labels[sel]), None


def evaluate_adaptive(store: Store, classifier: Classifier, denoiser: Denoiser,
                      attacked: AttackedSet, config: AdaptiveConfig | None = None,
                      resume: bool = True, show_progress: bool = True,
                      executor: Executor | None = None) -> CampaignOutcome:
    """Attack ``denoiser`` + ``classifier`` end to end on the clean images of a one-pixel run.

    The images are the run's attacked images (those the undefended model got right), the first
    ``config.limit`` of them. ``executor``: where the batches run (default: this process); Ray
    workers load the classifier from the run's checkpoint folder and rebuild the denoiser from
    its spec.
    """
    config = config or AdaptiveConfig()
    config.validate()
    run = attacked.run
    model_dir = (run.get("model") or {}).get("dir")
    check_remote(executor, model_dir)
    n = len(attacked) if config.limit is None else min(config.limit, len(attacked))
    indices = attacked.indices[:n]
    clean = attacked.clean[:n]
    labels = attacked.labels[:n]
    batch_size = min(classifier.batch_size or 256, 256)
    defended = DefendedClassifier(classifier, denoiser, batch_size=batch_size)
    params = {"source_run": run["id"], "denoiser": denoiser.spec(), "images": indices.tolist(),
              "config": config.params()}
    start = time.perf_counter()
    position = {int(i): j for j, i in enumerate(indices.tolist())}
    budget_of = _adaptive_items(config, indices)
    items = list(budget_of)
    with batch_run(store, ADAPTIVE_TABLE, ADAPTIVE_COMMAND, params, model=run.get("model"),
                   dataset=run.get("dataset"), items=items, size=config.batch_size,
                   desc="adaptive, no defence" if denoiser.name == "none"
                   else f"adaptive, {denoiser.name}", resume=resume,
                   show_progress=show_progress, group=lambda k: budget_of[k][:2]) as br:
        br.execute(Work(
            compute=adaptive_chunk,
            local=lambda: AdaptiveContext(defended, config, budget_of, position, indices,
                                          clean, labels),
            remote=adaptive_context,
            params={"config": config.params(), "denoiser": denoiser.spec(),
                    "batch_size": batch_size},
            model_dir=model_dir or "",
            data={"indices": indices, "clean": clean, "labels": labels}), executor)
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
        family, norm = attack.split("-")
        y = torch.as_tensor(labels, device=x.device)
        pgd = PGD(model, norm=norm, eps=eps, steps=config.pgd_steps, random_start=True,
                  seed=config.seed, batch_size=len(keys))
        if family == "pgd":
            adv = pgd(x, y, keys=keys).adversarial
        elif family == "square":
            result = Square(model, norm=norm, eps=eps, max_queries=config.square_queries,
                            batch_size=len(keys), seed=config.seed)(x, y, keys=keys)
            adv = result.adversarial
            extra = [{"queries": int(q)} for q in result.queries]
        else:
            members = standard_attacks(model, norm, eps, steps=config.pgd_steps,
                                       max_queries=config.square_queries,
                                       batch_size=len(keys), seed=config.seed)
            result = AttackEnsemble(model, members, extra=[pgd], norm=norm, eps=eps,
                                    batch_size=len(keys), seed=config.seed)(x, y, keys=keys)
            adv = result.adversarial
            extra = [{"status": by or "robust"} for by in result.fooled_by]
    pred = model.predict(adv)
    norms = perturbation_norms(adv, x)
    linf, l2 = norms["linf"].tolist(), norms["l2"].tolist()
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
