"""The traces view: a span tree per run (:class:`TracesView`), and its queries.

The fold is in ``_fold`` (see :class:`TracesView` for the spans and tables); :func:`list_runs`
and :func:`trace` read the view.
"""

from ._fold import TracesView
from ._query import HEARTBEAT_S, STATUSES, list_runs, run_status, trace

__all__ = ["HEARTBEAT_S", "STATUSES", "TracesView", "list_runs", "run_status", "trace"]
