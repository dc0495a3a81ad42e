"""Late interaction: a candidate scored by how well each of the query's tokens finds its like among the
candidate's tokens (MaxSim, as ColBERT scores), beside the pooled vectors' one cosine.

Pure functions of token rows (unit vectors, one per WordPiece token): which of the query's tokens
count, and each candidate's mean over them of its best cosine (``Ranking.late``).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["LATE_TOKENS", "Tokens", "kept", "maxsim", "maxsim_table"]

LATE_TOKENS = ("all", "content", "asked")
"""Which of the query's tokens late interaction averages over (``Ranking.late_tokens``): every one,
those of its content words (not stopwords, not punctuation), or those of the content words that are
not its names (what it asks of them)."""


@dataclass(frozen=True, slots=True)
class Tokens:
    """A text's tokens as late interaction reads them: ``rows`` (tokens x dimensions, float32, each of
    unit length or zero), the WordPiece ``pieces`` ("super", "##visor") and each token's SIF weight
    (its estimated rarity, from its place in the vocabulary)."""

    rows: Any
    pieces: list[str]
    weights: Any


def kept(pieces: Sequence[str], leave_out: Collection[str]) -> list[bool]:
    """Which tokens belong to a word that is made of letters or digits and is not in ``leave_out``
    (lower case): a piece ``##visor`` goes with the word it continues ("supervisor")."""
    words: list[tuple[str, list[int]]] = []
    for i, piece in enumerate(pieces):
        if piece.startswith("##") and words:
            word, members = words[-1]
            words[-1] = (word + piece[2:], [*members, i])
        else:
            words.append((piece, [i]))
    out = [False] * len(pieces)
    for word, members in words:
        if word.isalnum() and word.lower() not in leave_out:
            for i in members:
                out[i] = True
    return out


def maxsim(query: Any, weights: Any, documents: Sequence[Any]) -> list[float]:
    """For each document (its token rows), the weighted mean over the query's token rows of the best
    cosine among the document's rows; 0 for a document without tokens, or when no query token weighs.
    Rows are unit vectors (or zeros), so a product is a cosine."""
    import numpy as np

    q = np.asarray(query, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    total = float(w.sum())
    out = [0.0] * len(documents)
    present = [i for i, d in enumerate(documents) if len(d)]
    if not present or not len(q) or total <= 0:
        return out
    rows = np.concatenate([documents[i] for i in present]).astype(np.float32, copy=False)
    starts = np.cumsum([0] + [len(documents[i]) for i in present[:-1]])
    best = np.maximum.reduceat(q @ rows.T, starts, axis=1)  # query tokens x documents
    for i, value in zip(present, (w @ best / total).tolist(), strict=True):
        out[i] = float(value)
    return out


def maxsim_table(query: Any, weights: Any, table: Any, norms: Any, documents: Sequence[Any]) -> list[float]:
    """:func:`maxsim` for documents given as rows of ``table`` (their token ids; ``norms``: each row's
    length), each row normalised: every distinct id's cosines are computed once (a candidate set shares
    most of its tokens), then each document takes the best of its own."""
    import numpy as np

    out = [0.0] * len(documents)
    w = np.asarray(weights, dtype=np.float32)
    total = float(w.sum())
    present = [i for i, d in enumerate(documents) if len(d)]
    if not present or not len(query) or total <= 0:
        return out
    flat = np.concatenate([np.asarray(documents[i]) for i in present])
    unique, inverse = np.unique(flat, return_inverse=True)
    cosines = np.asarray(query, dtype=np.float32) @ table[unique].T
    cosines /= np.maximum(norms[unique], 1e-12)
    starts = np.cumsum([0] + [len(documents[i]) for i in present[:-1]])
    best = np.maximum.reduceat(cosines[:, inverse], starts, axis=1)
    for i, value in zip(present, (w @ best / total).tolist(), strict=True):
        out[i] = float(value)
    return out
