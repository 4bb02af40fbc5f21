"""An OpenAI-compatible HTTP server in front of any deltamem backend.

    with serve_in_thread(make_app(ScriptedLLM(), HashingEmbedder())) as server: OpenAILLM("m", server.base_url)

It serves ``POST /v1/chat/completions``, ``POST /v1/embeddings`` and ``GET /v1/models`` in OpenAI's JSON shapes, so
tests get a real HTTP round trip and a local model can be used by any OpenAI client. It is a single-model server:
the ``model`` a request names is accepted and ignored. Streaming, tools and ``n > 1`` are not offered.

Requests are validated by pydantic (422 with FastAPI's ``detail`` on bad input); a ``BackendError`` from the backend
becomes HTTP 500 with an OpenAI-style ``{"error": {"message", "type"}}`` body, which OpenAI clients retry.
"""

from __future__ import annotations

import base64
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from deltamem.errors import BackendError, BackendUnavailable
from deltamem.llm.base import CompletionRequest, EmbeddingBackend, LLMBackend, Message

_DEFAULT_MAX_TOKENS = CompletionRequest.__dataclass_fields__["max_tokens"].default


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str


class ChatRequest(BaseModel):
    """The subset of OpenAI's chat request a deltamem backend can honour; unknown fields are ignored."""

    model: str | None = None
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # OpenAI's newer name for max_tokens
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    stop: str | list[str] | None = None
    stream: bool = False
    n: int = Field(default=1, ge=1, le=1)


class EmbeddingRequest(BaseModel):
    model: str | None = None
    input: str | Annotated[list[str], Field(min_length=1)]
    encoding_format: Literal["float", "base64"] = "float"


@dataclass
class ServerStats:
    """What the server was asked, for tests: requests that passed validation, and the 503s it injected."""

    chat_requests: int = 0
    embedding_requests: int = 0
    injected_failures: int = 0


def _error(status: int, message: str, kind: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": None}})


def _to_request(body: ChatRequest) -> CompletionRequest:
    # Greedy unless asked: deltamem's default, not OpenAI's temperature of 1.
    stop = (body.stop,) if isinstance(body.stop, str) else tuple(body.stop or ())
    return CompletionRequest(
        messages=tuple(Message("system" if m.role == "developer" else m.role, m.content) for m in body.messages),
        max_tokens=body.max_completion_tokens or body.max_tokens or _DEFAULT_MAX_TOKENS,
        temperature=0.0 if body.temperature is None else body.temperature,
        stop=stop,
    )


def make_app(
    llm: LLMBackend,
    embedder: EmbeddingBackend | None = None,
    *,
    model_name: str | None = None,
    fail_first: int = 0,
    retry_after: float | None = None,
) -> FastAPI:
    """A FastAPI app serving ``llm`` (and ``embedder``, when given) under ``/v1``; ``app.state.stats`` counts requests.

    ``model_name`` is the name the server reports (default ``llm.model_id``). For tests, ``fail_first=N`` answers the
    first N chat requests with HTTP 503, with a ``Retry-After: retry_after`` header when that is given.
    """
    name = model_name or llm.model_id
    embed_name = embedder.model_id if embedder is not None else None
    app = FastAPI(title="deltamem OpenAI-compatible server", docs_url=None, redoc_url=None)
    stats = ServerStats()
    app.state.stats = stats
    lock = threading.Lock()  # sync endpoints run on a thread pool

    @app.exception_handler(BackendError)
    async def backend_failed(_request: Request, error: BackendError) -> JSONResponse:
        return _error(500, str(error), "backend_error")

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        names = [name] + ([embed_name] if embed_name and embed_name != name else [])
        return {
            "object": "list",
            "data": [{"id": n, "object": "model", "created": 0, "owned_by": "deltamem"} for n in names],
        }

    @app.post("/v1/chat/completions", response_model=None)
    def chat_completions(body: ChatRequest) -> dict[str, Any] | JSONResponse:
        with lock:
            stats.chat_requests += 1
            inject = stats.injected_failures < fail_first
            if inject:
                stats.injected_failures += 1
        if inject:
            response = _error(503, "injected failure (fail_first)", "service_unavailable")
            if retry_after is not None:
                response.headers["Retry-After"] = f"{retry_after:g}"
            return response
        if body.stream:
            return _error(400, "this server does not stream; send stream=false", "invalid_request_error")
        completion = llm.complete(_to_request(body))
        prompt_tokens = completion.prompt_tokens + completion.reused_tokens  # OpenAI counts cached tokens in prompt
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion.output_tokens,
                "total_tokens": prompt_tokens + completion.output_tokens,
                "prompt_tokens_details": {"cached_tokens": completion.reused_tokens},
            },
        }

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(body: EmbeddingRequest) -> dict[str, Any] | JSONResponse:
        if embedder is None:
            return _error(404, "this server has no embedder", "invalid_request_error")
        with lock:
            stats.embedding_requests += 1
        texts = [body.input] if isinstance(body.input, str) else body.input
        vectors = np.asarray(embedder.embed(texts), dtype=np.float32)
        # No tokenizer for an arbitrary embedder: usage counts words, which is enough for a ledger estimate.
        tokens = sum(max(1, len(t.split())) for t in texts)
        return {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": _encode(row, body.encoding_format)}
                for i, row in enumerate(vectors)
            ],
            "model": embed_name,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }

    return app


def _encode(row: np.ndarray, encoding: str) -> list[float] | str:
    # The OpenAI SDK asks for base64 by default: little-endian float32 bytes.
    if encoding == "base64":
        return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
    return row.tolist()


class RunningServer:
    """A uvicorn server on a daemon thread, accepting connections at ``base_url`` from construction until ``stop()``.

    Use it as a context manager, or call ``stop()``; stopping twice is harmless.
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, *, startup_timeout: float = 10.0):
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here rather than by uvicorn so that port=0 yields a known free port before the thread starts.
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as e:
            self._socket.close()
            raise BackendUnavailable(f"cannot listen on {host}:{port}: {e}") from e
        self.host = host
        self.port: int = self._socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"http://{shown}:{self.port}/v1"
        config = uvicorn.Config(
            app, host=host, port=self.port, log_level="warning", access_log=False, timeout_graceful_shutdown=5
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [self._socket]},
            name=f"deltamem-server-{self.port}",
            daemon=True,
        )
        self._thread.start()
        self._wait_started(startup_timeout)

    def _wait_started(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                self._socket.close()
                raise BackendUnavailable(f"the server on {self.base_url} exited during startup (see its log)")
            if time.monotonic() > deadline:
                self.stop()
                raise BackendUnavailable(f"the server on {self.base_url} did not start within {timeout:g}s")
            time.sleep(0.005)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to finish its open requests and exit, and wait for its thread."""
        self._server.should_exit = True
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        self._socket.close()

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> RunningServer:
    """Start ``app`` on ``host:port`` (``port=0`` picks a free one) and return once it accepts connections."""
    return RunningServer(app, host, port)


__all__ = ["RunningServer", "ServerStats", "make_app", "serve_in_thread"]
