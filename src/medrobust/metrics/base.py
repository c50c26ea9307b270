"""The one metric interface: per-batch updates into MONAI buffers, one aggregate at the end."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any

from monai.metrics import Cumulative


class CumulativeMetric(Cumulative):
    """Accumulates per-sample values batch by batch; ``aggregate`` reduces them to numbers.

    MONAI's ``Cumulative`` keeps the buffers (and can gather them across processes); a subclass
    says what one batch adds (``update``) and what the numbers are (``aggregate``). Calling the
    metric is ``update``, as with MONAI's own metrics.
    """

    @abstractmethod
    def update(self, *args: Any, **kwargs: Any) -> None:
        """Add one batch of predictions and references (``self.extend(...)`` per-sample values)."""

    @abstractmethod
    def aggregate(self) -> dict[str, Any]:
        """The metric's numbers over everything added since the last ``reset``."""

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        self.update(*args, **kwargs)
