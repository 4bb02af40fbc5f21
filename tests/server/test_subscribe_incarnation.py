"""A subscription stream follows one view, not its name: DROP and CREATE of the same name end it (real HTTP)."""

from __future__ import annotations

import threading
import time

import httpx

import deltamem as dm
from deltamem.sql import execute
from tests.server.sse import Event, events


def test_a_stream_ends_with_dropped_when_its_view_is_dropped_and_created_again(tmp_path, serve):
    db = dm.connect(str(tmp_path / "s.db"), llm="test", embedder="test", poll_interval=0.2)
    try:
        execute(db, """
            CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT);
            INSERT INTO docs VALUES ('a', 'alpha'), ('b', 'beta');
            CREATE CONTINUOUS VIEW v AS SELECT id, SEM_MAP('Sum up {text}') AS s FROM docs;
        """)
        db.maintain(timeout=30)
        server = serve(db)
        got: list[Event] = []

        def follow() -> None:
            with httpx.Client(base_url=server.url) as own, \
                    own.stream("GET", "/views/v/subscribe", params={"after": -1}, timeout=30) as response:
                got.extend(events(response))  # until the server ends the stream

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        deadline = time.monotonic() + 20
        while len(got) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [(e.event, e.data["key"], sorted(e.data["row"])) for e in got] == [
            ("change", "a", ["id", "s"]), ("change", "b", ["id", "s"])]

        with httpx.Client(base_url=server.url, timeout=20) as client:
            assert client.post("/sql", json={"sql": "DROP VIEW v"}).status_code == 200
            again = "CREATE CONTINUOUS VIEW v AS SELECT id, SEM_MAP('Name {text}') AS t FROM docs"
            assert client.post("/sql", json={"sql": again}).status_code == 200
            while client.get("/views/v").json()["version"] < db.version:  # the new view is built
                assert time.monotonic() < deadline + 20, "the new view was not built"
                time.sleep(0.05)
            new_rows = client.get("/views/v").json()["rows"]
        assert sorted(row["id"] for row in new_rows) == ["a", "b"] and all("t" in row for row in new_rows)

        follower.join(15)
        assert not follower.is_alive(), f"the stream went on after its view was dropped: {got}"
        assert [e.event for e in got] == ["change", "change", "dropped"]
        assert got[-1].data == {"view": "v"}
        assert not any("t" in e.data.get("row", {}) for e in got), "the stream delivered the new view's rows"
    finally:
        db.close()
