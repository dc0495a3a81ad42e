"""``python -m tether.projections._child FD``: a view process of a :class:`ProjectorPool`.

Its own module (the package does not import it), so running it imports nothing twice.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    from tether.projections._pool import _child_main

    _child_main(int(sys.argv[1]))
