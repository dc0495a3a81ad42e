"""The cost ledger: one priced row per completed LLM call (:class:`CostLedger`), and its queries."""

from ._fold import CostLedger
from ._query import GroupBy, calls, totals

__all__ = ["CostLedger", "GroupBy", "calls", "totals"]
