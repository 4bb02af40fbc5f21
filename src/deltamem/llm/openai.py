"""Backends over any OpenAI-compatible endpoint (vLLM, SGLang, llama.cpp server, Ollama, OpenAI itself).

    OpenAILLM("qwen2.5-7b", "http://127.0.0.1:8000/v1").complete(CompletionRequest((Message("user", "Hi"),)))

Settings not passed as arguments come from the environment: ``DELTAMEM_OPENAI_MODEL``, ``DELTAMEM_OPENAI_BASE_URL``,
``DELTAMEM_OPENAI_API_KEY`` (then ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``); the embedder reads the same names with
``EMBED_`` after ``OPENAI_`` first (``DELTAMEM_OPENAI_EMBED_MODEL``, ...), then the chat names. The usage counts are
the server's own; only a server that reports no usage falls back to the approximate ``count_tokens``.

On a server that returns prompt logprobs (llama-cpp-python's, started with ``--logits_all true``) the chat backend
completes over ``/completions`` with the chat rendered here, and can re-score a draft:
``OpenAILLM(...).complete(new_request, draft=old.output_ids)``; ``deltamem.llm.openai_completions`` has the details.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np

from deltamem.errors import BackendError, BackendUnavailable
from deltamem.llm.base import BackendCapabilities, Completion, CompletionRequest

# Local servers ignore the key, but the SDK refuses to build a client without one.
_PLACEHOLDER_KEY = "EMPTY"
_PLAIN = BackendCapabilities()
_SCORING = BackendCapabilities(logits=True, kv_cache=True)
_DIM_PROBE = "dimension probe"


def _sdk() -> ModuleType:
    # Imported on first use so that deltamem without the `openai` package still imports.
    try:
        import openai
    except ImportError as e:
        raise BackendUnavailable("the OpenAI backends need the `openai` package: pip install openai") from e
    return openai


def _setting(value: str | None, names: tuple[str, ...]) -> str | None:
    if value:
        return value
    for name in names:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _resolve(
    who: str, model: str | None, base_url: str | None, api_key: str | None, *, embed: bool
) -> tuple[str, str, str]:
    """(model, base_url, api_key) from the arguments, then the environment; BackendUnavailable says what is missing."""
    infix = "EMBED_" if embed else ""
    model_vars = (f"DELTAMEM_OPENAI_{infix}MODEL",)
    url_vars = tuple(dict.fromkeys((f"DELTAMEM_OPENAI_{infix}BASE_URL", "DELTAMEM_OPENAI_BASE_URL", "OPENAI_BASE_URL")))
    key_vars = tuple(dict.fromkeys((f"DELTAMEM_OPENAI_{infix}API_KEY", "DELTAMEM_OPENAI_API_KEY", "OPENAI_API_KEY")))
    model = _setting(model, model_vars)
    if not model:
        raise BackendUnavailable(f"{who} needs a model: pass model=... or set {model_vars[0]}")
    base_url = _setting(base_url, url_vars)
    if not base_url:
        raise BackendUnavailable(
            f"{who} needs a base URL such as http://127.0.0.1:8000/v1: pass base_url=... or set {' or '.join(url_vars)}"
        )
    return model, base_url.rstrip("/"), _setting(api_key, key_vars) or _PLACEHOLDER_KEY


def _check(who: str, model: str | None, base_url: str | None, api_key: str | None, *, embed: bool) -> None:
    """What the constructor would refuse, found without building a client: the settings, then the SDK package."""
    _resolve(who, model, base_url, api_key, embed=embed)
    if importlib.util.find_spec("openai") is None:
        raise BackendUnavailable("the OpenAI backends need the `openai` package: pip install openai")


def _client(base_url: str, api_key: str, max_retries: int, timeout: float) -> Any:
    # The SDK retries connection errors and HTTP 408/409/429/5xx itself, with exponential backoff and Retry-After.
    return _sdk().OpenAI(base_url=base_url, api_key=api_key, max_retries=max_retries, timeout=timeout)


def _describe(error: Exception, model_id: str) -> str:
    """One line naming the HTTP status (when there was a response) and the server's own message."""
    status = getattr(error, "status_code", None)
    message = getattr(error, "message", None) or str(error) or type(error).__name__
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        # OpenAI-style servers wrap it as {"error": {"message": ...}}; the SDK sometimes unwraps it already.
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            message = str(inner["message"])
        elif isinstance(inner, dict) and inner.get("detail"):  # FastAPI's validation errors
            message = str(inner["detail"])[:300]
        elif isinstance(inner, str):
            message = inner
    elif isinstance(body, str) and body:
        message = body[:300]
    where = f"HTTP {status}" if status is not None else type(error).__name__
    return " ".join(f"{model_id}: {where}: {message}".split())


class OpenAILLM:
    """A chat model behind an OpenAI-compatible endpoint.

    ``model_id`` is ``"openai:{model}@{base_url}"``, so answers memoised from one server are never served for another.

    Reading ``capabilities`` (or the first ``complete``) probes the server once. Where it can score drafts (see
    ``deltamem.llm.openai_completions``), ``capabilities`` has ``logits`` and ``kv_cache`` (the server's automatic
    prefix cache is what makes re-scoring cheap) and every call goes to ``/completions`` with the chat rendered by
    ``chat_template``, which must be the model's own: a name in ``CHAT_TEMPLATES`` ("chatml") or a Jinja2 template
    string. Elsewhere, or with ``chat_template=None`` (no probe), ``capabilities`` is empty, calls go to
    ``/chat/completions`` and a ``draft`` is ignored.
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        max_retries: int = 4,
        timeout: float = 60.0,
        chat_template: str | None = "chatml",
    ):
        self.model, self.base_url, api_key = _resolve("OpenAILLM", model, base_url, api_key, embed=False)
        self.model_id = f"openai:{self.model}@{self.base_url}"
        self._client = _client(self.base_url, api_key, max_retries, timeout)
        self._completions = None
        if chat_template is not None:
            # Imported here: that module builds on this one's helpers.
            from deltamem.llm.openai_completions import CompletionsPath, chat_renderer

            render = chat_renderer(chat_template)
            self._completions = CompletionsPath(self._client, self.model, self.base_url, self.model_id, render)

    @staticmethod
    def check_config(model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                     **_options: Any) -> None:
        """``BackendUnavailable`` when the model or the base URL is set nowhere (arguments, then the environment) or
        the ``openai`` package is missing; no request is sent."""
        _check("OpenAILLM", model, base_url, api_key, embed=False)

    @property
    def capabilities(self) -> BackendCapabilities:
        if self._completions is not None and self._completions.can_score():
            return _SCORING
        return _PLAIN

    def count_tokens(self, text: str) -> int:
        """Approximate: ``max(1, round(len(text) / 4))`` (0 for ""), about four characters a token for English.

        An arbitrary endpoint has no tokenizer we can call, so this is only used to plan, or when a server returns
        no usage; ``complete`` otherwise reports the server's exact counts.
        """
        return max(1, round(len(text) / 4)) if text else 0

    def complete(
        self,
        request: CompletionRequest,
        *,
        cache_key: str | None = None,
        draft: Sequence[int] | None = None,
        attribute_to: Sequence[str] | None = None,
    ) -> Completion:
        """One completion; ``BackendError`` once the SDK's retries are spent.

        ``draft`` (the old answer's ``output_ids``) is re-scored where the server can (``capabilities.logits``) and
        ignored elsewhere; it never changes the result. ``cache_key`` is not needed (the server finds shared prefixes
        itself) and ``attribute_to`` has nothing to attribute with (no attention): both are accepted, as the engine
        passes them to any backend with the matching capability, and ignored."""
        if self._completions is not None and self._completions.can_score():
            return self._completions.complete(request, draft)
        return self._chat(request)

    def _chat(self, request: CompletionRequest) -> Completion:
        sdk = _sdk()
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        if request.stop:  # some servers reject an empty stop list
            kwargs["stop"] = list(request.stop)
        start = time.perf_counter()
        try:
            response = self._client.chat.completions.create(**kwargs)
        except sdk.OpenAIError as e:
            raise BackendError(_describe(e, self.model_id)) from e
        seconds = time.perf_counter() - start
        if not response.choices:
            raise BackendError(f"{self.model_id}: the server returned no choices")
        choice = response.choices[0]
        text = choice.message.content or ""
        prompt, output, reused = self._usage(response.usage, request, text)
        return Completion(
            text=text,
            prompt_tokens=prompt,
            output_tokens=output,
            seconds=seconds,
            model=self.model_id,
            reused_tokens=reused,
            finish_reason=choice.finish_reason or "stop",
        )

    def _usage(self, usage: Any, request: CompletionRequest, text: str) -> tuple[int, int, int]:
        """(computed prompt tokens, output tokens, reused prompt tokens), from the server where it says."""
        prompt = getattr(usage, "prompt_tokens", None)
        output = getattr(usage, "completion_tokens", None)
        details = getattr(usage, "prompt_tokens_details", None)
        reused = getattr(details, "cached_tokens", None) or 0
        if prompt is None:
            prompt = sum(self.count_tokens(m.content) for m in request.messages)
        if output is None:
            output = self.count_tokens(text)
        # OpenAI counts cached tokens inside prompt_tokens; the ledger wants only what was computed.
        reused = min(reused, prompt)
        return prompt - reused, output, reused

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()


class OpenAIEmbedder:
    """Sentence embeddings from an OpenAI-compatible ``/embeddings`` endpoint; rows are float32 and L2-normalised.

    ``dim`` is whatever the server returns. Pass ``dim=`` when it is known; otherwise the first ``embed`` sets it,
    and reading ``dim`` before any call embeds one probe text. A server that later returns another width raises
    ``BackendError``. (On Python 3.11, ``isinstance(e, EmbeddingBackend)`` reads ``dim`` and so may probe.)
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        dim: int | None = None,
        batch_size: int = 256,
        max_retries: int = 4,
        timeout: float = 60.0,
    ):
        self.model, self.base_url, api_key = _resolve("OpenAIEmbedder", model, base_url, api_key, embed=True)
        self.model_id = f"openai:{self.model}@{self.base_url}"
        self.batch_size = batch_size
        self._dim = dim
        self._dim_lock = threading.Lock()
        self._client = _client(self.base_url, api_key, max_retries, timeout)

    @staticmethod
    def check_config(model: str | None = None, base_url: str | None = None, api_key: str | None = None,
                     **_options: Any) -> None:
        """``BackendUnavailable`` when the model or the base URL is set nowhere (arguments, then the environment:
        ``DELTAMEM_OPENAI_EMBED_MODEL``, ...) or the ``openai`` package is missing; no request is sent."""
        _check("OpenAIEmbedder", model, base_url, api_key, embed=True)

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed([_DIM_PROBE])
        assert self._dim is not None, "OpenAIEmbedder.embed did not record the width"
        return self._dim

    def embed(self, texts: list[str]) -> np.ndarray:
        """One normalised float32 row per text, shape (len(texts), dim); ``BackendError`` when the server fails."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [self._embed_batch(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        out = np.concatenate(parts) if len(parts) > 1 else parts[0]
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1.0, norms)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        sdk = _sdk()
        try:
            # "float" explicitly: the SDK otherwise asks for base64, which llama.cpp and others do not speak.
            response = self._client.embeddings.create(model=self.model, input=texts, encoding_format="float")
        except sdk.OpenAIError as e:
            raise BackendError(_describe(e, self.model_id)) from e
        rows = sorted(response.data, key=lambda d: d.index)
        if len(rows) != len(texts):
            raise BackendError(f"{self.model_id}: asked for {len(texts)} embeddings, the server returned {len(rows)}")
        out = np.asarray([row.embedding for row in rows], dtype=np.float32)
        if out.ndim != 2 or out.shape[1] == 0:
            raise BackendError(f"{self.model_id}: the server returned embeddings of shape {out.shape}")
        with self._dim_lock:
            if self._dim is None:
                self._dim = int(out.shape[1])
        if out.shape[1] != self._dim:
            got = out.shape[1]
            raise BackendError(f"{self.model_id}: the server returned {got}-d embeddings, expected {self._dim}")
        return out

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._client.close()


__all__ = ["OpenAIEmbedder", "OpenAILLM"]
