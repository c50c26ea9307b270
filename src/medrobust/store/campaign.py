"""Resumable per-item loops, so no attack or analysis re-implements resume.

The contract: an item is done exactly when its row is in the table. ``record`` commits before it
returns, so a process killed at any moment loses at most the item (or batch) being computed, and
``pending`` on the next start hands back exactly the items that are missing, in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from medrobust.store.codec import item_key
from medrobust.store.database import Store
from medrobust.store.tables import ResultTable

Item = TypeVar("Item", bound="str | int")


class Campaign:
    """The per-item results of one run in one table, with resume built in.

    Typical use::

        campaign = Campaign(store, TABLE, run_id)
        for item in campaign.pending(items):
            campaign.record(item, compute(item))
    """

    def __init__(self, store: Store, table: ResultTable, run_id: int) -> None:
        self.store = store
        self.table = store.ensure_table(table)
        store.get_run(run_id)  # fail now, not after the first expensive item
        self.run_id = run_id

    def __repr__(self) -> str:
        return f"Campaign(table={self.table.name!r}, run_id={self.run_id})"

    def done(self) -> set[str]:
        """Keys (TEXT) of the items already recorded for this run."""
        return self.store.done_items(self.table, self.run_id)

    def pending(self, items: Sequence[Item] | Iterable[Item]) -> list[Item]:
        """The items not yet recorded, in the given order, duplicates dropped.

        Items keep their type (ints stay ints); ``3`` and ``"3"`` are the same item.
        """
        done = self.done()
        out: list[Item] = []
        for item in items:
            key = item_key(item)
            if key not in done:
                done.add(key)
                out.append(item)
        return out

    def record(self, item: str | int, row: Mapping[str, Any]) -> None:
        """Commit one item's result; it is durable when this returns."""
        self.store.put(self.table, self.run_id, item, row)

    def record_many(self, rows: Iterable[tuple[str | int, Mapping[str, Any]]]) -> int:
        """Commit several items' results at once (all or nothing); return how many."""
        return self.store.put_many(self.table, self.run_id, rows)

    def batches(self, items: Sequence[Item] | Iterable[Item], size: int) -> Iterator[list[Item]]:
        """Pending items in lists of at most ``size`` (for batched GPU work + ``record_many``).

        The pending set is computed once, up front; record each batch before asking for the next.
        """
        if size < 1:
            raise ValueError(f"batch size must be at least 1, got {size}")
        todo = self.pending(items)
        for start in range(0, len(todo), size):
            yield todo[start : start + size]

    def run(
        self,
        items: Sequence[Item] | Iterable[Item],
        compute: Callable[[Item], Mapping[str, Any]],
    ) -> int:
        """Compute and record every pending item one by one; return how many were computed."""
        count = 0
        for item in self.pending(items):
            self.record(item, compute(item))
            count += 1
        return count
