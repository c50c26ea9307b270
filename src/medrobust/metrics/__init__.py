"""Task metrics in MONAI's cumulative style: ``update`` per batch, ``aggregate``, ``reset``.

One metric per file; every one derives from ``CumulativeMetric`` so evaluation loops, campaigns
and reports treat them alike.
"""

from medrobust.metrics.base import CumulativeMetric

__all__ = ["CumulativeMetric"]
