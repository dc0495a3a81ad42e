"""The errors view: failures grouped by fingerprint (:class:`ErrorsView`), and its query.

``Rate limit reached for requests 123 in org-abc`` groups with its siblings: see
:func:`fingerprint` and :func:`normalise_message`; :func:`list_groups` reads the view.
"""

from ._fingerprint import Occurrence, fingerprint, normalise_message, occurrence_of
from ._fold import ErrorsView
from ._query import list_groups

__all__ = ["ErrorsView", "Occurrence", "fingerprint", "list_groups", "normalise_message", "occurrence_of"]
