"""Static token embeddings distilled from the installed all-MiniLM-L6-v2 (the model2vec method).

Each WordPiece token of the model's vocabulary goes once through the encoder; the outputs are
reduced by PCA and weighted by the token's estimated rarity (SIF over a Zipf rank). A text's
vector is then the mean of its tokens' rows: a table look-up, tens of microseconds, no encoder.
The same centring and projection map MiniLM's pooled output of a query into the table's space.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._late import Tokens, maxsim_table

__all__ = ["QueryProjection", "StaticTable", "distill", "distill_projected", "fingerprint", "projection_path",
           "table_hash", "table_path"]

log = logging.getLogger("tether.memory")

SIF = 1e-4
"""model2vec's SIF coefficient: a token's weight is ``SIF / (SIF + p)``, ``p`` its Zipf probability."""


def fingerprint(model_dir: Path) -> str:
    """Short hash of the model files a table is distilled from (size and head of the weights, the tokenizer)."""
    digest = hashlib.sha256()
    weights = model_dir / "model.safetensors"
    digest.update(str(weights.stat().st_size).encode())
    with weights.open("rb") as f:
        digest.update(f.read(1 << 20))
    digest.update((model_dir / "tokenizer.json").read_bytes())
    return digest.hexdigest()[:12]


def table_hash(table: Any) -> str:
    """Short hash of a table's shape and rows: part of the embedder's name, so vectors from two different
    tables are never taken for one space (about 15 ms for the 31 MB of the default table)."""
    import numpy as np

    rows = np.ascontiguousarray(table, dtype=np.float32)
    digest = hashlib.sha256(f"{rows.shape}".encode())
    digest.update(rows.data.cast("B"))
    return digest.hexdigest()[:12]


def table_path(home: Path, dims: int, model_fingerprint: str) -> Path:
    """Where the table distilled from this model at this size is cached under ``home``."""
    return home / "models" / f"static-minilm-l6-v2-{dims}-{model_fingerprint}.npy"


def zipf_weights(np: Any, size: int) -> Any:
    """SIF weights from the vocabulary's order (id 0 the most frequent): model2vec's default."""
    inv_rank = 1.0 / np.arange(2, size + 2, dtype=np.float64)
    proba = inv_rank / inv_rank.sum()
    return (SIF / (SIF + proba)).astype(np.float32)


def distill(model: Any, dims: int = 256, *, tokens: Iterable[int] | None = None, batch: int = 1024) -> Any:
    """The table: one float32 row of ``dims`` per vocabulary id (zero for ids not distilled).

    ``model`` is a :class:`~tether.memory._minilm.MiniLM`. Each token is encoded alone, between
    ``[CLS]`` and ``[SEP]``, and mean-pooled as a sentence is (not normalised: on the tuning split
    hybrid recall@5 0.881 against 0.863 with unit rows); the rows are centred and projected
    on their ``dims`` principal components, then multiplied by the token's SIF weight. ``tokens``
    distils only those ids (tests); the ``[unused]`` placeholders are always left out."""
    return distill_projected(model, dims, tokens=tokens, batch=batch)[0]


def distill_projected(model: Any, dims: int = 256, *, tokens: Iterable[int] | None = None, batch: int = 1024
                      ) -> tuple[Any, QueryProjection]:
    """The table of :func:`distill` and the centring and projection that made it (a
    :class:`QueryProjection`, which maps MiniLM's pooled outputs of a query into the table's space)."""
    np = model.np
    vocab: dict[str, int] = model.tokenizer.get_vocab()
    size = len(vocab)
    names = {i: t for t, i in vocab.items()}
    wanted = sorted(set(range(size) if tokens is None else tokens))
    ids = [i for i in wanted if 0 <= i < size and not names[i].startswith("[unused")
           and names[i] not in ("[PAD]", "[CLS]", "[SEP]", "[MASK]")]
    cls, sep = vocab["[CLS]"], vocab["[SEP]"]

    class _Ids:
        __slots__ = ("ids",)

        def __init__(self, ids: list[int]) -> None:
            self.ids = ids

    started = time.monotonic()
    rows = np.zeros((len(ids), model.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
    with model.blas.cap():
        for i in range(0, len(ids), batch):
            chunk = ids[i:i + batch]
            rows[i:i + len(chunk)] = model.pooled([_Ids([cls, t, sep]) for t in chunk], normalise=False)
    if dims > min(rows.shape):
        raise ValueError(f"cannot keep {dims} dimensions of {rows.shape[0]} tokens of {rows.shape[1]} dimensions")
    mean = rows.mean(0)
    centred = rows - mean
    _, _, components = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    # each component's sign fixed (its largest loading positive), so every host distils the same table
    signs = np.sign(components[np.arange(len(components)), np.abs(components).argmax(1)])
    components *= np.where(signs == 0, 1.0, signs)[:, None]
    kept = components[:dims].T.astype(np.float32)
    reduced = (centred @ kept).astype(np.float32)
    table = np.zeros((size, dims), dtype=np.float32)
    table[ids] = reduced * zipf_weights(np, size)[ids, None]
    log.info("distilled %d token vectors (%d dimensions) from all-MiniLM-L6-v2 in %.1f s",
             len(ids), dims, time.monotonic() - started)
    return table, QueryProjection(mean.astype(np.float32), np.ascontiguousarray(kept), table_hash(table))


def projection_path(table_file: Path) -> Path:
    """Where the query projection of the table at ``table_file`` is kept: beside it."""
    return table_file.with_name(f"{table_file.stem}.query.npz")


class QueryProjection:
    """MiniLM's mean-pooled outputs of a text mapped into a static table's space: centred by the
    distilled token rows' mean and projected on the table's principal components (``mean``: the
    model's dimensions; ``components``: model dimensions x table dimensions), as the table's rows
    were; ``table`` is the hash of the table it belongs to. The rows' SIF weights are left out:
    a sentence's pooled output has no one token's rarity (tuning split, hybrid recall@5 0.926
    without them against 0.915 with each token's output weighted before pooling)."""

    def __init__(self, mean: Any, components: Any, table: str) -> None:
        import numpy as np

        self.np = np
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.ascontiguousarray(components, dtype=np.float32)
        if self.mean.ndim != 1 or self.components.ndim != 2 or self.components.shape[0] != self.mean.shape[0]:
            raise ValueError(f"a query projection needs a mean of n and components of n x d, got "
                             f"{self.mean.shape} and {self.components.shape}")
        self.table = table

    @property
    def dims(self) -> int:
        return int(self.components.shape[1])

    @property
    def hash(self) -> str:
        """Short hash of the mean and the components: part of the query encoder's name."""
        digest = hashlib.sha256(f"{self.components.shape}".encode())
        digest.update(self.mean.data.cast("B"))
        digest.update(self.components.data.cast("B"))
        return digest.hexdigest()[:12]

    def apply(self, pooled: Any) -> list[list[float]]:
        """Unit vectors in the table's space for these pooled outputs (one row each)."""
        np = self.np
        out = (np.asarray(pooled, dtype=np.float32) - self.mean) @ self.components
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.tolist()  # type: ignore[no-any-return]

    def apply_tokens(self, outputs: Any) -> Any:
        """MiniLM's token outputs (tokens x model dimensions) in the table's space, each row of unit length:
        the query's tokens late interaction compares with a document's table rows."""
        np = self.np
        out = (np.asarray(outputs, dtype=np.float32) - self.mean) @ self.components
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def save(self, path: Path) -> None:
        """Write the projection to ``path`` atomically, with the hash of its table."""
        np = self.np
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        with part.open("wb") as f:
            np.savez(f, mean=self.mean, components=self.components, table=np.array(self.table))
        os.replace(part, path)

    @classmethod
    def load(cls, path: Path) -> QueryProjection:
        import numpy as np

        with np.load(path, allow_pickle=False) as data:
            return cls(data["mean"], data["components"], str(data["table"]))


class StaticTable:
    """A distilled table and the tokenizer that indexes it: :meth:`encode` is a weighted mean of rows."""

    def __init__(self, table: Any, tokenizer: Any) -> None:
        import numpy as np

        self.np = np
        self.table = table
        self.tokenizer = tokenizer
        self._sif: Any = None
        self._norms: Any = None
        self._chunks: dict[bytes, list[int]] = {}
        self._texts: dict[bytes, Any] = {}
        """Kept by the SHA-256 of the text (or chunk), as the vector cache keeps vectors: no plaintext."""

    def encode(self, texts: Sequence[str]) -> list[list[float]]:
        """Unit vectors for ``texts`` (a text with no known token gets the zero vector)."""
        np = self.np
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)
        out = np.zeros((len(texts), self.table.shape[1]), dtype=np.float32)
        for row, enc in enumerate(encodings):
            if enc.ids:
                out[row] = self.table[enc.ids].mean(0)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out.tolist()  # type: ignore[no-any-return]

    def sif(self, ids: Sequence[int]) -> Any:
        """The SIF weights of these vocabulary ids (what the table's rows were multiplied by)."""
        if self._sif is None:
            self._sif = zipf_weights(self.np, self.table.shape[0])
        return self._sif[list(ids)]

    def late_scores(self, query: Tokens, weights: Any, texts: Sequence[str]) -> list[float]:
        """Each text's late-interaction score against the query's tokens (:func:`~tether.memory._late.maxsim`
        over the texts' table rows, normalised), each distinct token's rows read once."""
        if self._norms is None:
            self._norms = self.np.linalg.norm(self.table, axis=1).astype(self.np.float32)
        return maxsim_table(query.rows, weights, self.table, self._norms, self.ids(texts))

    CHUNKS = 65536
    """How many distinct whitespace-separated chunks :meth:`ids` keeps the token ids of ..."""
    TEXTS = 16384
    """... and how many whole texts (as int32 arrays)."""

    def ids(self, texts: Sequence[str]) -> list[Any]:
        """Each text's token ids (an int32 array), the same as the tokenizer's: the same entries come
        back search after search, so each text's ids are kept (by its SHA-256); a new text is tokenized by its
        whitespace-separated chunks (the tokenizer splits there before anything else), each chunk
        once and kept, as a search's candidates share most of their words."""
        np = self.np
        out = []
        known, done = self._chunks, self._texts
        for text in texts:
            digest = hashlib.sha256(text.encode()).digest()
            found = done.get(digest)
            if found is None:
                ids: list[int] = []
                for chunk in text.split():
                    key = hashlib.sha256(chunk.encode()).digest()
                    piece = known.get(key)
                    if piece is None:
                        if len(known) >= self.CHUNKS:
                            known.clear()
                        piece = known[key] = self.tokenizer.encode(chunk, add_special_tokens=False).ids
                    ids.extend(piece)
                if len(done) >= self.TEXTS:
                    done.clear()
                found = done[digest] = np.asarray(ids, dtype=np.int32)
            out.append(found)
        return out

    def tokens(self, texts: Sequence[str]) -> list[Tokens]:
        """Each text's tokens for late interaction: its table rows, each normalised (a row's SIF weight
        is a factor of its length, so it is gone), its WordPiece pieces and their SIF weights."""
        np = self.np
        out = []
        for enc in self.tokenizer.encode_batch(list(texts), add_special_tokens=False):
            rows = self.table[enc.ids]
            rows = rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
            out.append(Tokens(rows, list(enc.tokens), self.sif(enc.ids)))
        return out

    def encode_spans(self, text: str, spans: Sequence[tuple[int, int]]
                     ) -> tuple[list[float], list[float], list[float]]:
        """From one tokenization: the text's unit vector, the mean of its tokens' rows leaving out the
        tokens that overlap ``spans`` (character offsets ``[start, end)``) and the mean of those left
        out, each normalised (zeros when no token is in it). A bag of tokens: the second is the same
        bits as encoding the text with those characters cut out."""
        np = self.np
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        inside = [any(start < e and end > s for s, e in spans) for start, end in enc.offsets]
        out = np.zeros((3, self.table.shape[1]), dtype=np.float32)
        groups = (enc.ids, [i for i, x in zip(enc.ids, inside, strict=True) if not x],
                  [i for i, x in zip(enc.ids, inside, strict=True) if x])
        for row, ids in enumerate(groups):
            if ids:
                out[row] = self.table[ids].mean(0)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        rows: list[list[float]] = out.tolist()
        return rows[0], rows[1], rows[2]

    @staticmethod
    def save(table: Any, path: Path) -> None:
        """Write the table to ``path`` atomically (a partly written file is never read)."""
        import numpy as np

        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{os.getpid()}.part")
        with part.open("wb") as f:
            np.save(f, table)
        os.replace(part, path)
