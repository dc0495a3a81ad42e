"""Projections: pure folds of the event log into SQLite views, rebuildable at any time.

A :class:`Projection` names its tables and turns each event into row operations
(:class:`Upsert`, :class:`Delete`); the :class:`Projector` feeds every view from one
consumer on EVENTS and records each batch with its checkpoint in one transaction;
:func:`replay` rebuilds views from the start of the log, or as of a point in it.
"""

from ._ops import Delete, Merge, Op, Table, Upsert
from ._runner import PROJECTOR_DURABLE, Projector, ProjectorBusy, open_view, replay, view_versions
from ._store import Item, Projection, ViewStore, view_path
from .errors import ErrorsView
from .ledger import CostLedger
from .metrics import MetricsView
from .traces import TracesView

__all__ = [
    "PROJECTOR_DURABLE",
    "CostLedger",
    "Delete",
    "ErrorsView",
    "Item",
    "Merge",
    "MetricsView",
    "Op",
    "Projection",
    "Projector",
    "ProjectorBusy",
    "Table",
    "TracesView",
    "Upsert",
    "ViewStore",
    "open_view",
    "replay",
    "view_path",
    "view_versions",
]
