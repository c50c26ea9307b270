"""``--delta auto``: choose adaptive margins' step D on the validation split.

The authors search D per dataset on a range of about five values (METHODS.md section 6
continued: heart 1..9, prostate 17..21, detection 1..5), with no stored entry point for it. Here:

- the grid: five values, ``FRACTIONS`` (1/32 .. 1/2, doubling) of the cheap validation attack's
  budget E (``selection.selection_budget``: ``--select-eps``, else ``--max-margin``, else a
  per-pixel RMS of 2 grey levels). A margin grows by D per epoch it withstands, so the grid
  spans "reaches E after one growth" to "after 31"; the largest D stays below E, so every
  candidate is valid under a ``--max-margin`` equal to E;
- each candidate: the whole adaptive-margin run with that D for ``search_epochs`` epochs
  (``--delta-search-epochs``, default a quarter of ``--epochs``, at least 1) from the same start
  (the ``--xi-from`` weights, xi calibrated on them), the same seed, keeping its final epoch, and
  without the wall-clock budget (candidates compare on equal training; ``--minutes`` bounds the
  full run);
- the score: the mean of the candidate's final clean validation value and its value under the
  cheap attack at E (each trainer's selection key's first entry: classification its selection
  metric, segmentation Dice, landmarks -MRE, detection mAP). Why the mean: the paper's loss weighs
  clean and noisy 0.5/0.5; the attacked value alone would favour the largest D, which buys
  robustness with clean accuracy, the clean value alone the smallest. Ties go to the smaller D;
- the record (grid, budget, epochs, each candidate's clean, attacked and score values, its
  margins, the choice) is ``delta_search.json`` in the output folder and the last history row's
  ``delta_search``; the full run then trains with the chosen D.

Resuming: each finished candidate is written to ``delta_search.json`` (atomically) before the
next starts, and a running candidate keeps its per-epoch state in ``delta_search/<i>/`` (the
trainer's ``resume.EpochState``), so the same command continues a killed search where it
stopped; a record written under other settings is refused, never mixed in.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from medrobust.errors import CheckpointError
from medrobust.training.resume import fingerprint, to_json, weights_digest
from medrobust.training.robust.config import RobustConfig
from medrobust.training.robust.margins import MarginsNeverMoved, never_moved
from medrobust.training.robust.selection import selection_budget

SEARCH_FILE = "delta_search.json"
SEARCH_DIR = "delta_search"
#: the grid as fractions of the selection budget E, ascending
FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1 / 2)
#: the default search length: this share of the run's epochs (rounded up, at least 1)
SEARCH_SHARE = 0.25
SCORE = ("mean of the final epoch's clean validation value and its value under the cheap "
         "validation attack (the trainer's selection key, higher is better)")

#: train(candidate config, epochs, state folder or None) -> the candidate run's history rows
Train = Callable[[RobustConfig, int, Path | None], list[dict[str, Any]]]


def delta_grid(budget: float) -> list[float]:
    """The candidate values of D for a selection budget ``budget`` (module doc)."""
    return [float(budget) * f for f in FRACTIONS]


def search_epochs(config: RobustConfig, epochs: int) -> int:
    """Epochs per candidate: ``--delta-search-epochs``, else a quarter of ``epochs``."""
    if config.delta_search_epochs is not None:
        return int(config.delta_search_epochs)
    return max(1, math.ceil(SEARCH_SHARE * int(epochs)))


def candidate_scores(history: list[dict[str, Any]]) -> dict[str, Any]:
    """A finished candidate's clean, attacked and combined score from its history (the last
    row's ``kept`` record of its final epoch), and what its margins did."""
    kept = history[-1]["kept"]
    if kept.get("robust_key") is None or kept.get("clean_key") is None:
        raise RuntimeError("a --delta auto candidate ended without an attacked validation")
    clean, attacked = float(kept["clean_key"][0]), float(kept["robust_key"][0])
    rows = [r["margins"] for r in history if "margins" in r]
    last = rows[-1] if rows else {}
    return {"clean": clean, "attacked": attacked, "score": (clean + attacked) / 2,
            "ordered_by": kept.get("ordered_by"), "epochs": len(history),
            "margins": {k: last.get(k) for k in ("mean", "median", "max", "beyond_delta")},
            "margins_moved_beyond_delta": not never_moved(rows)}


def _path(state_dir: str | Path | None) -> Path | None:
    return None if state_dir is None else Path(state_dir) / SEARCH_FILE


def load_record(state_dir: str | Path | None, key: str) -> dict[str, Any] | None:
    """The search record in ``state_dir`` (None: none yet); another search's is refused."""
    path = _path(state_dir)
    if path is None or not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot resume the --delta auto search from {path}: {exc}") \
            from None
    if record.get("fingerprint") != key:
        raise CheckpointError(f"{path} was written by a --delta auto search with other "
                              "settings or data; remove it or choose another --out")
    return record


def save_record(state_dir: str | Path | None, record: dict[str, Any]) -> None:
    """Write the record atomically (temporary file, fsync, rename)."""
    path = _path(state_dir)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        f.write(to_json(record))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def search_delta(config: RobustConfig, *, epochs: int, shape: Sequence[int], settings: Any,
                 init: Mapping[str, torch.Tensor] | None, state_dir: str | Path | None,
                 train: Train) -> tuple[RobustConfig, dict[str, Any]]:
    """Run (or continue) the search; (the config with the chosen D, the search record).

    ``settings`` is the trainer's resume key (its settings and data), ``shape`` the training
    images' (C,H,W), ``train`` runs one candidate (module doc)."""
    budget, source = selection_budget(config, shape)
    grid, n = delta_grid(budget), search_epochs(config, epochs)
    key = fingerprint({"settings": settings, "robust": config.as_dict(), "grid": grid,
                       "epochs": n, "init": None if init is None else weights_digest(init)})
    record = load_record(state_dir, key) or {
        "fingerprint": key, "budget": {"l2": budget, "from": source}, "fractions": list(FRACTIONS),
        "grid": grid, "epochs": n, "score": SCORE, "candidates": [], "chosen": None}
    for i in range(len(record["candidates"]), len(grid)):
        folder = None if state_dir is None else Path(state_dir) / SEARCH_DIR / str(i)
        candidate = replace(config, delta=grid[i], keep="final", select_eps=budget,
                            delta_search_epochs=None)
        with warnings.catch_warnings():  # a candidate's stuck margins are in its record
            warnings.simplefilter("ignore", MarginsNeverMoved)
            history = train(candidate, n, folder)
        record["candidates"].append({"index": i, "delta": grid[i],
                                     **candidate_scores(history)})
        save_record(state_dir, record)
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    scores = [c["score"] for c in record["candidates"]]
    best = max(range(len(grid)), key=lambda i: (scores[i], -i))
    record["chosen"] = grid[best]
    save_record(state_dir, record)
    if state_dir is not None:
        shutil.rmtree(Path(state_dir) / SEARCH_DIR, ignore_errors=True)
    return (replace(config, delta=grid[best], delta_search_epochs=None),
            {k: v for k, v in record.items() if k != "fingerprint"})
