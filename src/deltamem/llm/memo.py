"""Memo keys: an identical call is never paid twice, across restarts too.

A call is identified by the SHA-256 of a sorted-key JSON of the model id and the exact request (messages and
decoding parameters). Results are stored in the store's memo table by ``deltamem.llm.runner.CallRunner``.

    >>> from deltamem.llm.base import CompletionRequest, Message
    >>> len(call_hash("m", CompletionRequest((Message("user", "hi"),))))
    64
"""

from __future__ import annotations

import hashlib
import json

from deltamem.llm.base import CompletionRequest


def call_hash(model_id: str, request: CompletionRequest) -> str:
    payload = {"model": model_id, "request": request.to_json()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
