"""What the vector operators share: stored embeddings, and the one way every similarity is computed.

    scores = similarities(row_vectors, query_vectors)   # float32 [rows, queries], the same whatever the batch

Embeddings live in operator state as ``store.state_vectors.Vector`` (binary in the store), fingerprinted by the
embedder's model id and the embedded text, so a row is embedded again only when that text changes. Hits are ranked best score first, then by key order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from deltamem.changes import Row, RowKey, key_order
from deltamem.errors import ConfigError, SchemaError, did_you_mean
from deltamem.llm.base import EmbeddingBackend
from deltamem.operators.base import OperatorContext

SCORE = "score"  # the similarity column a search adds
MAX_K = 10_000

# --- vectors and scores ----------------------------------------------------------------------------------------------


def text_of(row: Row | None, column: str) -> str | None:
    """The text a search embeds for a row: its ``column`` as text, or None when the row or the value is missing."""
    value = None if row is None else row.get(column)
    return None if value is None else str(value)


def vector_fingerprint(model_id: str, text: str) -> str:
    """What a stored vector depends on: the embedder's model and the text."""
    return hashlib.sha256(f"{model_id}\n{text}".encode()).hexdigest()[:16]


def similarities(rows: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Cosine similarities of unit vectors, shape (len(rows), len(queries)), as float32.

    NOTE: every score is computed here, in float64 and then rounded to float32, so that the same pair gets the same
    score whichever batch it was computed in (a float32 matrix product's result depends on the batch shape through
    summation order; the float64 one differs by ~1e-16, which float32 rounding absorbs). That is what lets an
    incrementally maintained ranking equal a recompute, ties included.
    """
    rows64 = np.asarray(rows, dtype=np.float64).reshape(-1, queries.shape[-1])
    return (rows64 @ np.asarray(queries, dtype=np.float64).reshape(-1, rows64.shape[1]).T).astype(np.float32)


def rank(key: RowKey, score: float) -> tuple:
    """Sort key of a search hit: best score first, then key order."""
    return (-score, key_order(key))


def embedder_of(ctx: OperatorContext, kind: str) -> EmbeddingBackend:
    if ctx.embedder is None:
        raise ConfigError(f"{kind} needs an embedder; open the database with embedder='minilm' (or 'test')")
    return ctx.embedder.get()


def check_k(k: Any, kind: str) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise SchemaError(f"{kind}: k={k!r} is out of range; use a number of rows from 1 to {MAX_K}")


def check_column_name(name: Any, kind: str, what: str = "column") -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise SchemaError(f"{kind}: {what} {name!r} is not a column name")


def check_has_column(columns: Sequence[str], name: str, *, kind: str, where: str) -> None:
    if name not in columns:
        raise SchemaError(f"{kind} reads column {name!r}, which {where} does not have." + did_you_mean(name, columns))


