"""Model backends, resolved by name once, when a database is opened.

    >>> resolve_llm("test").model_id
    'scripted-v1'

``local`` (SmolLM2-135M-Instruct on this machine), ``openai`` (any OpenAI-compatible endpoint) and ``test`` (the
deterministic double) for chat; ``minilm`` (all-MiniLM-L6-v2, offline), ``openai`` and ``test`` for embeddings.
Loading is lazy: a name is checked here, the weights load on first use (see ``LazyBackend``).
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from deltamem.errors import ConfigError, did_you_mean
from deltamem.llm.base import EmbeddingBackend, LLMBackend

T = TypeVar("T")


# name -> "module:class"; modules are imported only when a backend is built, so torch loads only for "local".
LLM_BACKENDS: dict[str, str] = {
    "local": "deltamem.llm.local:LocalLLM",
    "openai": "deltamem.llm.openai:OpenAILLM",
    "test": "deltamem.llm.scripted:ScriptedLLM",
}
EMBEDDERS: dict[str, str] = {
    "minilm": "deltamem.llm.embed:MiniLMEmbedder",
    "local": "deltamem.llm.embed:MiniLMEmbedder",
    "openai": "deltamem.llm.openai:OpenAIEmbedder",
    "test": "deltamem.llm.scripted:HashingEmbedder",
}


def _construct(target: str, options: dict[str, Any]) -> Any:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)(**options)


class LazyBackend(Generic[T]):
    """A backend named now and built on first ``get()``, so opening a database never waits for weights."""

    def __init__(self, factory: Callable[[], T]):
        self._factory = factory
        self._backend: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._backend is None:
                self._backend = self._factory()
            return self._backend


def _resolve(kind: str, registry: dict[str, str], spec: Any, options: dict[str, Any]) -> LazyBackend[Any]:
    if not isinstance(spec, str):
        return LazyBackend(lambda: spec)
    if spec not in registry:
        raise ConfigError(f"Unknown {kind} {spec!r}." + did_you_mean(spec, registry))
    target = registry[spec]
    return LazyBackend(lambda: _construct(target, options))


def resolve_llm(spec: str | LLMBackend, **options: Any) -> LLMBackend:
    """Build a chat backend now, from a name or an instance."""
    return lazy_llm(spec, **options).get()


def lazy_llm(spec: str | LLMBackend, **options: Any) -> LazyBackend[LLMBackend]:
    return _resolve("LLM backend", LLM_BACKENDS, spec, options)


def lazy_embedder(spec: str | EmbeddingBackend, **options: Any) -> LazyBackend[EmbeddingBackend]:
    return _resolve("embedder", EMBEDDERS, spec, options)
