"""Memo keys: a call that returned is never paid again, across restarts too (a call in flight when its process died
is lost, and paid again; see ``deltamem.llm.runner``). A blended completion (``Completion.exact`` False) is not kept.

A call is identified by the SHA-256 of a sorted-key JSON of the model id and the exact request (messages and
decoding parameters); an embedding by the embedder's model id and the text. Results are stored in the store's memo
table by ``deltamem.llm.runner.CallRunner``: an embedding as a completion whose text is the vector, base64 float32.

    >>> from deltamem.llm.base import CompletionRequest, Message
    >>> len(call_hash("m", CompletionRequest((Message("user", "hi"),))))
    64
    >>> embed_hash("m", "hi") != call_hash("m", CompletionRequest((Message("user", "hi"),)))
    True
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np

from deltamem.llm.base import CompletionRequest


_KEY_JSON = json.JSONEncoder(sort_keys=True, separators=(",", ":"))  # made once: a key is hashed per call asked


def call_hash(model_id: str, request: CompletionRequest) -> str:
    payload = {"model": model_id, "request": request.to_json()}
    return hashlib.sha256(_KEY_JSON.encode(payload).encode()).hexdigest()


def embed_hash(model_id: str, text: str) -> str:
    """The memo key of embedding ``text``; its payload has no ``request``, so it never equals a completion's key."""
    payload = {"model": model_id, "embed": text}
    return hashlib.sha256(_KEY_JSON.encode(payload).encode()).hexdigest()


def vector_to_text(vector: np.ndarray) -> str:
    """A vector as base64 little-endian float32: exact, and how the memo keeps an embedding."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def text_to_vector(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(np.float32)
