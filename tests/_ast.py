"""``ast.parse`` for the suite's code scans. CPython 3.11's AST constructor keeps its recursion
depth in state shared by every thread, so a parse racing one in another thread (a library's
background thread, a test's) can fail with a spurious ``SystemError: AST constructor recursion
depth mismatch`` (python/cpython#106905); the same parse a moment later succeeds.
"""

from __future__ import annotations

import ast
import time


def parse(source: str, filename: str = "<unknown>") -> ast.Module:
    for attempt in range(5):
        try:
            return ast.parse(source, filename)
        except SystemError as exc:  # only this spurious one: a syntax error still fails at once
            if "recursion depth mismatch" not in str(exc) or attempt == 4:
                raise
            time.sleep(0.05)
    raise AssertionError("unreachable")
