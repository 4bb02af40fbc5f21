"""A PostgreSQL restart mid-stream: a write while the server is down fails with ``StoreUnavailable`` naming it and
saying what to do; once it is back, writes go on over new connections, background maintenance catches up by itself,
and nothing committed before is lost. The test starts (and restarts) its own server."""

from __future__ import annotations

import time

import pytest

import deltamem as dm
from deltamem.errors import MaintenanceError, StoreUnavailable
from deltamem.llm import lazy_embedder, lazy_llm
from deltamem.store.postgres import PostgresStore
from tests.pg import throwaway_server


@pytest.fixture
def own_server():
    with throwaway_server("deltamem-pg-restart-") as server:  # its own: the test stops and starts it
        yield server


def test_writes_fail_clearly_while_the_server_is_down_and_everything_goes_on_after_it_restarts(own_server):
    dsn = own_server.new_database()
    store = PostgresStore(dsn, connect_timeout=2)
    db = dm.Database(store, llm=lazy_llm("test"), embedder=lazy_embedder("test"), poll_interval=0.05)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("gists", docs.sem_map("Summarise {text}", out="gist"))
    docs.upsert([{"id": i, "text": f"passage {i}"} for i in range(20)])
    assert len(view.rows(fresh=True, timeout=30)) == 20

    own_server.stop()
    with pytest.raises(StoreUnavailable, match=r"PostgreSQL at 'postgresql://postgres@127\.0\.0\.1:\d+/\w+' cannot "
                                                r"be reached .*try again once it is back"):
        docs.upsert({"id": 100, "text": "written while the server is down"})
    own_server.start_again()

    deadline = time.monotonic() + 30
    while True:  # the pool reconnects in the background: a write may still find it reconnecting
        try:
            docs.upsert([{"id": i, "text": f"passage {i}"} for i in range(20, 40)])
            break
        except StoreUnavailable:
            assert time.monotonic() < deadline, "writes did not resume within 30 s of the restart"
            time.sleep(0.2)
    while True:  # maintenance failed while the server was down; it tries again after its backoff, and catches up
        try:
            rows = view.rows(fresh=True, timeout=60)
            break
        except MaintenanceError as exc:
            assert "cannot be reached" in str(exc) and time.monotonic() < deadline + 30, exc
            time.sleep(0.2)
    assert sorted(row["id"] for row in rows) == list(range(40))  # the 20 from before the restart are all there
    assert rows.error is None and db.maintainer.error is None
    assert db.table("docs").rows() == [{"id": i, "text": f"passage {i}"} for i in range(40)]
    db.close()
