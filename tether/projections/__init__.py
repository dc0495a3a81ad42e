"""Projections: pure folds of the event log into SQLite views, rebuildable at any time.

A :class:`Projection` names its tables and turns each event into row operations
(:class:`Upsert`, :class:`Delete`); the :class:`Projector` feeds every view from one
consumer on EVENTS and records each batch with its checkpoint in one transaction;
:func:`replay` rebuilds views from the start of the log, or as of a point in it. A
:class:`ProjectorPool` runs groups of views in child processes, one projector each, so the
folds use every core.
"""

from ._ops import Delete, Index, Merge, Op, Table, Upsert
from ._pool import ProjectorPool, default_processes, partition
from ._replay import replay, replay_in_processes
from ._runner import PROJECTOR_DURABLE, Projector, ProjectorBusy, open_view, view_versions
from ._store import Item, Projection, ViewStore, view_path
from .errors import ErrorsView
from .eval import EvalView
from .ledger import CostLedger
from .metrics import MetricsView
from .traces import TracesView

__all__ = [
    "PROJECTOR_DURABLE",
    "CostLedger",
    "Delete",
    "ErrorsView",
    "EvalView",
    "Index",
    "Item",
    "Merge",
    "MetricsView",
    "Op",
    "Projection",
    "Projector",
    "ProjectorBusy",
    "ProjectorPool",
    "Table",
    "TracesView",
    "Upsert",
    "ViewStore",
    "default_processes",
    "open_view",
    "partition",
    "replay",
    "replay_in_processes",
    "view_path",
    "view_versions",
]
