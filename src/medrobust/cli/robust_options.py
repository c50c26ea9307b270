"""``train``'s robust-training options as the tasks name them, shared by the three training
paths (classification, segmentation, the task registry's landmarks and detection)."""

from __future__ import annotations

from typing import Any

import click


class DeltaType(click.ParamType):
    """``--delta``: a number (the margin step D, L2 on [0,1]) or ``auto`` (searched); parsed
    here so the options hold a float as before (``tasks.robust`` checks the value)."""

    name = "D|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None
                ) -> float | str:
        if isinstance(value, float) or value == "auto":
            return value
        if str(value).strip().lower() == "auto":
            return "auto"
        try:
            return float(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number nor auto", param, ctx)


def robust_options(params: dict[str, Any]) -> dict[str, Any]:
    """The robust-training options of ``train`` as the tasks name them (None: not given, so
    ``tasks.robust`` can refuse an option set where it does not apply)."""
    return {"robust": params.get("robust") or "none", "eps": params.get("eps"),
            "delta": params.get("delta"), "alpha": params.get("alpha"),
            "xi": params.get("xi"), "max_margin": params.get("max_margin"),
            "refine": bool(params.get("refine_margins")), "xi_from": params.get("xi_from"),
            "keep": params.get("keep"), "select_eps": params.get("select_eps"),
            "delta_search_epochs": params.get("delta_search_epochs"),
            "clean_weight": params.get("clean_weight")}
