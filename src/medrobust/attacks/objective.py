"""What an attack on one image is trying to do, as a fitness to minimise and a success test.

Softmax heads: untargeted minimises P(true class) and succeeds when the prediction changes;
targeted maximises P(target) and succeeds only when the prediction equals the target (a changed
prediction that is not the target is not a targeted success; METHODS.md section 1).
Sigmoid heads (one P(positive) score): ``pos2neg`` lowers the score and succeeds below its
threshold, ``neg2pos`` raises it and succeeds above its threshold (the paper's partial-success
thresholds are 0.9 and 0.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIRECTIONS = ("pos2neg", "neg2pos")


@dataclass(frozen=True)
class Objective:
    """Per-image goal: ``kind`` is untargeted, targeted, pos2neg or neg2pos."""

    kind: str
    label: int
    target: int | None = None
    threshold: float = 0.5

    def fitness(self, probs: np.ndarray) -> np.ndarray:
        """(M,) values to minimise from (M,K) probabilities."""
        if self.kind == "untargeted":
            return probs[:, self.label]
        if self.kind == "targeted":
            return -probs[:, self.target]
        if self.kind == "pos2neg":
            return probs[:, 1]
        return -probs[:, 1]

    def success(self, probs: np.ndarray) -> np.ndarray:
        """(M,) bool: does this output reach the goal?"""
        if self.kind == "untargeted":
            return probs.argmax(axis=1) != self.label
        if self.kind == "targeted":
            return probs.argmax(axis=1) == self.target
        if self.kind == "pos2neg":
            return probs[:, 1] < self.threshold
        return probs[:, 1] > self.threshold

    def describe(self, class_names: tuple[str, ...]) -> str:
        """A direction label for tables: ``mitosis->normal``, ``RBC->any``, ``RBC->WBC``."""
        src = class_names[self.label]
        if self.kind == "untargeted":
            others = [c for i, c in enumerate(class_names) if i != self.label]
            return f"{src}->{others[0] if len(others) == 1 else 'any'}"
        if self.kind == "targeted":
            return f"{src}->{class_names[self.target]}"
        return f"{class_names[1]}->{class_names[0]}" if self.kind == "pos2neg" else \
            f"{class_names[0]}->{class_names[1]}"


def build_objectives(head: str, labels: np.ndarray, targets: np.ndarray | None,
                     direction: str, thresholds: tuple[float, float]) -> list[Objective]:
    """One Objective per image.

    ``direction`` (sigmoid heads) is ``auto`` (from the label: positives go pos2neg), or a fixed
    direction. ``thresholds`` = (pos2neg threshold, neg2pos threshold).
    """
    out = []
    for i, label in enumerate(labels.tolist()):
        target = None if targets is None else int(targets[i])
        if head == "sigmoid":
            kind = direction
            if kind == "auto":
                kind = ("neg2pos" if target == 1 else "pos2neg") if target is not None else \
                    ("pos2neg" if label == 1 else "neg2pos")
            thr = thresholds[0] if kind == "pos2neg" else thresholds[1]
            out.append(Objective(kind, int(label), None, thr))
        elif target is not None:
            out.append(Objective("targeted", int(label), target))
        else:
            out.append(Objective("untargeted", int(label)))
    return out
