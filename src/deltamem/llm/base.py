"""The interface every LLM and embedding backend implements.

A backend only runs calls; deciding *which* calls to make is the engine's job. Backends count their own work
(prompt tokens computed, prompt tokens reused from a cache, output tokens, seconds), so the ledger records what the
backend measured rather than an estimate.

Requests and results are small frozen records, so a request can be hashed into a memo key and a result stored as JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Message:
    """One chat message."""

    role: str  # "system" | "user" | "assistant"
    content: str


@dataclass(frozen=True)
class CompletionRequest:
    """One chat completion call. Decoding is greedy (temperature 0) unless a caller asks otherwise."""

    messages: tuple[Message, ...]
    max_tokens: int = 64
    temperature: float = 0.0
    stop: tuple[str, ...] = ()

    def to_json(self) -> dict:
        """Canonical JSON form; the memo key is the SHA-256 of this plus the model id. Spelled out rather than
        ``dataclasses.asdict``, which deep-copies every field: hashing is on the path of every call asked for."""
        return {"messages": [{"role": m.role, "content": m.content} for m in self.messages],
                "max_tokens": self.max_tokens, "temperature": self.temperature, "stop": list(self.stop)}

    @classmethod
    def from_json(cls, data: dict) -> "CompletionRequest":
        return cls(
            messages=tuple(Message(**m) for m in data["messages"]),
            max_tokens=data["max_tokens"],
            temperature=data["temperature"],
            stop=tuple(data["stop"]),
        )


@dataclass(frozen=True)
class Attribution:
    """How strongly each output sentence attended to each context sentence a caller named (``context``, in prompt
    order): ``matrix[o][c]`` is output sentence o's share of the attention its tokens paid to those sentences, averaged
    over layers and heads, so each row sums to 1 (or 0 when no named sentence was found in the prompt)."""

    output_sentences: tuple[str, ...]
    matrix: tuple[tuple[float, ...], ...]

    def to_json(self) -> dict:
        return {"output_sentences": list(self.output_sentences), "matrix": [list(row) for row in self.matrix]}


@dataclass(frozen=True)
class Completion:
    """What one call returned and what it cost, as measured by the backend."""

    text: str
    prompt_tokens: int  # prompt tokens computed by this call (excludes reused_tokens)
    output_tokens: int
    seconds: float
    model: str
    reused_tokens: int = 0  # prompt tokens served from a KV / prefix cache instead of computed
    finish_reason: str = "stop"  # "stop" | "length"
    output_ids: tuple[int, ...] = ()  # the output's token ids, from backends that have them (a draft for later)
    attribution: Attribution | None = None  # from backends with attention, when the caller named context sentences
    # False when the text rests on approximate computation (a draft accepted on blended KV): such a completion is
    # never memoised, since the memo must answer an identical call with what a plain call returns.
    exact: bool = True
    # Model requests this call sent to a serving engine: 2 when a re-scored draft had to be continued (the openai
    # backend's draft path); in-process backends count their one call. Tokenizer round trips are not counted.
    requests: int = 1


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend can do beyond plain completion; the engine picks strategies from this."""

    logits: bool = False  # can score a given continuation (needed to re-score a draft)
    attention: bool = False  # can return attention weights
    kv_cache: bool = False  # can keep and reuse a prompt's KV cache
    kv_blend: bool = False  # can reuse KV beyond the prefix (``complete(..., blend=True)``; approximate)
    # Whether calls gain from overlapping (a server, or a backend that waits); False runs them one at a time in the
    # caller's thread, which spares the thread hand-off per call to a backend that answers at once.
    concurrent: bool = True


@runtime_checkable
class LLMBackend(Protocol):
    """A chat model. ``complete`` raises ``deltamem.errors.BackendError`` when a call fails."""

    model_id: str  # names the model *and* its weights/settings; part of every memo key
    capabilities: BackendCapabilities

    def complete(self, request: CompletionRequest) -> Completion: ...

    def count_tokens(self, text: str) -> int: ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """A sentence embedder: ``embed`` returns one L2-normalised float32 row per text, shape (len(texts), dim)."""

    model_id: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


@dataclass
class Usage:
    """A running count a backend may keep of its own work (for tests and diagnostics)."""

    calls: int = 0
    prompt_tokens: int = 0
    reused_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    failures: int = 0

    def add(self, completion: Completion) -> None:
        self.calls += 1
        self.prompt_tokens += completion.prompt_tokens
        self.reused_tokens += completion.reused_tokens
        self.output_tokens += completion.output_tokens
        self.seconds += completion.seconds


__all__ = [
    "Attribution",
    "BackendCapabilities",
    "Completion",
    "CompletionRequest",
    "EmbeddingBackend",
    "LLMBackend",
    "Message",
    "Usage",
]
