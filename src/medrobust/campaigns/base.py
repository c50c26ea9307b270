"""The skeleton every store-writing campaign shares, written once.

A campaign opens (or resumes) a run, hands out the items not yet recorded in batches under a
progress bar, lets the body compute and commit each batch, and marks the run interrupted or
failed if the body stops early. Every loop that writes the store lives in this package and
stands on this file, so resume, progress and crash handling behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from medrobust.store import Campaign, ResultTable, Store
from medrobust.utils.progress import progress


@dataclass
class CampaignOutcome:
    """What a campaign function returns: its run, whether it resumed, how many items this call
    computed, its seconds and the run's summary."""

    run_id: int
    resumed: bool
    attacked_now: int
    seconds: float
    summary: dict[str, Any]


@dataclass
class BatchRun:
    """An open run of a batched campaign: its id, whether it resumed, and its pending batches
    (``batches()`` advances the progress bar as each one is handed out after the last)."""

    campaign: Campaign
    run_id: int
    resumed: bool
    todo: list[Any]
    size: int
    bar: Any

    def batches(self) -> Iterator[list[Any]]:
        for start in range(0, len(self.todo), self.size):
            chunk = self.todo[start:start + self.size]
            yield chunk
            self.bar.update(len(chunk))


@contextmanager
def batch_run(store: Store, table: ResultTable, command: str, params: Mapping[str, Any], *,
              model: Mapping[str, Any] | None, dataset: Mapping[str, Any] | None,
              items: Sequence[Any], size: int, desc: str, resume: bool = True,
              show_progress: bool = True) -> Iterator[BatchRun]:
    """Open (or resume) a run, hand out its pending items in batches under a progress bar, and
    mark it interrupted or failed if the body stops early: the skeleton every batched campaign
    shares (the body computes and ``record_many``s each batch)."""
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    run_id, resumed = store.start_run(command, params, model=model, dataset=dataset,
                                      resume=resume)
    campaign = Campaign(store, table, run_id)
    todo = campaign.pending(items)
    bar = progress(total=len(items), initial=len(items) - len(todo), desc=desc, unit="img",
                   disable=not show_progress)
    with store.guard(run_id), bar:
        yield BatchRun(campaign, run_id, resumed, todo, size, bar)
