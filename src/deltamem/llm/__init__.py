"""Model backends, resolved by name once, when a database is opened.

    >>> resolve_llm("test").model_id
    'scripted-v1'

``local`` (SmolLM2-135M-Instruct on this machine), ``openai`` (any OpenAI-compatible endpoint) and ``test`` (the
deterministic double) for chat; ``minilm`` (all-MiniLM-L6-v2, offline), ``openai`` and ``test`` for embeddings.
Loading is lazy, checking is not: a name, its options and the settings it needs (the ``openai`` model and base URL,
the local model's files) are checked here, before a database runs anything; the weights load on first use (see
``LazyBackend``), which logs one line, ``Loaded SmolLM2-135M-Instruct (Q4_1) in 31.2 s``, on ``deltamem.llm``.

    >>> lazy_llm("test", latancy=0.5)
    Traceback (most recent call last):
    ...
    deltamem.errors.ConfigError: LLM backend 'test' has no option 'latancy'. Did you mean 'latency'?
"""

from __future__ import annotations

import importlib
import inspect
import logging
import threading
import time
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


log = logging.getLogger(__name__)


def _backend_class(target: str) -> type:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)  # the backend modules import torch only when built


def _construct(target: str, options: dict[str, Any]) -> Any:
    return _backend_class(target)(**options)


def check_backend(kind: str, name: str, target: str, options: dict[str, Any]) -> None:
    """Check a backend's configuration without building it: no weights load and no request is sent. The options
    must be parameters of its class, and the class's ``check_config(**options)``, where it has one, raises
    ``BackendUnavailable`` for a setting or file it needs and cannot find (the ``openai`` model, the GGUF file)."""
    cls = _backend_class(target)
    parameters = [p for p, v in inspect.signature(cls).parameters.items() if v.kind is v.KEYWORD_ONLY
                  or v.kind is v.POSITIONAL_OR_KEYWORD]
    for option in options:
        if option not in parameters:
            raise ConfigError(f"{kind} {name!r} has no option {option!r}." + did_you_mean(option, parameters))
    check = getattr(cls, "check_config", None)
    if check is not None:
        check(**options)


class LazyBackend(Generic[T]):
    """A backend named now and built on first ``get()``, so opening a database never waits for weights.

    With a ``label``, building it logs ``Loaded <label> in <seconds> s`` at INFO on ``deltamem.llm`` (the command
    line prints that on stderr); the label is the built backend's ``load_label``, so a backend that loads nothing
    worth reporting (the test double) has none and logs nothing."""

    def __init__(self, factory: Callable[[], T], *, announce: bool = False):
        self._factory = factory
        self._announce = announce
        self._backend: T | None = None
        self._lock = threading.Lock()

    def get(self) -> T:
        with self._lock:
            if self._backend is None:
                start = time.perf_counter()
                self._backend = self._factory()
                label = getattr(self._backend, "load_label", None) if self._announce else None
                if label:
                    log.info("Loaded %s in %.1f s", label, time.perf_counter() - start)
            return self._backend


def _resolve(kind: str, registry: dict[str, str], spec: Any, options: dict[str, Any]) -> LazyBackend[Any]:
    if not isinstance(spec, str):
        return LazyBackend(lambda: spec)
    if spec not in registry:
        raise ConfigError(f"Unknown {kind} {spec!r}." + did_you_mean(spec, registry))
    target = registry[spec]
    check_backend(kind, spec, target, options)
    return LazyBackend(lambda: _construct(target, options), announce=True)


def resolve_llm(spec: str | LLMBackend, **options: Any) -> LLMBackend:
    """Build a chat backend now, from a name or an instance."""
    return lazy_llm(spec, **options).get()


def lazy_llm(spec: str | LLMBackend, **options: Any) -> LazyBackend[LLMBackend]:
    return _resolve("LLM backend", LLM_BACKENDS, spec, options)


def lazy_embedder(spec: str | EmbeddingBackend, **options: Any) -> LazyBackend[EmbeddingBackend]:
    return _resolve("embedder", EMBEDDERS, spec, options)
