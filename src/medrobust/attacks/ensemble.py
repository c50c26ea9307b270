"""Robust accuracy the AutoAttack way (Croce & Hein 2020): survive every attack or count as broken.

Why an ensemble: each attack fails in its own way (CE saturates, DLR needs room between the top
logits, gradient attacks are blind to gradient masking, Square is query-limited), and a defence
that beats one attack is often beaten by another. An image counts as robust only if it survives
all of them, so the reported robust accuracy is an upper bound that every added attack can only
lower. Later attacks run only on the images still robust, which is what makes the ensemble
affordable.

Judging: the ensemble scores every attack's adversarial images itself, with its own model,
budget and labels. An image is fooled only if its returned image is misclassified by the
ensemble's model, lies in [0,1] and within ``eps`` (float64 check against the float32 radius).
So an extra attack that runs on another model, e.g. PGD through a BPDA wrapper of a defended
model (``medrobust.defences.bpda``, built by the caller; this module never imports defences),
is judged on the model that is being evaluated, not on its surrogate, and an attack that
overshoots its budget gains nothing.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.apgd import APGD, APGDT
from medrobust.attacks.base import Attack, output_device
from medrobust.attacks.criteria import predictions
from medrobust.attacks.projection import NORMS, Budget, budget_param, flat_norm, plain_budget
from medrobust.attacks.result import AttackResult
from medrobust.attacks.square import Square
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_choice, check_range

Member = Attack | Callable[..., Any]


def standard_attacks(model: nn.Module, norm: str = "linf", eps: Budget = 8 / 255,
                     steps: int = 100, max_queries: int = 5000, n_target_classes: int = 9,
                     batch_size: int = 64, seed: int = 0, progress: bool = False
                     ) -> list[Attack]:
    """AutoAttack's standard list: APGD-CE, APGD-T (targeted DLR over the top-k other
    classes; the margin loss on 2-class heads) and Square; ``progress`` gives each its bar."""
    return [APGD(model, norm=norm, eps=eps, steps=steps, loss="ce", batch_size=batch_size,
                 seed=seed, progress=progress),
            APGDT(model, norm=norm, eps=eps, steps=steps, loss="dlr",
                  n_target_classes=n_target_classes, batch_size=batch_size, seed=seed,
                  progress=progress),
            Square(model, norm=norm, eps=eps, max_queries=max_queries, batch_size=batch_size,
                   seed=seed, progress=progress)]


def _member_name(member: Member) -> str:
    for attr in ("label", "name", "__name__"):
        value = getattr(member, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(member).__name__.lower()


def _takes_keys(member: Member) -> bool:
    fn = member.run if isinstance(member, Attack) else member
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    # a medrobust Attack takes keys through **kwargs; a foreign callable only if it names them
    return any(p.name == "keys" or (isinstance(member, Attack)
                                    and p.kind is inspect.Parameter.VAR_KEYWORD)
               for p in sig.parameters.values())


class AttackEnsemble(Attack):
    """Robust accuracy under a list of attacks, each run only on the images still robust.

    Parameters
    ----------
    model: the model being evaluated (float [0,1] (N,C,H,W) -> logits (N,K) or (N,1)); every
        member's images are judged on it.
    attacks: the members, in order; default ``standard_attacks(model, norm, eps, ...)``. A
        member is a medrobust ``Attack`` (its result's adversarial images are used) or any
        callable ``fn(images, labels) -> adversarial tensor`` (torchattacks style).
    extra: members appended after ``attacks`` (e.g. PGD on a BPDA-wrapped defended model).
    norm, eps: the threat model every member's images are checked against (eps a number or
        one per image).
    steps, max_queries, n_target_classes, batch_size: settings of the default members.
    progress: the default members show their bars on stderr, one after the other (members
        given in ``attacks`` or ``extra`` keep their own ``progress``); the ensemble's own work
        (judging each member's images) is a forward pass and draws no bar.
    """

    name = "ensemble"

    def __init__(self, model: nn.Module, attacks: Sequence[Member] | None = None, *,
                 extra: Sequence[Member] = (), norm: str = "linf", eps: Budget = 8 / 255,
                 steps: int = 100, max_queries: int = 5000, n_target_classes: int = 9,
                 batch_size: int = 64, seed: int = 0, progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        self.norm = check_choice("norm", norm, NORMS)
        self.eps = budget_param("eps", eps, self.norm)
        check_range("batch_size", batch_size, 1)
        self.batch_size = int(batch_size)
        members = list(standard_attacks(model, self.norm, eps, steps, max_queries,
                                        n_target_classes, batch_size, seed, self.progress)
                       if attacks is None else attacks) + list(extra)
        if not members:
            raise ConfigError("an attack ensemble needs at least one attack")
        for m in members:
            if not callable(m):
                raise ConfigError(f"ensemble members must be attacks or callables, "
                                  f"not {type(m).__name__}")
        self.attacks = members
        names: list[str] = []
        for m in members:
            base, k = _member_name(m), 2
            name = base
            while name in names or name == "clean":
                name, k = f"{base}-{k}", k + 1
            names.append(name)
        self.names = names

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "eps": plain_budget(self.eps),
                "members": [{"name": n, **(m.params() if isinstance(m, Attack) else
                                           {"callable": repr(m)})}
                            for n, m in zip(self.names, self.attacks, strict=True)],
                "seed": self.seed}

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([predictions(self.model(x[s:s + self.batch_size]))
                              for s in range(0, x.shape[0], self.batch_size)])

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        """Attack ``images`` (pixel space) with every member in turn.

        The result's ``success`` is "not robust": misclassified clean or fooled by any member;
        ``adversarial`` holds the fooling image (the clean one where robust or misclassified
        clean); ``queries``/``steps`` add up what the members report (None if none does).
        Extras: ``fooled_by`` per image (a member's name, ``clean`` for images misclassified
        before any attack, None for robust ones); ``robust_accuracy``, the robust accuracy
        after the clean check and after each member (batch-level, in order); ``seconds`` per
        member; ``rejected``, per member, images it returned misclassified but off budget.
        """
        batch = self.labelled_batch(images, labels, keys, kwargs)
        device, x, y, keys, eps = batch.device, batch.x, batch.y, batch.keys, batch.eps
        n = x.shape[0]

        robust = (self._predict(x) == y) if n else torch.zeros(0, dtype=torch.bool,
                                                                device=device)
        fooled_by: list[str | None] = [None if bool(r) else "clean" for r in robust.tolist()]
        adv = x.clone()
        queries = torch.zeros(n, dtype=torch.long)
        steps = torch.zeros(n, dtype=torch.long)
        counted = {"queries": False, "steps": False}
        accuracy = {"clean": _rate(robust)}
        seconds: dict[str, float] = {}
        rejected: dict[str, int] = {}
        for name, member in zip(self.names, self.attacks, strict=True):
            idx = robust.nonzero().squeeze(1)
            t0 = time.perf_counter()
            if idx.numel():
                sub_keys = [keys[i] for i in idx.tolist()]
                out = member(x[idx], y[idx], keys=sub_keys) if _takes_keys(member) \
                    else member(x[idx], y[idx])
                cand = out.adversarial if isinstance(out, AttackResult) else out
                if not isinstance(cand, torch.Tensor) or tuple(cand.shape) != tuple(x[idx].shape):
                    raise ConfigError(f"ensemble member {name} returned "
                                      f"{getattr(cand, 'shape', type(cand).__name__)}, not "
                                      f"images shaped {tuple(x[idx].shape)}")
                cand = cand.detach().to(device=device, dtype=torch.float32)
                if isinstance(out, AttackResult):
                    for field, total in (("queries", queries), ("steps", steps)):
                        got = getattr(out, field)
                        if got is not None:
                            total[idx.cpu()] += got.cpu().long()
                            counted[field] = True
                wrong = self._predict(cand) != y[idx]
                inside = self._within(x[idx], cand, eps[idx])
                hit = wrong & inside
                rejected[name] = int((wrong & ~inside).sum())
                adv[idx[hit]] = cand[hit]
                robust[idx[hit]] = False
                for i in idx[hit].tolist():
                    fooled_by[i] = name
            seconds[name] = time.perf_counter() - t0
            accuracy[name] = _rate(robust)
        return AttackResult(adv.to(output_device(images, device)), success=(~robust).cpu(),
                            queries=queries if counted["queries"] else None,
                            steps=steps if counted["steps"] else None,
                            extras={"fooled_by": fooled_by, "robust_accuracy": accuracy,
                                    "seconds": seconds, "rejected": rejected})

    def _within(self, x0: torch.Tensor, adv: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """(n,) bool: adv in [0,1] and ||adv - x0|| <= eps (float64 norms, float32 radius)."""
        box = (adv >= 0).flatten(1).all(dim=1) & (adv <= 1).flatten(1).all(dim=1)
        size = flat_norm(adv.double() - x0.double(), self.norm)
        return box & (size <= eps.double()) & torch.isfinite(adv).flatten(1).all(dim=1)


def _rate(robust: torch.Tensor) -> float | None:
    return float(robust.float().mean()) if robust.numel() else None
