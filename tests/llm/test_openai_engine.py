"""A view maintained through the OpenAI-compatible backend, over real HTTP, equals the same view on the test backend."""

from __future__ import annotations

import pytest

import deltamem as dm
from deltamem.llm.openai import OpenAILLM
from deltamem.llm.openai_server import make_app, serve_in_thread
from deltamem.llm.scripted import HashingEmbedder, ScriptedLLM
from tests.helpers import scripted_db

pytestmark = pytest.mark.timeout(60)


def build(db: dm.Database) -> dm.View:
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_filter("{text} is interesting").sem_map("Summarise {text}", out="s"))
    docs.upsert([{"id": i, "text": f"passage {i}"} for i in range(8)])
    docs.upsert({"id": 3, "text": "passage three, revised"})
    docs.delete(5)
    return view


def test_openai_backend_maintains_the_same_view_as_the_test_backend():
    with serve_in_thread(make_app(ScriptedLLM(), HashingEmbedder())) as server:
        llm = OpenAILLM(model="scripted", base_url=server.base_url, api_key="k", max_retries=0)
        over_http = scripted_db(llm=llm)
        rows_http = build(over_http).rows(fresh=True).rows
        usage_http = over_http.usage()
    local = scripted_db()
    rows_local = build(local).rows(fresh=True).rows
    usage_local = local.usage()
    assert rows_http == rows_local and rows_http
    # token counts come from the server's usage fields, which report what the scripted backend counted
    assert (usage_http.calls, usage_http.prompt_tokens, usage_http.output_tokens) == (
        usage_local.calls, usage_local.prompt_tokens, usage_local.output_tokens)


def test_connect_takes_openai_settings_by_name():
    with serve_in_thread(make_app(ScriptedLLM())) as server:
        db = dm.connect(":memory:", llm="openai", embedder="test", background=False,
                        llm_options={"model": "scripted", "base_url": server.base_url, "api_key": "k"})
        assert db.llm.model_id == f"openai:scripted@{server.base_url}"
        docs = db.table("docs", key="id")
        docs.upsert({"id": 1, "text": "hello"})
        view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
        assert view.rows(fresh=True)[0]["s"]
        db.close()
