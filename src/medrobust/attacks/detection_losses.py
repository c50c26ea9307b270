"""Per-image losses (to maximise) for attacking a CenterNet-style detector, beyond its loss.

Why: PGD on the training loss (TOG's "untargeted" attack, which raises the detector's own loss
against its truths: the protocol's PGD member already runs it, so it is not repeated here) is
one way to hurt a detector; objects that vanish, ghosts that appear and objects that change
class are others, and each wins on different images (Chow et al. 2020, TOG; Xie et al. 2017,
DAG). All read the raw output (N, C + 4, h, w) of ``models.centernet`` (class-heatmap logits,
then size, then offset, stride 4) and the targets the detection task gives attacks: one
(boxes (M, 4) xyxy input pixels, labels (M,)[, difficult (M,)]) per image, difficult objects
(which the mAP ignores) never attacked. ``tog_vanishing`` lowers every cell's class scores
with CenterNet's own focal term against an empty image (TOG's vanishing: descend the loss of
"no objects"), so the most confident cells pull hardest and vanished ones stop; no clamp, so a
saturated cell still has a gradient. ``tog_fabrication`` raises a smooth count of cells above
the confidence threshold (a sigmoid centred there): TOG ascends the same empty-image loss, which
on a focal loss pulls hardest on the cells already confident (the true objects, which cannot
become ghosts), so here cells near the threshold pull most and those far above it stop.
``tog_mislabeling`` keeps each true object's box but relabels it with the most likely other
class at its centre cell (TOG's "most likely" choice, re-read from the current logits each
step) and descends CenterNet's heatmap loss towards those targets: the size and offset heads
are class-agnostic, so a peak of another class at the same cell decodes the same box, and
their L1 terms (whose gradient never fades) would only spend the budget on boxes already
right. ``dag`` pushes, over each true object's centre region (its Gaussian in the training
heatmap, weighted by it), the true class's logit below the best other class's, a hinge at
zero so flipped cells stop pulling (Xie et al.'s active set, made continuous). Every loss is a
fixed-weight average (over cells, or over the truths' weights), so it never jumps when a cell
flips (mislabeling's only jump: when the most likely other class changes, its goal does);
with one class, DAG's "other class" is the confidence threshold's logit (the object is pushed
out of the confident detections) and mislabeling has no other label to give, so it is 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from medrobust.errors import ConfigError
from medrobust.metrics.detection import CONFIDENT_SCORE
from medrobust.models.centernet import split_outputs
from medrobust.models.centernet_codec import encode, gather_cells

DetectionLossFn = Callable[[torch.Tensor, Any], torch.Tensor]
#: CenterNet's output stride
STRIDE = 4


def _objects(targets: Any, n: int, device: torch.device
             ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """Per image: boxes (M, 4) float, labels (M,) long, difficult (M,) bool, on ``device``,
    from the list of per-image tuples attacks slice (not the loss's pair of per-image lists,
    which two images would make ambiguous)."""
    if not isinstance(targets, list) or len(targets) != n or \
            any(not isinstance(t, (tuple, list)) or len(t) not in (2, 3) for t in targets):
        raise ConfigError(f"detection losses take one (boxes, labels[, difficult]) per image "
                          f"for {n} images")
    boxes, labels, difficult = [], [], []
    for t in targets:
        b = torch.as_tensor(t[0], dtype=torch.float32, device=device).reshape(-1, 4)
        lab = torch.as_tensor(t[1], dtype=torch.long, device=device).reshape(-1)
        d = (torch.zeros(len(lab), dtype=torch.bool, device=device) if len(t) == 2 else
             torch.as_tensor(t[2], dtype=torch.bool, device=device).reshape(-1))
        if not (len(b) == len(lab) == len(d)):
            raise ConfigError("detection targets: boxes, labels and difficult flags differ in "
                              "length")
        boxes.append(b)
        labels.append(lab)
        difficult.append(d)
    return boxes, labels, difficult


def _focal(logits: torch.Tensor, heat: torch.Tensor, alpha: float = 2.0,
           beta: float = 4.0) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss per image, over the number of objects, in log-sigmoid
    form without the training loss's probability clamp (a clamped cell has no gradient, and an
    attack must move the saturated cells too)."""
    z = logits.float()
    p = torch.sigmoid(z)
    pos = heat.eq(1)
    pos_term = F.logsigmoid(z) * (1 - p) ** alpha * pos
    neg_term = F.logsigmoid(-z) * p ** alpha * (1 - heat) ** beta * ~pos
    n_pos = pos.flatten(1).sum(1).clamp(min=1)
    return -(pos_term + neg_term).flatten(1).sum(1) / n_pos


def tog_vanishing(outputs: torch.Tensor, targets: Any, num_classes: int) -> torch.Tensor:
    """Mean over cells and classes of p^2 log(1 - p) (<= 0): raising it suppresses every
    class score, the most confident cells first. ``targets`` are not read (TOG: no objects)."""
    logits, _, _ = split_outputs(outputs, num_classes)
    z = logits.float()
    return (torch.sigmoid(z) ** 2 * F.logsigmoid(-z)).flatten(1).mean(1)


def tog_fabrication(outputs: torch.Tensor, targets: Any, num_classes: int,
                    threshold: float = CONFIDENT_SCORE) -> torch.Tensor:
    """Mean over cells and classes of sigmoid(logit - logit(threshold)): a smooth fraction of
    cells scoring above ``threshold``, so raising it makes confident ghosts appear."""
    logits, _, _ = split_outputs(outputs, num_classes)
    shift = math.log(threshold / (1 - threshold))
    return torch.sigmoid(logits.float() - shift).flatten(1).mean(1)


def tog_mislabeling(outputs: torch.Tensor, targets: Any, num_classes: int) -> torch.Tensor:
    """Minus CenterNet's heatmap loss (unclamped focal) against the true boxes relabelled with
    each one's most likely other class at its centre cell (difficult objects keep their
    labels); 0 for images without a real object and for one-class detectors."""
    logits, _, _ = split_outputs(outputs, num_classes)
    n = outputs.shape[0]
    boxes, labels, difficult = _objects(targets, n, outputs.device)
    zero = logits.flatten(1).sum(1) * 0.0
    if num_classes < 2:
        return zero
    shape = tuple(outputs.shape[-2:])
    truth = encode(boxes, labels, shape, num_classes, STRIDE)
    with torch.no_grad():
        at_centre = gather_cells(logits.float(), truth["index"])  # (N, K, C)
        k = truth["index"].shape[1]
        true = torch.zeros(n, k, dtype=torch.long, device=outputs.device)
        for i, lab in enumerate(labels):
            true[i, :min(len(lab), k)] = lab[:k]
        other = at_centre.scatter(2, true[..., None], float("-inf")).argmax(2)
    new_labels = [torch.where(d, lab, other[i, :len(lab)]) for i, (lab, d) in
                  enumerate(zip(labels, difficult, strict=True))]
    goal = encode(boxes, new_labels, shape, num_classes, STRIDE)
    loss = _focal(logits, goal["heatmap"])
    real = torch.tensor([bool((~d).any()) for d in difficult], device=outputs.device)
    return torch.where(real, -loss, zero)


def dag(outputs: torch.Tensor, targets: Any, num_classes: int,
        threshold: float = CONFIDENT_SCORE) -> torch.Tensor:
    """Weighted mean over each real object's centre region of min(best other logit - true
    logit, 0) (<= 0; 0 once every cell is flipped). Weights: the object's Gaussian in the
    training heatmap (1 at the centre). One class: the other logit is logit(``threshold``)."""
    logits, _, _ = split_outputs(outputs, num_classes)
    z = logits.float()
    n = outputs.shape[0]
    boxes, labels, difficult = _objects(targets, n, outputs.device)
    real_boxes = [b[~d] for b, d in zip(boxes, difficult, strict=True)]
    real_labels = [lab[~d] for lab, d in zip(labels, difficult, strict=True)]
    weight = encode(real_boxes, real_labels, tuple(outputs.shape[-2:]), num_classes,
                    STRIDE)["heatmap"]  # (N, C, h, w): class c's regions in channel c
    if num_classes < 2:
        best_other = torch.full_like(z, math.log(threshold / (1 - threshold)))
    else:
        # per channel c, the largest logit among the other channels: the top logit unless c
        # holds it, then the second
        top2 = z.topk(2, dim=1).values
        is_top = z >= top2[:, :1]
        best_other = torch.where(is_top, top2[:, 1:2], top2[:, :1])
    margin = (best_other - z).clamp(max=0.0)
    return (weight * margin).flatten(1).sum(1) / weight.flatten(1).sum(1).clamp(min=1e-12)


def _builder(name: str, fn: Callable[..., torch.Tensor]) -> Callable[[Any], DetectionLossFn]:
    """``model -> loss(outputs, targets) -> (N,)``, as ``Task.ensemble_losses`` takes them."""

    def build(model: Any) -> DetectionLossFn:
        num_classes = int(model.num_classes)

        def loss(outputs: torch.Tensor, targets: Any) -> torch.Tensor:
            return fn(outputs, targets, num_classes)

        loss.__name__ = name.replace("-", "_")
        return loss

    return build


#: the detection task's worst-case ensemble members beside PGD/IFGSM on the training loss
#: (which is TOG's untargeted attack)
DETECTION_LOSSES: dict[str, Callable[[Any], DetectionLossFn]] = {
    "tog-vanishing": _builder("tog-vanishing", tog_vanishing),
    "tog-fabrication": _builder("tog-fabrication", tog_fabrication),
    "tog-mislabeling": _builder("tog-mislabeling", tog_mislabeling),
    "dag": _builder("dag", dag),
}
