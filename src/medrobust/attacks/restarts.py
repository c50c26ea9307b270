"""Random restarts for any seeded attack: keep, per image, the restart that hurt most.

One PGD run from one random start can stall in a flat or masked region; several starts are the
cheapest check that a model's robustness is not an artefact of where the attack began, and they
work for every task (the comparison is the task's own loss), unlike APGD-DLR or Square, which
need class logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch

from medrobust.attacks.base import Attack, as_image_batch, model_device
from medrobust.attacks.result import AttackResult
from medrobust.errors import ConfigError
from medrobust.utils.validation import check_range


class Restarts(Attack):
    """Run ``attack`` ``restarts`` times with seeds seed, seed+1, ... and keep per image the
    adversarial image with the highest ``loss(model(adv), target)`` (ties: the earlier restart).

    ``loss`` is the per-sample loss the attack maximises (a task's ``attack_loss``). Restart r
    uses seed ``attack.seed + r``, and each image keeps its own key within it, so results stay
    the same alone or in a batch. Steps and queries add up over the restarts.
    ``progress`` shows a bar over the restarts; each restart shows its own bar too when the
    wrapped attack has ``progress=True``.
    """

    def __init__(self, attack: Attack, restarts: int = 5,
                 loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                 progress: bool = False) -> None:
        if not isinstance(attack, Attack):
            raise ConfigError("Restarts wraps a medrobust attack")
        super().__init__(attack.model, attack.seed, progress)
        self.attack = attack
        self.restarts = int(check_range("restarts", restarts, 1))
        self.loss = loss if loss is not None else getattr(attack, "loss", None)
        if not callable(self.loss):
            raise ConfigError("Restarts needs the per-sample loss that decides which restart "
                              "won (the attack has none: pass loss=...)")
        self.name = f"{attack.name}-r{self.restarts}"

    def params(self) -> dict[str, Any]:
        return {**self.attack.params(), "attack": self.name, "restarts": self.restarts}

    def check_images(self, shape: Sequence[int]) -> None:
        """The wrapped attack's budget check (an L2 budget beyond the image range)."""
        self.attack.check_images(shape)

    def run(self, images: Any, labels: Any, keys: Sequence[int] | None = None,
            **kwargs: Any) -> AttackResult:
        device = model_device(self.model)
        x = as_image_batch(images, device)
        best: AttackResult | None = None
        best_loss = torch.full((x.shape[0],), float("-inf"), device=device)
        steps = queries = None
        with self.progress_bar(x.shape[0]) as bar:
            for r in range(self.restarts):
                attack = copy.copy(self.attack)
                attack.seed = self.attack.seed + r
                result = attack(x, labels, keys=keys, **kwargs)
                with torch.no_grad():
                    value = self.loss(self.model(result.adversarial.to(device)),
                                      _on(labels, device)).detach()
                if best is None:
                    best, best_loss = result, value
                else:
                    better = value > best_loss
                    view = (-1, *([1] * (x.ndim - 1)))
                    adv = torch.where(better.view(view).to(result.adversarial.device),
                                      result.adversarial, best.adversarial)
                    success = None if result.success is None or best.success is None else \
                        torch.where(better.cpu(), result.success, best.success)
                    best = AttackResult(adv, success=success,
                                        extras=_pick_extras(better.cpu(), result.extras,
                                                            best.extras))
                    best_loss = torch.where(better, value, best_loss)
                steps = _add(steps, result.steps)
                queries = _add(queries, result.queries)
                bar.advance(x.shape[0] / self.restarts)
        assert best is not None
        best.steps, best.queries = steps, queries
        best.extras = {**best.extras, "restart_loss": best_loss.cpu()}
        return best


def _pick_extras(better: torch.Tensor, new: dict[str, Any], old: dict[str, Any]
                 ) -> dict[str, Any]:
    """Per-image extras from the restart that each image keeps (tensors or lists with one row
    per image); batch-level extras stay the first restart's."""
    n = int(better.shape[0])
    out = dict(old)
    for key, value in new.items():
        kept = old.get(key)
        if isinstance(value, torch.Tensor) and isinstance(kept, torch.Tensor) and \
                value.ndim and value.shape[0] == n and kept.shape == value.shape:
            out[key] = torch.where(better.view(-1, *([1] * (value.ndim - 1))).to(value.device),
                                   value, kept.to(value.device))
        elif isinstance(value, list) and isinstance(kept, list) and len(value) == len(kept) == n:
            out[key] = [v if b else k for v, k, b in zip(value, kept, better.tolist(),
                                                         strict=True)]
    return out


def _on(labels: Any, device: torch.device) -> Any:
    """Targets as the loss expects them: a tensor on ``device``, or ragged lists as given."""
    if isinstance(labels, list) and labels and isinstance(labels[0], (tuple, dict)):
        return labels
    return torch.as_tensor(labels).to(device)


def _add(total: torch.Tensor | None, more: torch.Tensor | None) -> torch.Tensor | None:
    if more is None:
        return total
    return more.clone() if total is None else total + more
