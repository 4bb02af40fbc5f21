"""The HTTP API over real HTTP: uvicorn on a free loopback port, httpx as the client."""

from __future__ import annotations

import json
import re
import threading
import time

import httpx
import pytest
from starlette.routing import Mount
from typer.testing import CliRunner

from deltamem.cli import app as cli
from deltamem.errors import ConfigError
from deltamem.server import create_app
from deltamem.server.command import check_binding, is_loopback
from tests.server.conftest import LiveServer
from tests.server.sse import events, take


def wait_for_version(client: httpx.Client, view: str, version: int, timeout: float = 20.0) -> dict:
    """GET the view until it reflects ``version``."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/views/{view}").json()
        if body["version"] >= version:
            return body
        assert time.monotonic() < deadline, f"{view} stuck at version {body['version']}, wanted {version}"
        time.sleep(0.05)


@pytest.fixture
def client(seeded_db, serve):
    server = serve(seeded_db)
    with httpx.Client(base_url=server.url, timeout=20) as http:
        yield http


def test_changes_commit_one_version_and_views_follow(client, seeded_db):
    before = client.get("/views/summaries").json()
    answer = client.post("/tables/docs/changes", json=[
        {"op": "upsert", "row": {"id": "returns", "text": "Returns are free for members."}},
        {"op": "upsert", "row": {"id": "support", "text": "Support answers chats around the clock."}},
        {"op": "delete", "key": "shipping"},
    ])
    assert answer.status_code == 200, answer.text
    applied = answer.json()
    assert applied == {"version": before["version"] + 1, "inserted": 1, "updated": 1, "deleted": 1, "unchanged": 0}

    after = wait_for_version(client, "summaries", applied["version"])
    assert sorted(row["id"] for row in after["rows"]) == ["refunds", "returns", "support"]
    assert after["columns"] == ["id", "text", "summary"]
    assert after["lag_versions"] == 0 and after["latest_version"] == applied["version"]
    old = client.get("/views/summaries", params={"as_of": before["version"]}).json()
    assert old["rows"] == before["rows"] and old["version"] == before["version"]
    ahead = client.get("/views/summaries", params={"as_of": applied["version"] + 5})
    assert ahead.status_code == 400 and "ahead" in ahead.json()["detail"]

    log = client.get("/log", params={"limit": 2}).json()
    assert log[0]["version"] == applied["version"]
    assert log[0]["tables"] == {"docs": {"inserted": 1, "updated": 1, "deleted": 1, "expired": 0}}


def test_debezium_events_apply_as_one_version(client):
    answer = client.post("/tables/docs/changes", json=[
        {"op": "c", "after": {"id": "faq", "text": "See the FAQ."}, "source": {"db": "crm"}, "ts_ms": 1},
        {"op": "u", "before": {"id": "support"}, "after": {"id": "help", "text": "Help is online."}},
        {"op": "d", "before": {"id": "refunds", "text": "old"}},
    ])
    assert answer.status_code == 200, answer.text
    assert answer.json()["inserted"] == 2 and answer.json()["deleted"] == 2  # the u moved 'support' to 'help'
    rows = wait_for_version(client, "summaries", answer.json()["version"])["rows"]
    assert sorted(r["id"] for r in rows) == ["faq", "help", "shipping"]


@pytest.mark.parametrize("body, status, message", [
    ([{"op": "upsert", "row": {"id": "ok", "text": "fine"}}, {"op": "upsert", "row": {"id": "x", "txt": "typo"}}],
     400, "change 1: the row for table 'docs' has unknown column 'txt'. Did you mean 'text'?"),
    ([{"op": "upsert", "row": {"id": "ok", "text": "fine"}}, {"op": "delete", "key": 7}],
     400, "change 1: key 'id' is text, got 7"),
    ([{"op": "upsert", "row": {"text": "no key"}}], 400, "change 0:"),
    ([{"op": "d", "before": None}], 400, "change 0: op 'd' needs 'before' with the key column 'id'"),
    ([{"op": "merge", "row": {}}], 422, "op"),
    ([], 422, "at least 1"),
    ({"op": "upsert"}, 422, "list"),
])
def test_bad_changes_are_refused_and_change_nothing(client, seeded_db, body, status, message):
    version = seeded_db.version
    answer = client.post("/tables/docs/changes", json=body)
    assert answer.status_code == status, answer.text
    assert message in json.dumps(answer.json()["detail"]) if status == 422 else message in answer.json()["detail"]
    assert seeded_db.version == version
    assert sorted(seeded_db.table("docs").get(k) is not None for k in ("ok", "refunds")) == [False, True]


def test_nan_and_infinity_in_changes_are_refused_and_views_and_metrics_keep_answering(client, seeded_db):
    scores = seeded_db.table("scores", key="id", columns={"id": "text", "score": "float"})
    scores.upsert({"id": "a", "score": 0.5})
    seeded_db.view("rated", scores.sem_map("Rate {score}", out="rating"))  # would copy a NaN into its rows
    seeded_db.maintain(timeout=30)
    version = seeded_db.version
    for literal in ("NaN", "Infinity", "-Infinity"):  # not JSON, but Python's parser (and so Starlette's) reads them
        body = f'[{{"op": "upsert", "row": {{"id": "b", "score": 1.5}}}}, ' \
               f'{{"op": "upsert", "row": {{"id": "c", "score": {literal}}}}}]'
        answer = client.post("/tables/scores/changes", content=body, headers={"content-type": "application/json"})
        assert answer.status_code == 400, answer.text
        assert "change 1: the row for table 'scores': column 'score' holds" in answer.json()["detail"]
        assert "not a finite number" in answer.json()["detail"]
    seeded_db.maintain(timeout=30)
    assert seeded_db.version == version and scores.rows() == [{"id": "a", "score": 0.5}]
    assert client.get("/views").status_code == 200 and client.get("/metrics").status_code == 200


def test_unknown_table_malformed_json_and_oversized_bodies(seeded_db, serve):
    server = serve(seeded_db, max_body_bytes=2048)
    version = seeded_db.version
    with httpx.Client(base_url=server.url) as http:
        missing = http.post("/tables/dcos/changes", json=[{"op": "delete", "key": "a"}])
        assert missing.status_code == 404 and "Did you mean 'docs'?" in missing.json()["detail"]
        broken = http.post("/tables/docs/changes", content=b'[{"op": "upsert", "row": {', 
                           headers={"content-type": "application/json"})
        assert broken.status_code == 422 and "JSON decode error" in broken.text
        big = [{"op": "upsert", "row": {"id": f"r{i}", "text": "x" * 100}} for i in range(40)]
        assert http.post("/tables/docs/changes", json=big).status_code == 413
        assert http.get("/views/nope").status_code == 404
    assert seeded_db.version == version


def test_sql_runs_one_statement_with_bound_parameters(client, seeded_db):
    hostile = "x'); DELETE FROM docs; --"
    insert = client.post("/sql", json={"sql": "INSERT INTO docs (id, text) VALUES (?, ?)", "params": ["evil", hostile]})
    assert insert.status_code == 200, insert.text
    assert insert.json()["status"] == "INSERT 1"
    assert seeded_db.table("docs").get("evil") == {"id": "evil", "text": hostile}
    assert len(seeded_db.table("docs").rows()) == 4  # nothing was deleted: the value was bound, not spliced
    wait_for_version(client, "summaries", insert.json()["version"])
    select = client.post("/sql", json={"sql": "SELECT id, text FROM summaries WHERE id = :id",
                                       "params": {"id": "evil"}}).json()
    assert select["columns"] == ["id", "text"] and select["rows"] == [["evil", hostile]]

    two = client.post("/sql", json={"sql": "SHOW TABLES; SHOW VIEWS"})
    assert two.status_code == 400 and "exactly one statement; got 2" in two.json()["detail"]
    typo = client.post("/sql", json={"sql": "SELEC * FROM docs"})
    assert typo.status_code == 400 and "line 1, column 1" in typo.json()["detail"]
    unknown = client.post("/sql", json={"sql": "SELECT * FROM summaris"})
    assert unknown.status_code == 404 and "summaries" in unknown.json()["detail"]
    version = seeded_db.version
    restricted = client.post("/sql", json={"sql": "DROP TABLE docs"})
    assert restricted.status_code == 409 and 'view "summaries" reads table "docs"' in restricted.json()["detail"]
    assert seeded_db.version == version and "docs" in seeded_db.tables()


def test_explain_gives_dependencies_decisions_and_the_heat_map(client):
    report = client.get("/views/answers/rows/q1/explain").json()
    assert report["row"]["answer"] == "Refunds are issued within 14 days."
    [dependencies] = report["dependencies"].values()
    attribution = dependencies["attribution"]
    assert attribution["output_sentences"] == ["Refunds are issued within 14 days."]
    shares = dict(zip([c if isinstance(c, str) else json.dumps(c) for c in attribution["context"]],
                      attribution["matrix"][0]))
    assert max(shares.values()) == 1.0 and sum(shares.values()) == pytest.approx(1.0)
    assert any("Refunds are issued" in json.dumps(p) for p in dependencies["provenance"])
    assert [(d["strategy"], d["reason"]) for d in report["decisions"]] == [("full", "the view was built")]

    png = client.get("/views/answers/rows/q1/heatmap.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content.startswith(b"\x89PNG\r\n\x1a\n")
    none = client.get("/views/summaries/rows/refunds/heatmap.png")
    assert none.status_code == 404 and "no attention attribution" in none.json()["detail"]
    assert client.get("/views/answers/rows/q9/explain").status_code == 404
    quoted = client.get('/views/answers/rows/"q1"/explain')
    assert quoted.status_code == 200 and quoted.json()["key"] == "q1"

    edit = client.post("/tables/docs/changes", json=[{"op": "upsert", "row": {"id": "support", "text": "Closed."}}])
    wait_for_version(client, "answers", edit.json()["version"])
    decision = client.get("/views/answers/rows/q1/explain").json()["decisions"][-1]
    assert (decision["version"], decision["strategy"], decision["calls"], decision["evidence"]) == (
        edit.json()["version"], "skip", 0, 0.0)


def test_subscription_resumes_after_disconnect_without_loss_or_repeat(client, seeded_db):
    start = seeded_db.view("summaries").version

    def write(key: str, text: str) -> int:
        answer = client.post("/tables/docs/changes", json=[{"op": "upsert", "row": {"id": key, "text": text}}])
        assert answer.status_code == 200, answer.text
        return answer.json()["version"]

    write("a1", "first")
    write("refunds", "Refunds take 30 days.")  # an update: two change rows (-1, +1) in one version
    received = take(client, "/views/summaries/subscribe", 2, params={"after": start})
    # Disconnected after the first two rows: the update's +1 is still unread. Write more while away.
    write("a2", "second")
    last = write("a3", "third")
    wait_for_version(client, "summaries", last)
    received += take(client, "/views/summaries/subscribe", 3, headers={"Last-Event-ID": received[-1].id})

    history = seeded_db.view("summaries").changes(start + 1, last)
    assert [(e.data["version"], e.data["diff"], e.data["key"], e.data["row"]) for e in received] == [
        (c.version, c.diff, c.key, c.row) for c in history]
    assert len({e.id for e in received}) == len(received) == 5
    assert [e.event for e in received] == ["change"] * 5
    bad = client.get("/views/summaries/subscribe", headers={"Last-Event-ID": "seven"})
    assert bad.status_code == 400 and "Bad event id" in bad.json()["detail"]


def test_a_subscriber_that_does_not_read_blocks_no_writer(client, seeded_db):
    start = seeded_db.view("summaries").version
    with client.stream("GET", "/views/summaries/subscribe", params={"after": start}) as idle:
        assert idle.status_code == 200
        began = time.monotonic()
        versions = [client.post("/tables/docs/changes", json=[{"op": "upsert", "row": {"id": f"w{i}", "text": "x"}}])
                    .json()["version"] for i in range(30)]
        assert time.monotonic() - began < 15
        wait_for_version(client, "summaries", versions[-1])
    caught_up = take(client, "/views/summaries/subscribe", 30, params={"after": start})
    assert [e.data["key"] for e in caught_up] == [f"w{i}" for i in range(30)]


# The page, its files, the spec and its docs pages need no token.
PUBLIC_PATHS = {"/", "/openapi.json", "/static", "/docs", "/redoc", "/docs/oauth2-redirect", "/docs/assets"}
MOUNT_FILES = {"/static": "app.js", "/docs/assets": "swagger-ui.css"}  # a file each mount serves


def route_requests(app) -> list[tuple[str, str]]:
    """(method, path) for every route of ``app``, path parameters filled with a dummy value, a mount's with a file."""
    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            found.append(("GET", f"{route.path}/{MOUNT_FILES[route.path]}"))
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        found.extend((method, path) for method in sorted(route.methods))
    return found


def assert_every_api_route_needs_the_token(app, url: str) -> None:
    walked = set()
    with httpx.Client(base_url=url) as http:
        for method, path in route_requests(app):
            walked.add(path)
            public = path in PUBLIC_PATHS or path.startswith(("/static/", "/docs/assets/"))
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
                answer = http.request(method, path, headers=headers, json=[{"op": "delete", "key": "refunds"}])
                if public:
                    assert answer.status_code == 200, (method, path, headers)
                    continue
                assert answer.status_code == 401, (method, path, headers)
                assert answer.headers["www-authenticate"] == "Bearer"
    assert {"/sql", "/tables/x/changes", "/views/x/subscribe", "/metrics", "/static/app.js"} <= walked


def test_a_token_guards_every_api_route_but_the_page(seeded_db):
    app = create_app(seeded_db, token="s3cret")
    server = LiveServer(app)
    try:
        assert_every_api_route_needs_the_token(app, server.url)
        assert seeded_db.table("docs").get("refunds") is not None
        with httpx.Client(base_url=server.url) as http:
            assert http.get("/views", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    finally:
        server.stop()


def test_usage_history_and_metrics_agree_with_the_store(client, seeded_db):
    version = client.post("/tables/docs/changes", json=[{"op": "upsert", "row": {"id": "m", "text": "More."}}]).json()
    wait_for_version(client, "answers", version["version"])
    usage = client.get("/usage").json()
    paid = seeded_db.usage()
    assert usage["total"]["calls"] == paid.calls > 0
    history = client.get("/usage/history").json()
    assert history[-1]["paid_calls"] == paid.calls
    assert history[-1]["full_calls"] == paid.full_recompute_calls
    assert all(a["version"] < b["version"] for a, b in zip(history, history[1:]))
    text = client.get("/metrics").text
    assert f'deltamem_llm_calls_total{{view="summaries"}} {float(paid.by_view["summaries"].calls)}' in text
    assert 'deltamem_view_lag_versions{view="answers"} 0.0' in text
    client.get("/views/nope")
    assert 'deltamem_http_errors_total{status="404"}' in client.get("/metrics").text


def test_serve_refuses_a_public_address_without_a_token(tmp_path):
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org")
    check_binding("0.0.0.0", "t0ken")
    with pytest.raises(ConfigError, match="set a token with --token or DELTAMEM_TOKEN"):
        check_binding("0.0.0.0", None)
    result = CliRunner().invoke(cli, ["serve", str(tmp_path / "x.db"), "--host", "0.0.0.0", "--llm", "test"],
                                env={"DELTAMEM_TOKEN": ""})
    assert result.exit_code == 1 and "exposes the database" in result.output
    assert not (tmp_path / "x.db").exists()


def test_sql_over_http_cannot_read_server_files(client, seeded_db):
    version = seeded_db.version
    copy = client.post("/sql", json={"sql": "COPY docs FROM '/etc/passwd' WITH (format = 'csv')"})
    assert copy.status_code == 400 and "COPY" in copy.json()["detail"]
    assert seeded_db.version == version


def test_dropping_a_view_ends_its_subscriptions(client, seeded_db):
    start = seeded_db.view("summaries").version
    client.post("/tables/docs/changes", json=[{"op": "upsert", "row": {"id": "z", "text": "last"}}])
    got: list = []

    def follow() -> None:
        with httpx.Client(base_url=str(client.base_url)) as own, \
                own.stream("GET", "/views/summaries/subscribe", params={"after": start}, timeout=20) as response:
            got.extend(events(response))  # until the server ends the stream

    follower = threading.Thread(target=follow)
    follower.start()
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.post("/sql", json={"sql": "DROP VIEW summaries"}).status_code == 200
    follower.join(20)
    assert not follower.is_alive(), "the stream did not end when its view was dropped"
    assert [(e.event, e.data.get("key")) for e in got] == [("change", "z"), ("dropped", None)]
    assert client.get("/views/summaries/subscribe").status_code == 404
    assert [v["name"] for v in client.get("/views").json()] == ["answers"]


def test_ctrl_c_stops_the_server_while_a_subscription_is_open(tmp_path):
    import signal
    import subprocess
    import sys

    from deltamem.bench.serve_load import free_port

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "deltamem", "serve", str(tmp_path / "s.db"), "--port", str(port),
                               "--llm", "test", "--embedder", "test"], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.post(f"{url}/sql", json={"sql": "CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT)"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        view = "CREATE CONTINUOUS VIEW v AS SELECT id, SEM_MAP('Sum up {text}') AS s FROM docs"
        httpx.post(f"{url}/sql", json={"sql": view}).raise_for_status()
        with httpx.stream("GET", f"{url}/views/v/subscribe", timeout=30) as open_subscription:
            assert open_subscription.status_code == 200
            server.send_signal(signal.SIGINT)
            began = time.monotonic()
            server.wait(timeout=15)
            assert time.monotonic() - began < 10  # a subscription never ends by itself; the server cuts it after 3 s
    finally:
        server.kill()
        server.wait()


def test_view_list_counts_rows_and_failed_rows_in_the_store(seeded_db):
    from deltamem.server import reads

    docs = seeded_db.table("docs")
    docs.upsert({"id": "x", "text": "fine"})
    seeded_db.maintain(timeout=30)
    [summaries] = [v for v in reads.views(seeded_db) if v.name == "summaries"]
    assert (summaries.rows, summaries.error_rows, summaries.lag_versions) == (4, 0, 0)
    assert seeded_db.store.count_view_rows("summaries") == (4, 0)
    assert seeded_db.lag("summaries") == (0, 0.0)


def test_changes_that_change_nothing_commit_no_version(client, seeded_db):
    version = seeded_db.version
    same = seeded_db.table("docs").get("refunds")
    answer = client.post("/tables/docs/changes", json=[{"op": "upsert", "row": same},
                                                       {"op": "delete", "key": "no-such-doc"}])
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"version": None, "inserted": 0, "updated": 0, "deleted": 0, "unchanged": 2}
    sql = client.post("/sql", json={"sql": "UPDATE docs SET text = text"}).json()
    assert sql["status"] == "UPDATE 3" and sql["version"] is None
    assert seeded_db.version == version and client.get("/log", params={"limit": 1}).json()[0]["version"] == version


def test_posting_changes_to_a_view_says_it_is_a_view(client, seeded_db):
    version = seeded_db.version
    answer = client.post("/tables/summaries/changes", json=[{"op": "delete", "key": "refunds"}])
    assert answer.status_code == 404
    detail = answer.json()["detail"]
    assert detail.startswith('"summaries" is a view, not a table') and "table 'docs'" in detail
    assert "does not exist" not in detail and seeded_db.version == version


def test_explain_over_http_gives_each_key_once_encoded(client):
    report = client.get("/views/answers/rows/q1/explain").json()
    assert report["key"] == "q1" and {d["key"] for d in report["decisions"]} == {"q1"}
    [dependencies] = report["dependencies"].values()
    assert {p["doc"] for p in dependencies["provenance"]} <= {"refunds", "shipping", "support"}
    read = client.get("/views/summaries").json()
    assert read["keys"] == ["refunds", "shipping", "support"]


def test_the_api_docs_are_served_from_here_to_an_allowed_host(seeded_db, serve):
    server = serve(seeded_db, token="s3cret", allowed_hosts=["box.lan"])
    with httpx.Client(base_url=server.url) as http:
        page = http.get("/docs")  # no token: the docs are public, like the page; the routes they call are not
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/docs/assets/swagger-ui-bundle.js" in page.text and "/openapi.json" in page.text
        assert "cdn.jsdelivr.net" not in page.text  # nothing loaded from another site: it works offline
        script = http.get("/docs/assets/swagger-ui-bundle.js")
        assert script.status_code == 200 and "SwaggerUIBundle" in script.text
        assert http.get("/docs/assets/swagger-ui.css").status_code == 200
        assert http.get("/redoc").status_code == 200
        spec = http.get("/openapi.json").json()
        assert "/tables/{table}/changes" in spec["paths"] and "/docs" not in spec["paths"]
        assert http.get("/docs", headers={"Host": "box.lan:8000"}).status_code == 200
        assert http.get("/docs", headers={"Host": "rebind.attacker.example"}).status_code == 400
        assert http.get("/views").status_code == 401
