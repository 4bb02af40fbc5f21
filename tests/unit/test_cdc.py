"""Change data capture from PostgreSQL (``deltamem.cdc``, ``deltamem cdc``): the deltamem table equals the source
table, each source change is applied once, across stops and SIGKILLs, and every unusable source is one clear error.

The sources are databases of ``logical_postgres_server`` (``wal_level=logical``). Their writers commit with
``synchronous_commit=on``: the throwaway server runs with it off, and logical decoding reads only flushed WAL, so a
drain (``--once``) right after a write would not see it yet.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing

import psycopg
import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.cdc import Follower, follow
from deltamem.cdc.decoding import UNCHANGED, parse_change, to_value
from deltamem.cli import app
from deltamem.errors import CDCError, ConfigError
from deltamem.store.postgres_schema import SCHEMA_VERSION
from tests.children import ENV


@pytest.fixture
def source(logical_postgres_server) -> Iterator[str]:
    """The DSN of a new source database; its replication slots are dropped afterwards (they are server-wide)."""
    dsn = logical_postgres_server.new_database()
    yield dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        for _ in range(100):  # a killed follower's session may hold its slot a moment longer
            held = conn.execute("SELECT slot_name, active_pid FROM pg_replication_slots "
                                "WHERE database = current_database()").fetchall()
            for slot, pid in held:
                if pid is None:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
            if not held:
                break
            time.sleep(0.1)


def writer(dsn: str) -> psycopg.Connection:
    return psycopg.connect(dsn, autocommit=True, options="-c synchronous_commit=on")


def source_rows(conn: psycopg.Connection, table: str, key: str = "id") -> dict:
    """The source table's rows by key, read as the follower reads them (each column's text, by its type)."""
    cursor = conn.execute(f"SELECT * FROM {table}")
    names = [column.name for column in cursor.description]
    types = dict(conn.execute("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = "
                              "%s::regclass AND attnum > 0", (table,)).fetchall())
    texts = conn.execute("SELECT " + ", ".join(f'"{n}"::text' for n in names) + f" FROM {table}").fetchall()
    cursor.close()
    rows = [{n: to_value(v, types[n]) for n, v in zip(names, row)} for row in texts]
    return {row[key]: row for row in rows}


def target_rows(db: dm.Database, table: str) -> dict:
    return {row[db.table(table).key]: row for row in db.table(table).rows()}


# --- reading test_decoding ---------------------------------------------------------------------------------------
def test_parse_change_reads_quotes_nulls_old_keys_and_types():
    change = parse_change('table "My Schema"."Docs ""x""": UPDATE: old-key: id[integer]:1 new-tuple: '
                          'id[integer]:2 "Title"[text]:\'it\'\'s a\nline\' t[text]:\'null\' n[bigint]:null '
                          'a[text[]]:\'{a,"b c"}\' big[text]:unchanged-toast-datum')
    assert change.table == ("My Schema", 'Docs "x"')
    assert change.op == "UPDATE" and change.old == {"id": "1"}
    assert change.new == {"id": "2", "Title": "it's a\nline", "t": "null", "n": None, "a": '{a,"b c"}',
                          "big": UNCHANGED}
    assert parse_change("table public.docs: DELETE: id[integer]:7").old == {"id": "7"}
    assert parse_change("table public.docs: DELETE: (no-tuple data)").old is None
    assert parse_change("table public.docs: TRUNCATE: (no-flags)").op == "TRUNCATE"
    with pytest.raises(ValueError, match="not a test_decoding change"):
        parse_change("BEGIN 12")


def test_values_convert_by_column_type():
    assert to_value("12", "bigint") == 12 and to_value("-1.5e+20", "double precision") == -1.5e20
    assert to_value("NaN", "numeric") is None and to_value("Infinity", "double precision") is None
    assert to_value("false", "boolean") is False and to_value("t", "boolean") is True
    assert to_value('[1, {"a": null}]', "jsonb") == [1, {"a": None}]
    assert to_value("2020-01-01 00:00:00", "timestamp without time zone") == "2020-01-01 00:00:00"
    assert to_value(None, "integer") is None


# --- mirroring ---------------------------------------------------------------------------------------------------
def test_copy_then_changes_mirror_the_source_and_a_view_over_it_is_maintained(source, new_store_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, title text, n bigint, flag boolean, doc jsonb, "
                "score double precision, price numeric, at timestamp, tags text[])")
    src.execute("INSERT INTO docs VALUES (1, 'it''s', 5, true, '{\"a\": 1}', 0.5, 1.50, '2020-01-01', '{a,b}'), "
                "(2, 'two', NULL, false, NULL, NULL, NULL, NULL, NULL), (3, 'three', 3, true, '[]', 1, 2, NULL, "
                "'{}')")
    with dm.connect(new_store_path(), llm="test", embedder="test", background=False) as db:
        with Follower(db, source, table="public.docs", into="docs") as follower:
            copied = follower.poll()
            assert copied.copied and copied.changes == 3 and copied.version is not None
            assert target_rows(db, "docs")[1] == {"id": 1, "title": "it's", "n": 5, "flag": True, "doc": {"a": 1},
                                                  "score": 0.5, "price": 1.5, "at": "2020-01-01 00:00:00",
                                                  "tags": "{a,b}"}
            db.view("gists", db.table("docs").sem_map("Sum up {title}", out="gist"))
            src.execute("UPDATE docs SET title = 'a''b\nc', n = n + 1 WHERE id = 1")
            src.execute("UPDATE docs SET id = 20 WHERE id = 2")  # a key change: a delete and an insert
            src.execute("DELETE FROM docs WHERE id = 3")
            src.execute("INSERT INTO docs (id, title) VALUES (4, repeat('long ', 50000))")  # stored in TOAST
            src.execute("UPDATE docs SET n = 9 WHERE id = 4")  # leaves the TOASTed title unchanged
            with src.transaction():
                src.execute("INSERT INTO docs (id, title) VALUES (5, 'five')")
                src.execute("UPDATE docs SET title = 'five!' WHERE id = 5")
            follower.run(once=True)
            assert target_rows(db, "docs") == source_rows(src, "docs")
            assert len(target_rows(db, "docs")[4]["title"]) == 250000
            db.maintain()
            assert {row["id"] for row in db.view("gists").rows()} == {1, 4, 5, 20}
            src.execute("TRUNCATE docs")
            src.execute("INSERT INTO docs (id, title) VALUES (7, 'seven')")
            follower.run(once=True)
            assert target_rows(db, "docs") == source_rows(src, "docs") and list(target_rows(db, "docs")) == [7]
            db.maintain()
            assert [row["id"] for row in db.view("gists").rows()] == [7]


def test_a_follow_resumes_where_it_stopped_without_copying_again(source, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, title text)")
    src.execute("INSERT INTO docs VALUES (1, 'one')")
    path = str(tmp_path / "app.db")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        follow(db, source, table="docs", into="docs", once=True)
        first = db.version
    src.execute("INSERT INTO docs VALUES (2, 'two')")
    src.execute("UPDATE docs SET title = 'uno' WHERE id = 1")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        with Follower(db, source, table="docs", into="docs") as follower:
            result = follower.poll()
            assert not result.copied and (result.transactions, result.changes) == (2, 2)
            assert db.version == first + 1  # one version for the poll: no second copy
            assert target_rows(db, "docs") == source_rows(src, "docs")
            assert follower.poll().drained


def test_a_crash_between_the_commit_and_the_slot_advance_applies_nothing_twice(source, tmp_path, monkeypatch):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, n int)")
    path = str(tmp_path / "app.db")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        follow(db, source, table="docs", into="docs", once=True)
        src.execute("INSERT INTO docs VALUES (1, 0)")
        src.execute("UPDATE docs SET n = n + 1")
        with monkeypatch.context() as patched:  # the follower dies after deltamem's commit, before the advance
            patched.setattr("deltamem.cdc.source.Source.advance", lambda self, slot, lsn: None)
            with Follower(db, source, table="docs", into="docs") as follower:
                assert follower.poll().changes == 2
        applied = db.version
        with Follower(db, source, table="docs", into="docs") as follower:
            again = follower.poll()
            assert (again.skipped, again.transactions, again.version) == (2, 0, None)
            assert follower.poll().drained
        assert db.version == applied
        assert target_rows(db, "docs") == {1: {"id": 1, "n": 1}}


def test_an_interrupted_copy_is_made_again_and_another_databases_slot_is_an_error(source, tmp_path, monkeypatch):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, n int)")
    src.execute("INSERT INTO docs VALUES (1, 1), (2, 2)")

    def die(self, values, before):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the copy

    with dm.connect(str(tmp_path / "app.db"), llm="test", embedder="test", background=False) as db:
        with monkeypatch.context() as patched, Follower(db, source, table="docs", into="docs") as follower:
            patched.setattr(Follower, "_row", die)
            with pytest.raises(KeyboardInterrupt):
                follower.poll()
        assert db.table("docs").rows() == []
        with Follower(db, source, table="docs", into="docs") as follower:
            assert follower.poll().copied
        assert target_rows(db, "docs") == source_rows(src, "docs")
    with dm.connect(str(tmp_path / "other.db"), llm="test", embedder="test", background=False) as other:
        with Follower(other, source, table="docs", into="docs") as follower:
            with pytest.raises(CDCError, match="exists on the source, but this deltamem database has never followed "
                                               "through it"):
                follower.poll()


def test_the_follower_killed_twice_during_10000_changes_applies_each_once(source, new_store_path, store_kind):
    src = writer(source)
    src.execute("CREATE TABLE events (id int PRIMARY KEY, counter int NOT NULL, note text)")
    src.execute("INSERT INTO events SELECT g, 0, 'start' FROM generate_series(1, 100) g")
    path = new_store_path()
    command = [sys.executable, "-m", "deltamem", "cdc", path, source, "--table", "public.events", "--into", "events",
               "--no-maintain", "--llm", "test", "--embedder", "test", "--interval", "0.05", "--batch", "500"]
    total, done = 10_000, [0]
    started = time.monotonic()

    def stream() -> None:
        """10,000 changes in transactions of 1 to 8: an update adds 1 to a counter, which never goes back, even for
        a key deleted and inserted again, so that a change applied twice would show in deltamem's change log."""
        rng, counters, live = random.Random(7), dict.fromkeys(range(1, 101), 0), set(range(1, 101))
        with writer(source) as conn:
            while done[0] < total:
                with conn.transaction():
                    for _ in range(min(rng.randint(1, 8), total - done[0])):
                        roll, key = rng.random(), rng.randint(1, 300)
                        counters[key] = counters.get(key, 0) + 1
                        if key in live and roll < 0.15:
                            conn.execute("DELETE FROM events WHERE id = %s", (key,))
                            live.discard(key)
                        elif key in live:
                            conn.execute("UPDATE events SET counter = %s, note = %s WHERE id = %s",
                                         (counters[key], f"n{counters[key]}", key))
                        else:
                            conn.execute("INSERT INTO events VALUES (%s, %s, 'new')", (key, counters[key]))
                            live.add(key)
                        done[0] += 1
                time.sleep(0.001)  # spread the stream over a few seconds, so that both kills land inside it

    def position() -> str | None:
        """The stored position, read straight from the store's table (opening a store this often would be slow)."""
        query = "SELECT position FROM source_positions"
        try:
            if store_kind == "postgres":
                with psycopg.connect(path) as conn:
                    found = conn.execute(query).fetchone()
            else:
                with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
                    found = conn.execute(query).fetchone()
        except (sqlite3.OperationalError, psycopg.errors.UndefinedTable):  # the child has not made the store yet
            return None
        return found and found[0]

    def live_then_kill(until: int) -> None:
        """Run a follower until the stream is past ``until`` and the follower has committed since it started."""
        before = position()
        child = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while (done[0] < until or position() == before) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert child.poll() is None and position() != before, child.stderr.read().decode()
        child.send_signal(signal.SIGKILL)
        child.wait()

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        live_then_kill(3000)
        live_then_kill(7000)
    finally:
        thread.join()
    assert done[0] == total
    streamed = time.monotonic() - started
    finish = subprocess.run(command + ["--once"], env=ENV, capture_output=True, text=True, timeout=120)
    assert finish.returncode == 0, finish.stderr
    elapsed = time.monotonic() - started
    drained = elapsed - streamed
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        assert target_rows(db, "events") == source_rows(src, "events")
        seen: dict[int, int] = {}
        for change in db.store.get_changes(1, db.version, ["events"]):
            if change.after is not None:  # every write carries a newer counter than any before it for its key
                key = change.after["id"]
                assert change.after["counter"] > seen.get(key, -1), f"key {key} went back: a change applied twice"
                seen[key] = change.after["counter"]
        info = src.info
        stored = db.store.get_source_position(f"postgresql://{info.host}:{info.port}/{info.dbname}"
                                              "?slot=deltamem_events")
    slot = src.execute("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = "
                       "'deltamem_events'").fetchone()[0]
    assert stored is not None and _lsn(stored) <= _lsn(slot)
    drain = " ".join(finish.stdout.split())
    print(f"\n{store_kind}: 10,000 changes with two SIGKILLs: {total / elapsed:.0f} changes/s end to end "
          f"({elapsed:.1f} s: the stream {streamed:.1f} s, then a drain of {drained:.1f} s, process start "
          f"included: {drain}); table equal, no change applied twice")


def _lsn(text: str) -> int:
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


# --- the command ---------------------------------------------------------------------------------------------------
def test_the_command_drains_with_once_and_drops_its_slot(source, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id text PRIMARY KEY, body text)")
    src.execute("INSERT INTO docs VALUES ('a', 'alpha'), ('b', 'beta')")
    path = str(tmp_path / "app.db")
    runner = CliRunner()
    args = ["cdc", path, source, "--table", "docs", "--into", "docs", "--once", "--llm", "test", "--embedder", "test"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "copied 2 rows of public.docs into docs" in " ".join(first.output.split())  # unwrapped
    src.execute("DELETE FROM docs WHERE id = 'a'")
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert "applied 1 changes of 1 source transactions in 1 versions" in " ".join(second.output.split())
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        assert target_rows(db, "docs") == {"b": {"id": "b", "body": "beta"}}
    dropped = runner.invoke(app, ["cdc", path, source, "--into", "docs", "--drop-slot", "--llm", "test",
                                  "--embedder", "test"])
    assert dropped.exit_code == 0 and "dropped replication slot 'deltamem_docs'" in " ".join(dropped.output.split())
    assert src.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0] == 0
    failed = runner.invoke(app, ["cdc", path, source, "--table", "nope", "--into", "x", "--llm", "test",
                                 "--embedder", "test"])
    assert failed.exit_code == 1 and "Error: Table 'nope' not found on the source" in " ".join(failed.output.split())


def test_sigterm_stops_the_command_cleanly_and_it_resumes(source, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, n int)")
    src.execute("INSERT INTO docs VALUES (1, 0)")
    path = str(tmp_path / "app.db")
    command = [sys.executable, "-m", "deltamem", "cdc", path, source, "--table", "docs", "--into", "docs",
               "--interval", "0.05", "--llm", "test", "--embedder", "test"]
    child = subprocess.Popen(command, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not _copied(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        src.execute("UPDATE docs SET n = 1")  # after the copy: a change
        with dm.connect(path, llm="test", embedder="test", background=False) as db:
            while target_rows(db, "docs").get(1, {}).get("n") != 1 and time.monotonic() < deadline:
                time.sleep(0.05)
        child.send_signal(signal.SIGTERM)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert "stopped: applied 1 changes" in " ".join(out.split())
    src.execute("UPDATE docs SET n = 2")
    resumed = subprocess.run(command + ["--once"], env=ENV, capture_output=True, text=True, timeout=60)
    assert resumed.returncode == 0, resumed.stderr
    assert "copied" not in resumed.stdout and "applied 1 changes" in " ".join(resumed.stdout.split())


def _copied(path: str) -> bool:
    """Whether a follower has stored a position in the SQLite store at ``path`` (its copy committed)."""
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
            return conn.execute("SELECT count(*) FROM source_positions").fetchone()[0] > 0
    except sqlite3.OperationalError:  # no store, or no table, yet
        return False


# --- errors ------------------------------------------------------------------------------------------------------
def test_a_server_without_logical_decoding_says_to_set_wal_level(postgres_server, tmp_path):
    with dm.connect(str(tmp_path / "app.db"), llm="test", embedder="test", background=False) as db:
        with pytest.raises(CDCError, match=r"has wal_level = replica: set wal_level = logical in its postgresql.conf "
                                           r"and restart the server"):
            Follower(db, postgres_server.dsn(), table="docs", into="docs")


def test_unusable_sources_are_clear_errors(source, logical_postgres_server, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE bare (id int, body text)")
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, code text UNIQUE)")
    src.execute("DROP ROLE IF EXISTS plain")
    src.execute("CREATE ROLE plain LOGIN")
    with dm.connect(str(tmp_path / "app.db"), llm="test", embedder="test", background=False) as db:
        cases = [
            (dict(table="missing"), r"Table 'missing' not found on the source"),
            (dict(table="a.b.c.d"), r"Table 'a.b.c.d' not found on the source"),
            (dict(table="bare"), r"public.bare has no primary key: pass --key COLUMN .* REPLICA IDENTITY FULL"),
            (dict(table="docs", key="code"), r"would not log the old 'code' .* REPLICA IDENTITY FULL"),
            (dict(table="docs", key="nope"), r"--key 'nope' is not a column of public.docs"),
        ]
        for options, message in cases:
            with pytest.raises(CDCError, match=message):
                Follower(db, source, into="t", **options)
        plain = source.replace("postgres@", "plain@")
        with pytest.raises(CDCError, match=r"Role 'plain' may not use replication slots .* REPLICATION"):
            Follower(db, plain, table="docs", into="t")
        port = logical_postgres_server.port
        with pytest.raises(ConfigError, match=r"Cannot connect to PostgreSQL at 'postgresql://postgres:\*\*\*@"):
            Follower(db, f"postgresql://postgres:secret@127.0.0.1:{port + 1}/x?connect_timeout=2", table="docs",
                     into="t")
        src.execute("ALTER TABLE docs REPLICA IDENTITY FULL")  # now any unique column may be the key
        src.execute("INSERT INTO docs VALUES (1, 'a'), (2, 'z')")
        with Follower(db, source, table="docs", into="by_code", key="code") as follower:
            follower.run(once=True)
            src.execute("UPDATE docs SET code = 'b' WHERE id = 1")  # the key changes: its old value is logged
            src.execute("DELETE FROM docs WHERE id = 2")
            follower.run(once=True)
        assert target_rows(db, "by_code") == {"b": {"id": 1, "code": "b"}}


def test_a_column_added_at_the_source_stops_the_follow_and_applies_nothing(source, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY, n int)")
    with dm.connect(str(tmp_path / "app.db"), llm="test", embedder="test", background=False) as db:
        with Follower(db, source, table="docs", into="docs") as follower:
            follower.run(once=True)
            src.execute("INSERT INTO docs VALUES (1, 1)")
            src.execute("ALTER TABLE docs ADD COLUMN extra text")
            src.execute("INSERT INTO docs VALUES (2, 2, 'x')")
            version = db.version
            with pytest.raises(CDCError, match=r"public.docs was altered at the source since the follow started: its "
                                               r"columns changed \(extra added or dropped\); drop the slot"):
                follower.run(once=True)
            assert db.version == version and db.table("docs").rows() == []


def test_no_free_replication_slot_says_what_to_raise(source, tmp_path):
    src = writer(source)
    src.execute("CREATE TABLE docs (id int PRIMARY KEY)")
    used = src.execute("SELECT count(*) FROM pg_replication_slots").fetchone()[0]
    fillers = [f"filler_{n}" for n in range(4 - used)]  # the fixture's server allows 4
    for name in fillers:
        src.execute("SELECT pg_create_logical_replication_slot(%s, 'test_decoding')", (name,))
    try:
        with dm.connect(str(tmp_path / "app.db"), llm="test", embedder="test", background=False) as db:
            with Follower(db, source, table="docs", into="docs") as follower:
                with pytest.raises(CDCError, match=r"no free replication slot .* raise max_replication_slots"):
                    follower.poll()
    finally:
        for name in fillers:
            src.execute("SELECT pg_drop_replication_slot(%s)", (name,))


# --- the store's positions ---------------------------------------------------------------------------------------
def test_a_position_commits_and_rolls_back_with_the_table_writes(new_store_path):
    store = dm.open_store(new_store_path())
    try:
        with store.transaction():
            store.commit([], committed_at=0.0)
            store.put_source_position("src", "0/1")
        assert store.get_source_position("src") == "0/1"
        with pytest.raises(RuntimeError), store.transaction():
            store.commit([], committed_at=1.0)
            store.put_source_position("src", "0/2")
            raise RuntimeError("killed mid-block")
        assert (store.get_source_position("src"), store.get_latest_version()) == ("0/1", 1)
        store.put_source_position("src", None)
        assert store.get_source_position("src") is None
    finally:
        store.close()


def test_a_postgres_store_of_schema_1_gains_the_positions_table_on_open(postgres_server):
    dsn = postgres_server.new_database()
    dm.open_store(dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:  # as the previous deltamem left it
        conn.execute("DROP TABLE source_positions")
        conn.execute("UPDATE meta SET value = '1' WHERE name = 'schema_version'")
    store = dm.open_store(dsn)
    try:
        store.put_source_position("src", "0/1")
        assert store.get_source_position("src") == "0/1"
    finally:
        store.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
