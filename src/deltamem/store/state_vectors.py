"""Embeddings in operator state: a ``Vector`` value, and how the store keeps vectors apart from the JSON they sit in.

    entry = StateEntry(key, fp, row, {"model": m, "vector": Vector(embedding)})   # np.asarray(entry.value["vector"])
    json_value, blob = pack_vectors(entry.value)        # the store writes blob to op_state.vectors (BLOB / BYTEA)

Invariant: ``unpack_vectors(*pack_vectors(value)) == value`` for every JSON value that holds ``Vector`` objects
anywhere (in dicts or lists); a value without vectors packs to itself and ``None``.

Why a binary column: a 384-d embedding is 1,536 bytes as float32, about 2 KB as base64 and about 8 KB as a JSON list
of floats, and JSON text must be parsed back number by number. ``op_state.vectors`` holds the raw little-endian
float32 of every vector of one entry, after a header that says where each sits in the value. Why not pgvector: the
store only keeps the vectors; deltamem searches them in process (``memory.vector_index``, usearch) so that SQLite and
PostgreSQL give the same results, and pgvector's type holds one vector per column, not a value's several.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

from deltamem.llm.memo import text_to_vector

_HEADER = struct.Struct("<I")  # the length of the JSON header: [[path, length], ...], path a list of keys/indices


class Vector:
    """An immutable float32 vector, compared and hashed by its values; ``np.asarray(vector)`` gives a float32 copy."""

    __slots__ = ("_data",)

    def __init__(self, values: Any):
        array = np.asarray(values, dtype="<f4")
        if array.ndim != 1:
            raise ValueError(f"a Vector is one-dimensional; got shape {array.shape}")
        self._data = array.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Vector:
        vector = cls.__new__(cls)
        vector._data = bytes(data)
        return vector

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return np.frombuffer(self._data, dtype="<f4").astype(dtype or np.float32)

    def __len__(self) -> int:
        return len(self._data) // 4

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vector) and other._data == self._data

    def __hash__(self) -> int:
        return hash(self._data)

    def __repr__(self) -> str:
        return f"Vector(dim={len(self)})"

    def to_bytes(self) -> bytes:
        return self._data


def pack_vectors(value: Any) -> tuple[Any, bytes | None]:
    """``value`` with every ``Vector`` replaced by None, and the vectors as bytes (None when it holds none)."""
    if not _holds_vector(value):  # most values: every state write passes here, so no copy of them is made
        return value, None
    found: list[tuple[list, Vector]] = []
    stripped = _strip(value, [], found)
    header = json.dumps([[path, len(vector)] for path, vector in found]).encode()
    return stripped, b"".join([_HEADER.pack(len(header)), header, *(vector.to_bytes() for _path, vector in found)])


def unpack_vectors(value: Any, blob: bytes | None) -> Any:
    """The value ``pack_vectors`` was given, from its two parts (the value is changed in place)."""
    if blob is None:
        return value
    blob = bytes(blob)
    (size,) = _HEADER.unpack_from(blob)
    offset = _HEADER.size + size
    for path, length in json.loads(blob[_HEADER.size:offset]):
        vector = Vector.from_bytes(blob[offset:offset + 4 * length])
        offset += 4 * length
        if not path:
            return vector
        parent = value
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = vector
    return value


def _holds_vector(value: Any) -> bool:
    if isinstance(value, Vector):
        return True
    if isinstance(value, dict):
        return any(_holds_vector(v) for v in value.values())
    return isinstance(value, list) and any(_holds_vector(v) for v in value)


def _strip(value: Any, path: list, found: list[tuple[list, Vector]]) -> Any:
    if isinstance(value, Vector):
        found.append((list(path), value))
        return None
    if isinstance(value, dict):
        return {k: _strip(v, [*path, k], found) for k, v in value.items()}
    if isinstance(value, list):
        return [_strip(v, [*path, i], found) for i, v in enumerate(value)]
    return value


# --- values written before the vectors column (SQLite schema 6 and older, PostgreSQL schema 2 and older) -------------

# Per operator kind, the keys whose values held a vector: base64 float32 text, or a JSON list of numbers.
_LEGACY_KEYS = {
    "sem_index": ("vector",), "sem_search": ("query_vec",), "sem_search_many": ("vector", "centroid"),
    "sem_join": ("vec",), "llm_generate": ("question_vec", "reuse_vec"), "llm_compose": ("question_vec", "reuse_vec"),
}


def upgrade_legacy_value(op_id: str, value: Any) -> Any:
    """An older store's value of operator ``op_id`` (ids are "<n>:<kind>[/<part>...]") with its vectors as ``Vector``.

    The keys are looked for only in the operator kinds that wrote them, so a model's output that happens to use one
    of these names (a ``sem_extract`` field called "vector") is left alone.
    """
    kind = op_id.partition(":")[2].partition("/")[0]
    if not isinstance(value, dict) or kind not in _LEGACY_KEYS:
        return value
    if op_id.endswith("/docs") and isinstance(value.get("chunks"), list):  # llm_generate's chunks, "vec" each
        return {**value, "chunks": [{**c, "vec": _legacy_vector(c.get("vec"))} for c in value["chunks"]]}
    return {k: _legacy_vector(v) if k in _LEGACY_KEYS[kind] else v for k, v in value.items()}


def _legacy_vector(stored: Any) -> Any:
    if isinstance(stored, str):
        return Vector(text_to_vector(stored))
    if isinstance(stored, list) and stored and all(isinstance(x, (int, float)) for x in stored):
        return Vector(stored)
    return stored


def legacy_updates(rows: Any) -> list[tuple[Any, bytes, str, str, str]]:
    """For an older store's ``(view, op, key, value)`` rows, ``(value, vectors, view, op, key)`` of each row whose
    value held vectors: the stripped value and the packed vectors, ready for an ``UPDATE op_state``."""
    out = []
    for view, op, key, value in rows:
        stripped, blob = pack_vectors(upgrade_legacy_value(op, value))
        if blob is not None:
            out.append((stripped, blob, view, op, key))
    return out
