"""The skeleton every store-writing campaign shares, written once.

A campaign opens (or resumes) a run, hands out the items not yet recorded in batches under a
progress bar, lets the body compute and commit each batch, and marks the run interrupted or
failed if the body stops early. Every loop that writes the store lives in this package and
stands on this file, so resume, progress and crash handling behave the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from medrobust.campaigns.executor import Executor, LocalExecutor, Work
from medrobust.store import Campaign, ResultTable, Store
from medrobust.utils.progress import progress, progress_enabled


@dataclass
class CampaignOutcome:
    """What every campaign function returns: its run, whether it resumed, how many items this
    call computed, its seconds and the run's summary."""

    run_id: int
    resumed: bool
    computed_now: int
    seconds: float
    summary: dict[str, Any]


@dataclass
class BatchRun:
    """An open run of a batched campaign: its id, whether it resumed, and its pending items.

    ``batches()`` hands them out in lists of at most ``size`` that never mix two groups (one
    attack at one budget, say) and advances the progress bar by each list once the body has
    handled it; a body that reports finer progress (one image of a long batch) calls
    ``advance`` and the bar is not counted twice.
    """

    campaign: Campaign
    run_id: int
    resumed: bool
    todo: list[Any]
    size: int
    bar: Any
    group: Callable[[Any], Hashable] | None = None
    _advanced: float = 0.0

    @property
    def store(self) -> Store:
        return self.campaign.store

    def advance(self, n: float = 1) -> None:
        """Count ``n`` items of the current batch as done on the progress bar (a fraction of an
        item, or a negative correction, for work that reports progress finer than items)."""
        self._advanced += n
        self.bar.update(n)

    def record_many(self, rows: Iterable[tuple[str | int, Mapping[str, Any]]]) -> int:
        """Commit a batch's rows (all or nothing)."""
        return self.campaign.record_many(rows)

    def record(self, item: str | int, row: Mapping[str, Any]) -> None:
        """Commit one item's row at once (for items that take long on their own)."""
        self.campaign.record(item, row)

    def chunks(self) -> list[list[Any]]:
        """The pending items in batches of at most ``size`` that never mix two groups."""
        return list(_chunks(self.todo, self.size, self.group))

    def execute(self, work: Work, executor: Executor | None = None,
                on_note: Callable[[Any], None] | None = None,
                finish: Callable[[list[Any]], list[Any]] | None = None,
                jobs: list[list[Any]] | None = None) -> None:
        """Run ``work`` over the pending batches on ``executor`` (default: in process) and
        commit each batch's rows as it comes back; ``on_note`` receives what each batch reports
        beside its rows; ``finish`` turns a batch's rows into what is recorded (on the driver:
        the place to write files); ``jobs`` are the batches as the workers see them (default:
        the pending items themselves, batch by batch). In process, a ``work.emit`` (set here)
        commits single items the moment they finish; with Ray the driver commits whole batches
        in completion order."""
        executor = executor or LocalExecutor()
        chunks = self.chunks() if jobs is None else jobs
        if work.emit is None:
            work.emit = self._emit

        def on_result(chunk: list[Any], rows: list[tuple[Any, Mapping[str, Any]]],
                      note: Any) -> None:
            if finish is not None:
                rows = finish(rows)
            if rows:
                self.record_many(rows)
            self.bar.update(max(0, len(chunk) - self._advanced))
            self._advanced = 0
            if on_note is not None:
                on_note(note)

        executor.run(work, chunks, on_result)

    def _emit(self, item: Any, row: Mapping[str, Any]) -> None:
        self.record(item, row)
        self.advance()


def _chunks(items: list[Any], size: int, group: Callable[[Any], Hashable] | None
            ) -> Iterator[list[Any]]:
    """Consecutive lists of at most ``size`` items, split where ``group`` changes."""
    chunk: list[Any] = []
    key: Hashable = None
    for item in items:
        k = None if group is None else group(item)
        if chunk and (len(chunk) == size or k != key):
            yield chunk
            chunk = []
        chunk.append(item)
        key = k
    if chunk:
        yield chunk


@contextmanager
def batch_run(store: Store, table: ResultTable, command: str, params: Mapping[str, Any], *,
              model: Mapping[str, Any] | None, dataset: Mapping[str, Any] | None,
              items: Sequence[Any], size: int, desc: str, resume: bool = True,
              show_progress: bool = True, join: int | None = None,
              group: Callable[[Any], Hashable] | None = None, unit: str = "img"
              ) -> Iterator[BatchRun]:
    """Open (or resume) a run, hand out its pending items in batches under a progress bar, and
    mark it interrupted or failed if the body stops early: the skeleton every campaign shares
    (the body computes and records each batch; it finishes the run with its summary).

    ``join`` records into an already open run instead (one run holding several passes, like the
    ASMA ablation's variants); the caller that opened it guards and finishes it.
    """
    if size < 1:
        raise ValueError(f"batch size must be at least 1, got {size}")
    if join is None:
        run_id, resumed = store.start_run(command, params, model=model, dataset=dataset,
                                          resume=resume)
    else:
        run_id, resumed = join, False
    campaign = Campaign(store, table, run_id)
    todo = campaign.pending(items)
    # the bar moves by fractions of an item (a one-pixel attack's generations) so it is smooth,
    # but counts whole items: "2/4 img", not "2.10/4.00"
    bar = progress(total=len(items), initial=len(items) - len(todo), desc=desc, unit=unit,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} "
                              "[{elapsed}<{remaining}]",
                   disable=not (show_progress and progress_enabled()))
    guard = store.guard(run_id) if join is None else nullcontext()
    with guard, bar:
        yield BatchRun(campaign, run_id, resumed, todo, size, bar, group)
