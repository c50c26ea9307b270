"""Per-image losses for attacking segmentation models, beyond the mean pixel cross-entropy.

Why: the mean cross-entropy over pixels is dominated by pixels the attack has already flipped
(their loss keeps growing without changing the mask), so PGD on it stalls and flatters the
model (Croce, Singh & Hein, ECCV 2024, "SEA"; Gu et al. 2022, SegPGD; Agnihotri & Keuper
2024, CosPGD). Each loss here turns the pixels still right into the objective:

- ``masked_ce``: cross-entropy over the pixels still classified correctly (SEA's Mask-CE);
- ``js_divergence``: Jensen-Shannon divergence between the prediction and the one-hot truth,
  bounded by log 2, so a flipped pixel stops pulling (SEA's JS);
- ``masked_margin``: the normalised logit margin of the correct pixels, (max other - true) /
  ||z||, scale-free like DLR (SEA's Mask-NM);
- ``cosine_ce``: cross-entropy weighted per pixel by the cosine similarity of the softmax and
  the one-hot truth, so confidently right pixels weigh most (CosPGD).

All take logits (N,K,H,W) and integer masks (N,H,W), return (N,) losses to maximise (targeted
attacks minimise them towards a target mask), and are averaged over all H*W pixels so an
image's loss does not jump when a pixel flips out of the mask.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medrobust.attacks.losses import LossFn, _check


def _dense(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    _check(outputs, target)
    if outputs.ndim != 4 or outputs.shape[1] < 2:
        from medrobust.errors import ConfigError

        raise ConfigError("dense losses need segmentation logits (N,K,H,W) with K >= 2")
    return target.long()


def _per_image(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.reshape(pixels.shape[0], -1).mean(dim=1)


def masked_ce(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the pixels whose prediction is still the target class."""
    y = _dense(outputs, target)
    ce = F.cross_entropy(outputs, y, reduction="none")
    right = (outputs.argmax(dim=1) == y).to(ce.dtype)
    return _per_image(ce * right)


def js_divergence(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (natural log, at most log 2) of softmax and one-hot truth."""
    y = _dense(outputs, target)
    p = torch.softmax(outputs, dim=1)
    q = F.one_hot(y, outputs.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    m = 0.5 * (p + q)
    kl_pm = (p * (torch.log(p.clamp_min(1e-12)) - torch.log(m.clamp_min(1e-12)))).sum(dim=1)
    # q is one-hot: KL(q || m) is -log m at the true class
    kl_qm = -torch.log(m.gather(1, y.unsqueeze(1)).squeeze(1).clamp_min(1e-12))
    return _per_image(0.5 * (kl_pm + kl_qm))


def masked_margin(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(largest other logit - true logit) / ||logits||_2 over the pixels still right: below
    zero while right, so raising it flips them; pixels already wrong add nothing."""
    y = _dense(outputs, target)
    true = outputs.gather(1, y.unsqueeze(1)).squeeze(1)
    others = outputs.scatter(1, y.unsqueeze(1), float("-inf")).amax(dim=1)
    norm = outputs.norm(dim=1).clamp_min(1e-12)
    right = (outputs.argmax(dim=1) == y).to(outputs.dtype)
    return _per_image((others - true) / norm * right)


def cosine_ce(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Pixel cross-entropy weighted by cos(softmax, one-hot) = p_y / ||p||_2 (not
    differentiated through: the weight steers, the cross-entropy climbs)."""
    y = _dense(outputs, target)
    p = torch.softmax(outputs, dim=1)
    weight = (p.gather(1, y.unsqueeze(1)).squeeze(1) / p.norm(dim=1).clamp_min(1e-12)).detach()
    return _per_image(weight * F.cross_entropy(outputs, y, reduction="none"))


#: the dense losses by name, and the bound each can reach (None: unbounded)
DENSE_LOSSES: dict[str, LossFn] = {"masked-ce": masked_ce, "js": js_divergence,
                                   "masked-margin": masked_margin, "cosine-ce": cosine_ce}
BOUNDS: dict[str, float | None] = {"masked-ce": None, "js": math.log(2), "masked-margin": None,
                                   "cosine-ce": None}
