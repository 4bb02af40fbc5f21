"""The PostgreSQL store's tables, and opening a database: check the DSN, create what is missing, or refuse.

    conn = connect_checked(dsn)          # ConfigError naming the DSN (password hidden) when it cannot connect
    create_or_upgrade(conn, dsn)         # one transaction, under the store's write lock

The tables mirror the SQLite store's (``deltamem.store.sqlite_schema``), with PostgreSQL's types: JSON values in
``jsonb``, view plans in ``json`` (it keeps the author's key order, which ``EXPLAIN`` and ``SHOW`` print), key and
name columns ``COLLATE "C"`` so that every ``ORDER BY`` sorts as SQLite's binary collation does, whatever the
database's locale. A database is readable by this deltamem when ``meta.schema_version`` is ``SCHEMA_VERSION``; the
schema is created or upgraded in one transaction (PostgreSQL's DDL is transactional), so it is never half-upgraded.
"""

from __future__ import annotations

import re

import psycopg

from deltamem.errors import ConfigError
from deltamem.store.postgres_dialect import POSTGRES
from deltamem.store.state_vectors import legacy_updates

SCHEMA_VERSION = 3  # the PostgreSQL store's own line of versions (the SQLite store's is ``sqlite_schema``'s)
# Older PostgreSQL schemas this one upgrades in place on open, by creating the tables they lack (2 added
# source_positions, for ``deltamem cdc``; 3 keeps operator state's embeddings in op_state.vectors, and the upgrade
# moves them there from the values). A bump, unlike SQLite's, because an open of the current version creates nothing
# (``create_or_upgrade`` returns at once).
_UPGRADABLE: set[int] = {1, 2}

# The one advisory lock every writer takes first (``pg_advisory_xact_lock``): the store's version counter and its
# read-modify-write catalog checks need writers serialised, as SQLite's ``BEGIN IMMEDIATE`` does. An advisory lock,
# not ``SELECT ... FOR UPDATE`` on a lock row: it needs no row (so nothing to create before the schema exists) and is
# released with the transaction, also when the connection dies. Scoped to the database, so stores on other
# databases of one server never wait for each other.
WRITE_LOCK = 0x64656C74616D656D >> 1  # "deltamem", as a positive bigint

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS table_defs (name TEXT COLLATE "C" PRIMARY KEY, def JSONB NOT NULL);
CREATE TABLE IF NOT EXISTS view_defs (
    seq BIGSERIAL UNIQUE, name TEXT COLLATE "C" PRIMARY KEY, def JSON NOT NULL, applied_version BIGINT,
    refreshes BIGINT NOT NULL DEFAULT 0, base_calls BIGINT NOT NULL DEFAULT 0,
    base_prompt_tokens BIGINT NOT NULL DEFAULT 0, base_output_tokens BIGINT NOT NULL DEFAULT 0,
    base_seconds DOUBLE PRECISION NOT NULL DEFAULT 0, nomemo_calls BIGINT NOT NULL DEFAULT 0,
    nomemo_prompt_tokens BIGINT NOT NULL DEFAULT 0, nomemo_output_tokens BIGINT NOT NULL DEFAULT 0,
    nomemo_seconds DOUBLE PRECISION NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS baseline_memo (call_hash TEXT COLLATE "C" PRIMARY KEY);
CREATE TABLE IF NOT EXISTS refresh_costs (
    view TEXT COLLATE "C" NOT NULL, version BIGINT NOT NULL, calls BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL, seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (view, version));
CREATE TABLE IF NOT EXISTS commits (
    version BIGINT PRIMARY KEY, committed_at DOUBLE PRECISION NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, data JSONB NOT NULL,
    expires_at DOUBLE PRECISION, PRIMARY KEY (tbl, key));
CREATE INDEX IF NOT EXISTS rows_expiry ON rows (tbl, expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    version BIGINT NOT NULL, seq BIGINT NOT NULL, tbl TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
    before JSONB, after JSONB, expire_mode TEXT, PRIMARY KEY (version, seq));
CREATE INDEX IF NOT EXISTS changes_by_table ON changes (tbl, version);
CREATE TABLE IF NOT EXISTS op_state (
    view TEXT COLLATE "C" NOT NULL, op TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
    fingerprint TEXT COLLATE "C" NOT NULL, input_row JSONB NOT NULL, value JSONB, vectors BYTEA, error TEXT,
    calls BIGINT NOT NULL, prompt_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL, PRIMARY KEY (view, op, key));
CREATE INDEX IF NOT EXISTS op_state_errors ON op_state (view, op) WHERE error IS NOT NULL;
CREATE TABLE IF NOT EXISTS view_rows (
    id BIGSERIAL PRIMARY KEY, view TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL, data JSONB NOT NULL,
    valid_from BIGINT NOT NULL, valid_to BIGINT);
CREATE INDEX IF NOT EXISTS view_rows_current ON view_rows (view, key) WHERE valid_to IS NULL;
CREATE INDEX IF NOT EXISTS view_rows_from ON view_rows (view, valid_from);
CREATE INDEX IF NOT EXISTS view_rows_to ON view_rows (view, valid_to);
CREATE TABLE IF NOT EXISTS decisions (
    id BIGSERIAL PRIMARY KEY, view TEXT COLLATE "C" NOT NULL, key TEXT COLLATE "C" NOT NULL,
    version BIGINT NOT NULL, strategy TEXT NOT NULL, reason TEXT NOT NULL, calls BIGINT NOT NULL,
    prompt_tokens BIGINT NOT NULL, reused_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL, evidence DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS decisions_by_key ON decisions (view, key, version);
CREATE TABLE IF NOT EXISTS memo (
    call_hash TEXT COLLATE "C" PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL, prompt_tokens BIGINT NOT NULL,
    reused_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL, seconds DOUBLE PRECISION NOT NULL,
    finish_reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    id BIGSERIAL PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, version BIGINT, view TEXT COLLATE "C" NOT NULL,
    operator TEXT COLLATE "C" NOT NULL, reason TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT COLLATE "C" NOT NULL,
    prompt_tokens BIGINT NOT NULL, reused_tokens BIGINT NOT NULL, output_tokens BIGINT NOT NULL,
    seconds DOUBLE PRECISION NOT NULL, call_hash TEXT NOT NULL, error TEXT);
CREATE TABLE IF NOT EXISTS view_incarnations (
    id BIGSERIAL PRIMARY KEY, name TEXT COLLATE "C" NOT NULL, dropped_version BIGINT,
    refreshes BIGINT NOT NULL DEFAULT 0, base_calls BIGINT NOT NULL DEFAULT 0,
    base_prompt_tokens BIGINT NOT NULL DEFAULT 0, base_output_tokens BIGINT NOT NULL DEFAULT 0,
    base_seconds DOUBLE PRECISION NOT NULL DEFAULT 0, nomemo_calls BIGINT NOT NULL DEFAULT 0,
    nomemo_prompt_tokens BIGINT NOT NULL DEFAULT 0, nomemo_output_tokens BIGINT NOT NULL DEFAULT 0,
    nomemo_seconds DOUBLE PRECISION NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS view_incarnations_live ON view_incarnations (name) WHERE dropped_version IS NULL;
CREATE TABLE IF NOT EXISTS calls_in_flight (
    id BIGSERIAL PRIMARY KEY, started_at DOUBLE PRECISION NOT NULL, version BIGINT, view TEXT NOT NULL,
    operator TEXT NOT NULL, reason TEXT NOT NULL, model TEXT NOT NULL, call_hash TEXT NOT NULL,
    host TEXT NOT NULL, pid BIGINT NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS view_leases (
    view TEXT COLLATE "C" PRIMARY KEY, owner TEXT NOT NULL, heartbeat DOUBLE PRECISION NOT NULL,
    expires_at DOUBLE PRECISION NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS call_claims (
    call_hash TEXT COLLATE "C" PRIMARY KEY, owner TEXT NOT NULL, claimed_at DOUBLE PRECISION NOT NULL,
    host TEXT NOT NULL, pid BIGINT NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_positions (source TEXT COLLATE "C" PRIMARY KEY, position TEXT NOT NULL);
"""
# NOTE(store): the identity columns (``view_defs.seq``, ``decisions.id``, ``ledger.id``, ``view_rows.id``) stand in
# for SQLite's rowid: creation order, log order. Sequences are never reused, as ``view_incarnations.id`` must not be.
# NOTE(store): jsonb does not keep an object's key order; the store writes JSON with sorted keys (as the SQLite one
# does) and reads jsonb back with sorted keys (``postgres._SortedJsonbLoader``), so rows come back as from SQLite.
# A float that jsonb prints without a fraction or exponent (1e20 as 100000000000000000000) comes back as an equal
# int; jsonb and text reject the NUL character, which SQLite keeps.


def hide_password(dsn: str) -> str:
    """``dsn`` with its password replaced by ``***``, fit for an error message.

    >>> hide_password("postgresql://me:secret@db:5432/app")
    'postgresql://me:***@db:5432/app'
    >>> hide_password("host=db password=secret dbname=app")
    'host=db password=*** dbname=app'
    """
    dsn = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", dsn)
    dsn = re.sub(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", r"\1***", dsn)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", dsn)


def connect_checked(dsn: str, **kwargs) -> psycopg.Connection:
    """A connection to ``dsn``, or ``ConfigError`` naming it (password hidden) and what to check."""
    shown = hide_password(dsn)
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as error:
        raise ConfigError(f"Malformed PostgreSQL DSN '{shown}': {one_line(error)}; write it as "
                          "postgresql://user:password@host:5432/dbname") from None
    try:
        return psycopg.connect(dsn, **kwargs)
    except psycopg.OperationalError as error:
        raise ConfigError(f"Cannot connect to PostgreSQL at '{shown}': {one_line(error)}; check that the server "
                          "is running and reachable there, and the DSN's user, password and database name") from None


def one_line(error: Exception) -> str:
    """``error``'s message on one line: libpq's cause ("Connection refused") and its hint ("Is the server running
    ...?") are on lines of their own."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return "; ".join(lines) if lines else type(error).__name__


def create_or_upgrade(conn: psycopg.Connection, dsn: str) -> None:
    """Create the tables a database lacks; refuse a schema other than ``SCHEMA_VERSION`` (the caller's
    transaction, under ``WRITE_LOCK``, so two processes opening one new database never both create it)."""
    found = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if found and found[0]:
        version = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        if version is not None and int(version[0]) == SCHEMA_VERSION:
            return  # the usual open: nothing to create
        if version is not None and int(version[0]) not in _UPGRADABLE:
            raise ConfigError(_refusal(hide_password(dsn), int(version[0])))
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    _move_vectors_out_of_values(conn)
    conn.execute("INSERT INTO meta VALUES ('schema_version', %s) ON CONFLICT (name) DO UPDATE SET value = "
                 "excluded.value", (str(SCHEMA_VERSION),))


def _refusal(shown: str, version: int) -> str:
    if version > SCHEMA_VERSION:
        return (f"The PostgreSQL database '{shown}' has deltamem store schema {version}, newer than this deltamem's "
                f"{SCHEMA_VERSION}: upgrade deltamem (pip install --upgrade deltamem) in every process that opens it")
    return (f"The PostgreSQL database '{shown}' has deltamem store schema {version}, which this deltamem (schema "
            f"{SCHEMA_VERSION}) cannot upgrade: open it with the deltamem release that wrote it and export its data")


def _move_vectors_out_of_values(conn: psycopg.Connection) -> None:
    """Give ``op_state`` of schema 2 or older its ``vectors`` column, and move each value's vectors there."""
    found = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_name = 'op_state' "
                         "AND column_name = 'vectors' AND table_schema = current_schema()").fetchone()
    if found:
        return  # created just now, with it
    conn.execute("ALTER TABLE op_state ADD COLUMN vectors BYTEA")
    rows = conn.execute("SELECT view, op, key, value FROM op_state WHERE value IS NOT NULL").fetchall()
    with conn.cursor() as cursor:
        cursor.executemany("UPDATE op_state SET value = %s, vectors = %s WHERE view = %s AND op = %s AND key = %s",
                           [(POSTGRES.encode(value), blob, view, op, key)
                            for value, blob, view, op, key in legacy_updates(rows)])
