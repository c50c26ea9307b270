"""``train``'s robust-training options as the tasks name them, shared by the three training
paths (classification, segmentation, the task registry's landmarks and detection)."""

from __future__ import annotations

from typing import Any


def robust_options(params: dict[str, Any]) -> dict[str, Any]:
    """The robust-training options of ``train`` as the tasks name them (None: not given, so
    ``tasks.robust`` can refuse an option set where it does not apply)."""
    return {"robust": params.get("robust") or "none", "eps": params.get("eps"),
            "delta": params.get("delta"), "alpha": params.get("alpha"),
            "xi": params.get("xi"), "max_margin": params.get("max_margin"),
            "refine": bool(params.get("refine_margins")), "xi_from": params.get("xi_from")}
