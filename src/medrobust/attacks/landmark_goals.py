"""Targeted landmark shifts (Yao et al., MICCAI 2020, "Miss the point", ATI-FGSM on ISBI 2015):
move chosen landmarks by a vector and hold the others where they truly are.

Why a shift: a clinically meaningful targeted attack on a cephalogram moves a few landmarks (a
measured angle changes) while the rest stay put, so nothing looks wrong. ``--target`` reads
``shift:DX,DY[@L1,L2,...]``: DX, DY in input pixels (x the column, y the row), landmarks by
their 1-based number as in the ISBI challenge or by name (all when omitted).

The goal an attack's loss takes is an (N, K, 3) tensor: the goal landmarks (x, y) in input
pixels, then each image's tolerance in input pixels (the same for its K landmarks). The loss
reads the first two columns (the task's training loss against heatmaps and offsets encoded at
the goal: ATI-FGSM's target heatmap); the early stop reads all three, since the stop test only
sees the model's outputs and the goal. An image has reached its goal when every landmark decodes
within the tolerance of its goal: the moved ones of their targets, the held ones of their truth.
Decoding needs the model's heatmap radius, which the stop test cannot see: ``reaches_goal`` takes
it, and without it assumes the authors' default for the image size (every model the command
line trains). Untargeted attacks never stop early (``never_done`` says why).

The tolerance is the ISBI 2015 challenge's tightest success radius, SDR@2 mm, as the largest
circle of input pixels inside it (the resize may scale x and y differently); without a pixel
size, 2 input pixels (original pixels of unknown size could shrink it below the decoder's
one-pixel vote grid). This module names no task; ``tasks/landmarks.py`` wires it in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medrobust.errors import ConfigError
from medrobust.models.landmark_codec import decode, default_radius

SHIFT_SYNTAX = "shift:DX,DY[@L1,L2,...]"
#: the SDR radius a landmark must be within (mm where the pixel size is known, else input px)
SDR_RADIUS = 2.0


@dataclass(frozen=True)
class LandmarkShift:
    """A parsed ``--target``: the vector (input pixels) and the moved landmarks (0-based)."""

    dx: float
    dy: float
    moved: tuple[int, ...]

    def goal(self, truth: np.ndarray) -> np.ndarray:
        """(K, 2) truth -> (K, 2) goal: the moved landmarks shifted, the others held. A copy."""
        out = np.array(truth, dtype=np.float64, copy=True)
        out[list(self.moved)] += (self.dx, self.dy)
        return out


def _usage(text: str, k: int, why: str) -> ConfigError:
    return ConfigError(f"--target {text!r} {why}: a landmark target is {SHIFT_SYNTAX} (DX, DY in "
                       f"input pixels; landmarks by number 1..{k} or name, all when omitted), "
                       "e.g. shift:5,-3@1")


def parse_shift(text: str, names: Sequence[str]) -> LandmarkShift:
    """``shift:DX,DY[@L1,L2,...]`` against the K landmark ``names``; bad text is one line."""
    k = len(names)
    body = text.strip()
    if body == "next":  # the command line's default target, a classifier's
        raise _usage(text, k, "is a classifier's target (the default)")
    if not body.lower().startswith("shift:"):
        raise _usage(text, k, "is not a landmark shift")
    vector, _, refs = body[len("shift:"):].partition("@")
    parts = [p.strip() for p in vector.split(",")]
    if len(parts) != 2 or not all(parts):
        raise _usage(text, k, "needs two numbers DX,DY")
    try:
        dx, dy = float(parts[0]), float(parts[1])
    except ValueError:
        raise _usage(text, k, "needs two numbers DX,DY") from None
    if not (math.isfinite(dx) and math.isfinite(dy)):
        raise _usage(text, k, "needs finite DX and DY")
    if dx == 0 and dy == 0:
        raise ConfigError(f"--target {text!r} moves nothing: give a non-zero DX or DY")
    if "@" not in body:
        return LandmarkShift(dx, dy, tuple(range(k)))
    if not refs.strip():
        raise _usage(text, k, "names no landmark after '@'")
    moved: list[int] = []
    for ref in (r.strip() for r in refs.split(",")):
        j = _landmark_index(ref, names)
        if j is None:
            shown = f"{names[0]}..{names[-1]}" if k > 1 else names[0]
            raise ConfigError(f"--target {text!r}: landmark {ref!r} is not one of the {k} "
                              f"landmarks (numbers 1..{k}, names {shown})")
        if j in moved:
            raise ConfigError(f"--target {text!r} names landmark {ref!r} twice")
        moved.append(j)
    return LandmarkShift(dx, dy, tuple(sorted(moved)))


def _landmark_index(ref: str, names: Sequence[str]) -> int | None:
    """0-based index of a 1-based number or a name (case-insensitive); None if neither."""
    if ref.isdigit():
        j = int(ref) - 1
        return j if 0 <= j < len(names) else None
    lowered = [n.lower() for n in names]
    return lowered.index(ref.lower()) if ref and ref.lower() in lowered else None


def tolerance_px(scale: Sequence[float], pixel_size_mm: float | None) -> float:
    """The SDR@2 mm radius in input pixels of an image resized by ``scale`` = (sx, sy) from
    pixels of ``pixel_size_mm``: the coarser axis decides, so a point this close is within
    2 mm along any direction. Unknown pixel size: 2 input pixels."""
    if pixel_size_mm is None or not math.isfinite(float(pixel_size_mm)):
        return SDR_RADIUS
    return SDR_RADIUS * min(float(scale[0]), float(scale[1])) / float(pixel_size_mm)


def off_image(points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(K,) True where a (K, 2) point lies outside the pixel centres of an (H, W) image."""
    h, w = size
    x, y = points[:, 0], points[:, 1]
    return (x < 0) | (x > w - 1) | (y < 0) | (y > h - 1)


def goal_tensor(targets: Sequence[dict[str, Any]]) -> torch.Tensor:
    """Targets as ``shift_target`` builds them -> the (N, K, 3) goal: landmarks, tolerance."""
    if not targets:
        raise ConfigError("no landmark targets to build a goal from")
    points = torch.tensor([t["goal"] for t in targets], dtype=torch.float32)
    tol = torch.tensor([float(t["tolerance_px"]) for t in targets], dtype=torch.float32)
    return torch.cat([points, tol.view(-1, 1, 1).expand(-1, points.shape[1], 1)], dim=-1)


def goal_points(goal: Any) -> torch.Tensor:
    """The (N, K, 2) landmarks of a goal (a plain (N, K, 2) batch of landmarks passes as is)."""
    g = torch.as_tensor(goal)
    return g[..., :2]


def goal_tolerance(goal: torch.Tensor) -> torch.Tensor:
    """(N,) tolerance in input pixels of an (N, K, 3) goal; 2 px for plain (N, K, 2) landmarks."""
    if goal.shape[-1] >= 3:
        return goal[:, 0, 2]
    return torch.full((goal.shape[0],), SDR_RADIUS, dtype=goal.dtype, device=goal.device)


def within_goal(pred: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    """(N,) bool: every (N, K, 2) predicted landmark lies within its image's tolerance of the
    goal."""
    g = goal.to(device=pred.device, dtype=torch.float64)
    dist = (pred.double() - g[..., :2]).norm(dim=-1)
    return (dist <= goal_tolerance(g)[:, None]).all(dim=-1)


def reaches_goal(radius: float | None = None) -> Callable[[torch.Tensor, torch.Tensor],
                                                          torch.Tensor]:
    """Targeted early stop ``fn(outputs, goal) -> (N,) bool``: the outputs decode (offset
    voting) to landmarks all within tolerance of the goal. ``radius`` is the model's heatmap
    radius; None takes the authors' default for the outputs' size, which is every model the
    command line trains (it sets no other) at the size it was trained at."""

    def reached(outputs: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
        r = default_radius(tuple(outputs.shape[-2:])) if radius is None else float(radius)
        return within_goal(decode(outputs, r), goal)

    reached.__name__ = "reaches_landmark_goal"
    return reached


#: the targeted early stop of models with the default radius (one object, so a recipe can name it)
reaches_landmark_goal = reaches_goal()


def never_done(outputs: torch.Tensor, goal: Any) -> torch.Tensor:
    """Untargeted early stop: never freeze. A landmark's error has no finish line: stopping
    once some threshold is passed would report a smaller radial error than the attack can
    reach, flattering the model (a classifier's accuracy does not change after the flip)."""
    return torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)


def shift_target(shift: LandmarkShift, truth: np.ndarray, tolerance: float, unit: str
                 ) -> dict[str, Any]:
    """One image's target as a run records it (plain JSON): the vector, the moved landmarks
    (1-based), the goal (K, 2) in input pixels and the tolerance in input pixels."""
    goal = shift.goal(truth)
    return {"shift": [shift.dx, shift.dy], "landmarks": [j + 1 for j in shift.moved],
            "goal": np.round(goal, 4).tolist(), "tolerance_px": round(float(tolerance), 4),
            "tolerance": f"{SDR_RADIUS:g} {unit}"}


def reached_in_row(adv_pred: Any, target: dict[str, Any]) -> bool:
    """A stored row's attacked prediction (K, 2) within the target's tolerance of its goal:
    ``within_goal`` on the row (which rounds predictions to 0.01 px)."""
    pred = np.asarray(adv_pred, dtype=np.float64)
    goal = np.asarray(target["goal"], dtype=np.float64)
    if pred.shape != goal.shape:
        return False
    return bool((np.linalg.norm(pred - goal, axis=-1) <= float(target["tolerance_px"])).all())
