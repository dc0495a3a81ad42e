"""The metrics view: latency, throughput, tokens and reliability rates per minute (:class:`MetricsView`).

:func:`stats` and :func:`total` read it; percentiles are computed when read, over any window.
"""

from ._fold import BUCKET_S, COUNTERS, MetricsView
from ._query import percentile, stats, total

__all__ = ["BUCKET_S", "COUNTERS", "MetricsView", "percentile", "stats", "total"]
