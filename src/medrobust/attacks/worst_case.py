"""The worst case per image over several attacks, judged by the task's own metric.

Why: on segmentation, landmark and detection models different attacks win on different images
(Croce et al.'s SEA; Halmosi et al. 2024), and no single loss is the metric a user reports. An
image's result here is the member's adversarial image that hurt the task metric most (lowest
Dice, largest radial error, lowest image mAP), so the ensemble is never weaker than any member
on any image: every member runs on every image with its own per-image seeds, exactly as it
would alone, and the choice is made afterwards. Budgets hold because every member's do: the
returned image is one of theirs, unchanged.

``damage(model, images, targets) -> (N,)`` scores an image batch (higher: worse for the model);
it comes from the task (``Task.image_damage``) so this module names no task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from medrobust.attacks.base import Attack, as_image_batch, model_device
from medrobust.attacks.projection import plain_budget
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError

Damage = Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]


class WorstCase(Attack):
    """Run every member; per image keep the adversarial image with the largest ``damage``
    (ties: the earlier member). ``extras``: ``damage`` (N,), ``member`` (the winner's label per
    image) and ``damage_by_member`` ({label: (N,)}), for reports that show each member."""

    name = "worst-case"

    def __init__(self, model: nn.Module, members: Sequence[Attack], damage: Damage, *,
                 labels: Sequence[str] | None = None, seed: int = 0,
                 progress: bool = False) -> None:
        super().__init__(model, seed, progress)
        if not members:
            raise ConfigError("a worst-case ensemble needs at least one member")
        self.members = list(members)
        self.damage = damage
        norms = {getattr(m, "norm", None) for m in self.members}
        if len(norms) > 1:
            raise ConfigError(f"worst-case members must share one norm, got {sorted(map(str, norms))}")
        self.norm = norms.pop()
        self.labels = list(labels) if labels is not None else [
            str(getattr(m, "label", None) or m.name) for m in self.members]
        if len(self.labels) != len(self.members) or len(set(self.labels)) != len(self.labels):
            raise ConfigError("worst-case members need distinct labels, one each")
        self.eps = getattr(self.members[0], "eps", None)

    def params(self) -> dict[str, Any]:
        return {"attack": self.name, "norm": self.norm, "eps": plain_budget(self.eps),
                "members": [{"label": lab, **m.params()}
                            for lab, m in zip(self.labels, self.members, strict=True)]}

    def check_images(self, shape: Sequence[int]) -> None:
        for m in self.members:
            m.check_images(shape)

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **extra: Any) -> AttackResult:
        if extra:
            raise ConfigError(f"WorstCase.run got unknown options: {', '.join(sorted(extra))}")
        x = as_image_batch(images, model_device(self.model))
        n = x.shape[0]
        best = x.clone()
        best_damage = torch.full((n,), -torch.inf, dtype=torch.float64)
        winner = [""] * n
        by_member: dict[str, torch.Tensor] = {}
        steps = torch.zeros(n, dtype=torch.long)
        for label, member in zip(self.labels, self.members, strict=True):
            result = member(x, labels, keys=keys)
            adv = result.adversarial.to(x.device)
            with torch.no_grad():
                hurt = self.damage(self.model, adv, labels).detach().double().cpu()
            by_member[label] = hurt
            better = hurt > best_damage
            best[better.to(x.device)] = adv[better.to(x.device)]
            best_damage = torch.where(better, hurt, best_damage)
            for j in torch.nonzero(better).flatten().tolist():
                winner[j] = label
            if result.steps is not None:
                steps += result.steps.cpu()
        return AttackResult(best, steps=steps, extras={
            "damage": best_damage, "member": winner, "damage_by_member": by_member})
