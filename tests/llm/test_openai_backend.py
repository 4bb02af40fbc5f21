"""OpenAILLM / OpenAIEmbedder against the OpenAI-compatible server, over real HTTP on 127.0.0.1.

The server fronts the deterministic ScriptedLLM and HashingEmbedder, so every answer and count the client reports can
be checked against what those backends produce for the same request.
"""

from __future__ import annotations

import dataclasses
import socket
import time

import httpx
import numpy as np
import pytest

from deltamem.errors import BackendError, BackendUnavailable
from deltamem.llm.base import Completion, CompletionRequest, EmbeddingBackend, LLMBackend, Message
from deltamem.llm.openai import OpenAIEmbedder, OpenAILLM
from deltamem.llm.openai_server import make_app, serve_in_thread
from deltamem.llm.scripted import HashingEmbedder, ScriptedLLM

pytestmark = pytest.mark.timeout(60)

_ENV = (
    "DELTAMEM_OPENAI_MODEL",
    "DELTAMEM_OPENAI_BASE_URL",
    "DELTAMEM_OPENAI_API_KEY",
    "DELTAMEM_OPENAI_EMBED_MODEL",
    "DELTAMEM_OPENAI_EMBED_BASE_URL",
    "DELTAMEM_OPENAI_EMBED_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_API_KEY",
)

REQUESTS = [
    CompletionRequest((Message("user", "Is 7 a prime number? Answer True or False."),)),
    CompletionRequest(
        (
            Message("system", "You extract fields."),
            Message("user", "Reply with a JSON object with the keys city and country. Text: Paris is nice."),
        ),
        max_tokens=40,
    ),
    CompletionRequest((Message("user", "Name a colour."),), temperature=0.7),
]


class RecordingLLM(ScriptedLLM):
    """ScriptedLLM that keeps every request the server handed it."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[CompletionRequest] = []

    def complete(self, request: CompletionRequest) -> Completion:
        self.requests.append(request)
        return super().complete(request)


class CachingLLM(ScriptedLLM):
    """ScriptedLLM that claims the first 5 prompt tokens came from a prefix cache."""

    def complete(self, request: CompletionRequest) -> Completion:
        c = super().complete(request)
        return dataclasses.replace(c, prompt_tokens=c.prompt_tokens - 5, reused_tokens=5)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def recording() -> RecordingLLM:
    return RecordingLLM()


@pytest.fixture(scope="module")
def server(recording: RecordingLLM):
    with serve_in_thread(make_app(recording, HashingEmbedder())) as running:
        yield running


def test_text_and_usage_equal_scripted_answers(server) -> None:
    llm = OpenAILLM("scripted", server.base_url)
    assert isinstance(llm, LLMBackend)
    assert llm.model_id == f"openai:scripted@{server.base_url}"
    reference = ScriptedLLM()
    for request in REQUESTS:
        got, want = llm.complete(request), reference.complete(request)
        assert got.text == want.text
        assert (got.prompt_tokens, got.output_tokens, got.reused_tokens) == (want.prompt_tokens, want.output_tokens, 0)
        assert got.finish_reason == "stop"
        assert got.model == llm.model_id and got.seconds > 0


def test_request_fields_reach_the_backend(server, recording: RecordingLLM) -> None:
    llm = OpenAILLM("scripted", server.base_url)
    for request in [*REQUESTS, CompletionRequest((Message("user", "Go."),), max_tokens=7, stop=("\n", "END"))]:
        recording.requests.clear()
        llm.complete(request)
        assert recording.requests == [request]  # messages, max_tokens, temperature and the stop list, unchanged


def test_single_string_stop_is_accepted(server, recording: RecordingLLM) -> None:
    recording.requests.clear()
    body = {"model": "x", "messages": [{"role": "user", "content": "Go."}], "stop": "END"}
    response = httpx.post(f"{server.base_url}/chat/completions", json=body)
    assert response.status_code == 200
    assert recording.requests[0].stop == ("END",)


def test_length_finish_reason_is_passed_on(server) -> None:
    request = CompletionRequest((Message("user", "Name a colour."),), max_tokens=1)
    got = OpenAILLM("scripted", server.base_url).complete(request)
    assert got.finish_reason == "length"
    assert got.text == ScriptedLLM().complete(request).text


def test_cached_tokens_become_reused_tokens() -> None:
    request = REQUESTS[0]
    want = CachingLLM().complete(request)
    with serve_in_thread(make_app(CachingLLM())) as running:
        raw = httpx.post(
            f"{running.base_url}/chat/completions",
            json={"messages": [{"role": m.role, "content": m.content} for m in request.messages]},
        ).json()
        got = OpenAILLM("m", running.base_url).complete(request)
    # On the wire prompt_tokens includes the cached ones, as OpenAI reports them; the client splits them again.
    assert raw["usage"]["prompt_tokens"] == want.prompt_tokens + 5
    assert raw["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    assert (got.prompt_tokens, got.reused_tokens) == (want.prompt_tokens, 5)


def test_503s_are_retried_with_backoff() -> None:
    app = make_app(ScriptedLLM(), fail_first=2)
    with serve_in_thread(app) as running:
        got = OpenAILLM("m", running.base_url, max_retries=2).complete(REQUESTS[0])
    assert got.text == ScriptedLLM().complete(REQUESTS[0]).text
    assert (app.state.stats.chat_requests, app.state.stats.injected_failures) == (3, 2)
    assert got.seconds > 0.5  # the SDK slept between tries (0.5 s, then 1 s, less up to 25% jitter)


def test_retry_after_header_is_honoured() -> None:
    app = make_app(ScriptedLLM(), fail_first=3, retry_after=0.01)
    with serve_in_thread(app) as running:
        start = time.perf_counter()
        OpenAILLM("m", running.base_url, max_retries=3).complete(REQUESTS[0])
        elapsed = time.perf_counter() - start
    assert app.state.stats.chat_requests == 4
    assert elapsed < 1.5  # the default backoff for three retries sleeps at least 2.6 s


def test_without_retries_a_503_is_a_backend_error() -> None:
    app = make_app(ScriptedLLM(), fail_first=1)
    with serve_in_thread(app) as running:
        with pytest.raises(BackendError, match="503") as caught:
            OpenAILLM("m", running.base_url, max_retries=0).complete(REQUESTS[0])
    assert "\n" not in str(caught.value)
    assert app.state.stats.chat_requests == 1


def test_backend_error_is_an_openai_style_500() -> None:
    with serve_in_thread(make_app(ScriptedLLM(failures={"poison": 2}))) as running:
        raw = httpx.post(
            f"{running.base_url}/chat/completions", json={"messages": [{"role": "user", "content": "poison"}]}
        )
        with pytest.raises(BackendError, match=r"500.*scripted failure"):
            OpenAILLM("m", running.base_url, max_retries=0).complete(CompletionRequest((Message("user", "poison"),)))
        # The failures are spent, so a retrying client now gets an answer.
        assert OpenAILLM("m", running.base_url).complete(CompletionRequest((Message("user", "poison"),))).text
    assert raw.status_code == 500
    assert raw.json()["error"]["type"] == "backend_error"
    assert "scripted failure" in raw.json()["error"]["message"]


def test_connection_refused_is_a_backend_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago, with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(BackendError, match="Connection"):
        OpenAILLM("m", f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5).complete(REQUESTS[0])


def test_embeddings_equal_hashing_embedder(server) -> None:
    texts = ["the cat sat on the mat", "a dog", "", "Cat sat!"]
    embedder = OpenAIEmbedder("hashing", server.base_url)
    got = embedder.embed(texts)
    want = HashingEmbedder().embed(texts)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert embedder.dim == 64
    assert embedder.embed([]).shape == (0, 64)


def test_dim_is_probed_when_read_first(server) -> None:
    embedder = OpenAIEmbedder("hashing", server.base_url)
    assert embedder.dim == 64
    assert isinstance(embedder, EmbeddingBackend)


def test_embeddings_are_batched_and_normalised(server) -> None:
    texts = [f"word{i} shared" for i in range(7)]
    got = OpenAIEmbedder("hashing", server.base_url, batch_size=3).embed(texts)
    np.testing.assert_allclose(got, HashingEmbedder().embed(texts), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)


def test_a_wrong_declared_dim_is_a_backend_error(server) -> None:
    with pytest.raises(BackendError, match="64-d"):
        OpenAIEmbedder("hashing", server.base_url, dim=32).embed(["x"])


def test_the_sdk_default_base64_embeddings_work(server) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.base_url, api_key="unused")
    row = client.embeddings.create(model="hashing", input="the cat").data[0].embedding
    np.testing.assert_allclose(row, HashingEmbedder().embed(["the cat"])[0], atol=1e-6)


def test_missing_settings_name_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(BackendUnavailable, match="DELTAMEM_OPENAI_MODEL"):
        OpenAILLM(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(BackendUnavailable, match="DELTAMEM_OPENAI_BASE_URL"):
        OpenAILLM("m")
    with pytest.raises(BackendUnavailable, match="DELTAMEM_OPENAI_EMBED_MODEL"):
        OpenAIEmbedder(base_url="http://127.0.0.1:1/v1")
    with pytest.raises(BackendUnavailable, match="DELTAMEM_OPENAI_EMBED_BASE_URL"):
        OpenAIEmbedder("e")


def test_settings_fall_back_to_the_environment(monkeypatch: pytest.MonkeyPatch, server) -> None:
    monkeypatch.setenv("DELTAMEM_OPENAI_MODEL", "from-env")
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
    llm = OpenAILLM()
    assert llm.model_id == f"openai:from-env@{server.base_url}"  # trailing slash dropped: the id stays stable
    assert llm.complete(REQUESTS[0]).text == ScriptedLLM().complete(REQUESTS[0]).text
    monkeypatch.setenv("DELTAMEM_OPENAI_EMBED_MODEL", "embed-env")
    assert OpenAIEmbedder().model_id == f"openai:embed-env@{server.base_url}"


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("chat/completions", {"messages": "not a list"}),
        ("chat/completions", {}),
        ("chat/completions", {"messages": [{"role": "user"}]}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}),
        ("chat/completions", {"messages": [{"role": "user", "content": "hi"}], "stop": [1, 2]}),
        ("embeddings", {"input": []}),
        ("embeddings", {"input": [1, 2]}),
    ],
)
def test_malformed_bodies_get_422(server, path: str, body: dict) -> None:
    assert httpx.post(f"{server.base_url}/{path}", json=body).status_code == 422


def test_a_422_is_not_retried_and_names_the_status(server) -> None:
    # Temperature 5 passes the client but not the server's validation.
    request = CompletionRequest((Message("user", "hi"),), temperature=5.0)
    with pytest.raises(BackendError, match="422"):
        OpenAILLM("m", server.base_url).complete(request)


def test_models_lists_the_served_names(server) -> None:
    models = httpx.get(f"{server.base_url}/models").json()
    assert [m["id"] for m in models["data"]] == ["scripted-v1", "hashing-64"]
