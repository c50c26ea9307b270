"""The robust-training options every task takes, and what they turn into for a trainer.

``--robust none|vat|teat|adaptive-margin`` with its budgets (L2 on the [0,1] pixel scale) and,
for adaptive margins, ``xi_from``: the checkpoint of a trained standard model of the same task.
Training fine-tunes from that model's weights, and xi (or segmentation's Dice threshold) is
calibrated on its clean training losses before the first epoch, as the paper prescribes (V are
the losses of a well-trained model). VAT and TEAT may also start from it. ``out_dir`` is where
the resumable per-epoch state lives (the checkpoint folder: the same command resumes; a state
begun from other ``xi_from`` weights is refused, since the key holds their digest) and where the
final margins are written (``margins.safetensors``).

The paper's settings are the defaults of ``--robust adaptive-margin``; each deviation is an
option: ``--delta auto`` searches D on the validation split (``training.robust.search``,
``--delta-search-epochs``, the record in ``delta_search.json``), ``--keep`` chooses the epoch
kept (robust runs keep the final one, as the authors' code; ``training.robust.selection``),
``--select-eps`` the budget of the cheap validation attack both use, ``--refine-margins``
bisects to the boundary and trains there, ``--clean-weight`` adds VAT's clean loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medrobust.errors import ConfigError
from medrobust.training.robust import RobustConfig, both_scales
from medrobust.training.robust.margins import never_moved
from medrobust.training.robust.objectives import MARGINS_FILE
from medrobust.training.robust.search import SEARCH_FILE

#: option -> default; every task's OPTIONS include these. None: not set (alpha and xi then
#: take ``RobustConfig``'s defaults), so an option set where it does not apply is refused
ROBUST_OPTIONS: dict[str, Any] = {"robust": "none", "eps": None, "delta": None, "alpha": None,
                                  "xi": None, "max_margin": None, "refine": False,
                                  "xi_from": None, "out_dir": None, "keep": None,
                                  "select_eps": None, "delta_search_epochs": None,
                                  "clean_weight": None}
ROBUST_METHODS = ("vat", "teat", "adaptive-margin")

#: robust option -> (its flag, the methods that read it, why not the others). Set with any
#: other method, or without --robust, it would be silently ignored: the one rule that refuses it
APPLIES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "eps": ("--eps", ("vat", "teat"), "adaptive-margin uses --delta"),
    "delta": ("--delta", ("adaptive-margin",), ""),
    "alpha": ("--alpha", ("vat", "adaptive-margin"), "TEAT's inner step is eps/4"),
    "xi": ("--xi", ("adaptive-margin",), ""),
    "max_margin": ("--max-margin", ("adaptive-margin",), ""),
    "refine": ("--refine-margins", ("adaptive-margin",), ""),
    "xi_from": ("--xi-from", ROBUST_METHODS, ""),
    "keep": ("--keep", ROBUST_METHODS, ""),
    "select_eps": ("--select-eps", ROBUST_METHODS, ""),
    "delta_search_epochs": ("--delta-search-epochs", ("adaptive-margin",), ""),
    "clean_weight": ("--clean-weight", ("vat",), "adaptive-margin weighs clean and noisy losses "
                     "0.5/0.5; TEAT trains on adversarial images only"),
}
#: robust option -> (a task that never reads it, why)
NOT_FOR_TASK: dict[str, tuple[str, str]] = {
    "xi": ("segmentation", "segmentation thresholds its mean clean Dice instead"),
}


def with_robust(options: dict[str, Any]) -> dict[str, Any]:
    """A task's option defaults with the robust ones added."""
    return {**options, **ROBUST_OPTIONS}


def split(options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the task's own options, the robust ones)."""
    own = {k: v for k, v in options.items() if k not in ROBUST_OPTIONS}
    robust = {k: options.get(k, v) for k, v in ROBUST_OPTIONS.items()}
    return own, robust


def _listing(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def check_applies(robust: dict[str, Any], task: str | None = None) -> None:
    """Refuse a robust option set for a method (or task) that would ignore it."""
    method = robust.get("robust") or "none"
    for name, (flag, methods, why) in APPLIES.items():
        value = robust.get(name)
        if value is None or value is False:
            continue
        if method not in methods:
            if method == "none":
                raise ConfigError(f"{flag} applies to --robust {_listing(methods)}; without "
                                  "--robust it would be ignored")
            raise ConfigError(f"{flag} applies to --robust {_listing(methods)}, not {method}"
                              + (f" ({why})" if why else ""))
        if name in NOT_FOR_TASK and NOT_FOR_TASK[name][0] == task:
            raise ConfigError(f"{flag} does not apply to {task} training: "
                              f"{NOT_FOR_TASK[name][1]}")


def parse_delta(value: Any) -> float | str | None:
    """``--delta``: a number (L2 on [0,1]) or ``auto`` (the validation search)."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return value
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"--delta must be a positive L2 budget on the [0,1] pixel scale or "
                          f"auto, got {value!r}") from None


def robust_config(robust: dict[str, Any], task: str | None = None) -> RobustConfig | None:
    """The validated ``RobustConfig`` (None for standard training); the values given are the
    values used (an unset alpha, xi, keep or clean weight takes ``RobustConfig``'s default, a
    set one is kept)."""
    check_applies(robust, task)
    method = robust.get("robust") or "none"
    chosen = {k: robust[k] for k in ("alpha", "xi", "keep") if robust.get(k) is not None}
    if "alpha" in chosen:
        chosen["alpha"] = float(chosen["alpha"])
    if robust.get("clean_weight") is not None:
        chosen["vat_clean_weight"] = float(robust["clean_weight"])
    if robust.get("delta_search_epochs") is not None:
        chosen["delta_search_epochs"] = int(robust["delta_search_epochs"])
    config = RobustConfig(method=method, eps=robust.get("eps"),
                          delta=parse_delta(robust.get("delta")),
                          max_margin=robust.get("max_margin"), select_eps=robust.get("select_eps"),
                          refine=bool(robust.get("refine")), **chosen).validate()
    if method == "adaptive-margin" and not robust.get("xi_from"):
        raise ConfigError("--robust adaptive-margin needs --xi-from CHECKPOINT_DIR: a trained "
                          "standard model of the same task (xi comes from its clean losses)")
    return config if config.active else None


def initial_weights(xi_from: str | None, task: str) -> dict[str, torch.Tensor] | None:
    """The network weights of the standard checkpoint ``xi_from`` (fine-tuning starts there)."""
    if not xi_from:
        return None
    from medrobust.models.loading import load_model

    model = load_model(xi_from, "cpu")
    if model.task != task:
        raise ConfigError(f"--xi-from {xi_from} holds a {model.task} model, not {task}")
    return {k: v.detach().clone() for k, v in model.model.state_dict().items()}


def trainer_kwargs(robust: dict[str, Any], task: str) -> dict[str, Any]:
    """``robust``, ``init`` and ``state_dir`` for a trainer."""
    return {"robust": robust_config(robust, task),
            "init": initial_weights(robust.get("xi_from"), task),
            "state_dir": robust.get("out_dir")}


def check_before_run(kwargs: dict[str, Any], train_ds: Any,
                     build: Callable[[], nn.Module] | None) -> None:
    """What ``trainer_kwargs`` built, checked against the loaded training data before a run
    opens (inside training these would leave a failed run): L2 budgets beyond the image range,
    and ``--xi-from`` weights that do not fit the network ``build`` makes."""
    from medrobust.attacks.projection import check_budget
    from medrobust.training.loop import start_from

    config: RobustConfig | None = kwargs["robust"]
    if config is not None:
        shape = image_shape(train_ds)
        for flag, value in (("--eps", config.eps), ("--delta", config.delta),
                            ("--select-eps", config.select_eps)):
            if value is not None and value != "auto":
                check_budget(flag, value, "l2", positive=True, shape=shape)
    if kwargs["init"] is not None and build is not None:
        start_from(build(), kwargs["init"])


def robust_summary(config: RobustConfig | None, history: list[dict[str, Any]],
                   out_dir: str | Path | None, shape: Sequence[int] | None = None,
                   started_from: str | None = None) -> dict[str, Any]:
    """What a checkpoint records about robust training: the settings, the checkpoint it
    fine-tuned from (so a report compares it with its own standard model), the last epoch's xi
    rule and margin histogram (each epoch's is in the history), whether margins ever moved
    beyond D, which epoch was kept and why (``kept``), the D search (``delta_search``; ``delta``
    is then the chosen D and ``delta_from`` says so), the margins file when written, and with
    the image ``shape`` (C,H,W) every budget also as per-pixel RMS in 1/255 units."""
    if config is None:
        return {"method": "none"}
    out: dict[str, Any] = config.as_dict()
    if started_from:
        out["started_from"] = str(Path(started_from).resolve())
    last = history[-1] if history else {}
    for key in ("rule", "margins", "teat_weight", "kept", "delta_search"):
        if key in last:
            out[key] = last[key]
    if config.searches_delta and "delta_search" in last:
        out["delta"] = last["delta_search"]["chosen"]
        out["delta_from"] = "auto: the validation search (delta_search)"
    rows = [r["margins"] for r in history if "margins" in r]
    if rows:
        out["margins_moved_beyond_delta"] = not never_moved(rows)
    if shape is not None:
        attack = (last.get("kept") or {}).get("attack") or {}
        budgets = {"eps": config.eps, "delta": out.get("delta"), "max_margin": config.max_margin,
                   "mean_margin": last.get("margins", {}).get("mean"),
                   "select_eps": attack.get("eps")}
        out["scales"] = {"image_shape": [int(v) for v in shape],
                         **{k: both_scales(v, shape) for k, v in budgets.items()
                            if v is not None}}
    if out_dir is not None and (Path(out_dir) / MARGINS_FILE).is_file():
        out["margins_file"] = MARGINS_FILE
    if out_dir is not None and (Path(out_dir) / SEARCH_FILE).is_file():
        out["delta_search_file"] = SEARCH_FILE
    return out


def trained_about(kwargs: dict[str, Any], robust: dict[str, Any], history: list[dict[str, Any]],
                  train_ds: Any) -> dict[str, Any]:
    """``robust_summary`` of a finished training run, from what ``trainer_kwargs`` built and the
    robust options it was given (every training path records the same fields)."""
    return robust_summary(kwargs["robust"], history, robust["out_dir"], image_shape(train_ds),
                          started_from=robust.get("xi_from"))


def image_shape(dataset: Any) -> tuple[int, int, int]:
    """(C,H,W) of a dataset's uint8 (N,H,W,C) images."""
    _, h, w, c = dataset.images.shape
    return int(c), int(h), int(w)
