"""The traces view: a span tree per run (:class:`TracesView`), and its queries.

The fold is in ``_fold`` (see :class:`TracesView` for the spans and tables); :func:`list_runs`
and :func:`trace` read the view.
"""

from ._fold import TracesView
from ._query import list_runs, trace

__all__ = ["TracesView", "list_runs", "trace"]
