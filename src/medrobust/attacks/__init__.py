"""Attacks: one per file on the small ``Attack`` base."""

from medrobust.attacks.base import Attack
from medrobust.attacks.objective import Objective
from medrobust.attacks.onepixel import OnePixel, OnePixelResult

__all__ = ["Attack", "Objective", "OnePixel", "OnePixelResult"]
