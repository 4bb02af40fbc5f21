"""Model backends, resolved by name once, when a database is opened.

    >>> resolve_llm("test").model_id
    'scripted-v1'

``local`` (SmolLM2-135M-Instruct on this machine), ``openai`` (any OpenAI-compatible endpoint) and ``test`` (the
deterministic double) for chat; ``minilm`` (all-MiniLM-L6-v2, offline), ``openai`` and ``test`` for embeddings.
Loading is lazy: a name is checked here, the weights load on first use (see ``LazyBackend``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from deltamem.errors import ConfigError, did_you_mean
from deltamem.llm.base import EmbeddingBackend, LLMBackend

T = TypeVar("T")


def _local(**options: Any) -> LLMBackend:
    from deltamem.llm.local import LocalLLM

    return LocalLLM(**options)


def _openai(**options: Any) -> LLMBackend:
    from deltamem.llm.openai import OpenAILLM

    return OpenAILLM(**options)


def _test(**options: Any) -> LLMBackend:
    from deltamem.llm.scripted import ScriptedLLM

    return ScriptedLLM(**options)


def _minilm(**options: Any) -> EmbeddingBackend:
    from deltamem.llm.embed import MiniLMEmbedder

    return MiniLMEmbedder(**options)


def _openai_embedder(**options: Any) -> EmbeddingBackend:
    from deltamem.llm.openai import OpenAIEmbedder

    return OpenAIEmbedder(**options)


def _hashing(**options: Any) -> EmbeddingBackend:
    from deltamem.llm.scripted import HashingEmbedder

    return HashingEmbedder(**options)


LLM_BACKENDS: dict[str, Callable[..., LLMBackend]] = {"local": _local, "openai": _openai, "test": _test}
EMBEDDERS: dict[str, Callable[..., EmbeddingBackend]] = {
    "minilm": _minilm, "local": _minilm, "openai": _openai_embedder, "test": _hashing,
}


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


def _resolve(kind: str, registry: dict[str, Callable[..., T]], spec: Any, options: dict[str, Any]) -> LazyBackend[T]:
    if not isinstance(spec, str):
        return LazyBackend(lambda: spec)
    if spec not in registry:
        raise ConfigError(f"Unknown {kind} {spec!r}." + did_you_mean(spec, registry))
    factory = registry[spec]
    return LazyBackend(lambda: factory(**options))


def resolve_llm(spec: str | LLMBackend, **options: Any) -> LLMBackend:
    """Build a chat backend now, from a name or an instance."""
    return lazy_llm(spec, **options).get()


def lazy_llm(spec: str | LLMBackend, **options: Any) -> LazyBackend[LLMBackend]:
    return _resolve("LLM backend", LLM_BACKENDS, spec, options)


def lazy_embedder(spec: str | EmbeddingBackend, **options: Any) -> LazyBackend[EmbeddingBackend]:
    return _resolve("embedder", EMBEDDERS, spec, options)
