"""The SQLite store's tables, and opening a file: create what is missing, upgrade an older schema, or refuse.

    create_or_upgrade(conn, "app.db")   # in the store's first write transaction

The tables are the store's whole state (see ``deltamem.store.sqlite``); a file is readable by this deltamem when its
``meta.schema_version`` is ``SCHEMA_VERSION`` or one of ``_UPGRADABLE``, which opening upgrades in place.
"""

from __future__ import annotations

import json
import sqlite3

from deltamem.store.sql_dialect import dumps
from deltamem.store.state_vectors import legacy_updates

SCHEMA_VERSION = 7
# Older schemas this one opens by adding what it lacks (3 added the refresh_costs table; its history starts there.
# 4 added calls_in_flight, empty at the upgrade: a call of an older process is not there to be reported. 5 costs
# the full-recompute baseline with the memo (``baseline_memo``) and keeps the old figure, every stored value at every
# refresh, as ``nomemo_*``: at the upgrade ``nomemo_*`` start from ``base_*``, which counted that way until then.
# 6 added view_leases, call_claims and meta's catalog_version, for several processes on one file: empty at the upgrade,
# and a deltamem of schema 5 or older, which would maintain and pay without them, refuses the file from then on).
# 7 keeps operator state's embeddings in op_state.vectors (``deltamem.store.state_vectors``); the upgrade moves them
# there from the values, where they were base64 text or JSON lists.
_UPGRADABLE = {2, 3, 4, 5, 6}
_NO_MEMO_COLUMNS = ("nomemo_calls", "nomemo_prompt_tokens", "nomemo_output_tokens", "nomemo_seconds")
_BASE_COLUMNS = ("base_calls", "base_prompt_tokens", "base_output_tokens", "base_seconds")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS table_defs (name TEXT PRIMARY KEY, def TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS view_defs (
    name TEXT PRIMARY KEY, def TEXT NOT NULL, applied_version INTEGER,
    refreshes INTEGER NOT NULL DEFAULT 0, base_calls INTEGER NOT NULL DEFAULT 0,
    base_prompt_tokens INTEGER NOT NULL DEFAULT 0, base_output_tokens INTEGER NOT NULL DEFAULT 0,
    base_seconds REAL NOT NULL DEFAULT 0, nomemo_calls INTEGER NOT NULL DEFAULT 0,
    nomemo_prompt_tokens INTEGER NOT NULL DEFAULT 0, nomemo_output_tokens INTEGER NOT NULL DEFAULT 0,
    nomemo_seconds REAL NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS baseline_memo (call_hash TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS refresh_costs (
    view TEXT NOT NULL, version INTEGER NOT NULL, calls INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (view, version));
CREATE TABLE IF NOT EXISTS commits (version INTEGER PRIMARY KEY, committed_at REAL NOT NULL, note TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rows (
    tbl TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, expires_at REAL, PRIMARY KEY (tbl, key));
CREATE INDEX IF NOT EXISTS rows_expiry ON rows (tbl, expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER NOT NULL, seq INTEGER NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
    before TEXT, after TEXT, expire_mode TEXT, PRIMARY KEY (version, seq));
CREATE INDEX IF NOT EXISTS changes_by_table ON changes (tbl, version);
CREATE TABLE IF NOT EXISTS op_state (
    view TEXT NOT NULL, op TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL, input_row TEXT NOT NULL,
    value TEXT, vectors BLOB, error TEXT, calls INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (view, op, key));
CREATE INDEX IF NOT EXISTS op_state_errors ON op_state (view, op) WHERE error IS NOT NULL;
CREATE TABLE IF NOT EXISTS view_rows (
    view TEXT NOT NULL, key TEXT NOT NULL, row TEXT NOT NULL, valid_from INTEGER NOT NULL, valid_to INTEGER);
CREATE INDEX IF NOT EXISTS view_rows_current ON view_rows (view, key) WHERE valid_to IS NULL;
CREATE INDEX IF NOT EXISTS view_rows_from ON view_rows (view, valid_from);
CREATE INDEX IF NOT EXISTS view_rows_to ON view_rows (view, valid_to);
CREATE TABLE IF NOT EXISTS decisions (
    view TEXT NOT NULL, key TEXT NOT NULL, version INTEGER NOT NULL, strategy TEXT NOT NULL, reason TEXT NOT NULL,
    calls INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, reused_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, seconds REAL NOT NULL, evidence REAL);
CREATE INDEX IF NOT EXISTS decisions_by_key ON decisions (view, key, version);
CREATE TABLE IF NOT EXISTS memo (
    call_hash TEXT PRIMARY KEY, model TEXT NOT NULL, text TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    reused_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, seconds REAL NOT NULL,
    finish_reason TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, version INTEGER, view TEXT NOT NULL, operator TEXT NOT NULL,
    reason TEXT NOT NULL, model TEXT NOT NULL, outcome TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    reused_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, seconds REAL NOT NULL, call_hash TEXT NOT NULL,
    error TEXT);
CREATE TABLE IF NOT EXISTS view_incarnations (
    id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, dropped_version INTEGER,
    refreshes INTEGER NOT NULL DEFAULT 0, base_calls INTEGER NOT NULL DEFAULT 0,
    base_prompt_tokens INTEGER NOT NULL DEFAULT 0, base_output_tokens INTEGER NOT NULL DEFAULT 0,
    base_seconds REAL NOT NULL DEFAULT 0, nomemo_calls INTEGER NOT NULL DEFAULT 0,
    nomemo_prompt_tokens INTEGER NOT NULL DEFAULT 0, nomemo_output_tokens INTEGER NOT NULL DEFAULT 0,
    nomemo_seconds REAL NOT NULL DEFAULT 0);
CREATE UNIQUE INDEX IF NOT EXISTS view_incarnations_live ON view_incarnations (name) WHERE dropped_version IS NULL;
CREATE TABLE IF NOT EXISTS calls_in_flight (
    id INTEGER PRIMARY KEY, started_at REAL NOT NULL, version INTEGER, view TEXT NOT NULL, operator TEXT NOT NULL,
    reason TEXT NOT NULL, model TEXT NOT NULL, call_hash TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS view_leases (
    view TEXT PRIMARY KEY, owner TEXT NOT NULL, heartbeat REAL NOT NULL, expires_at REAL NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS call_claims (
    call_hash TEXT PRIMARY KEY, owner TEXT NOT NULL, claimed_at REAL NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, process TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS source_positions (source TEXT PRIMARY KEY, position TEXT NOT NULL);
"""
# NOTE(store): ``source_positions`` (``deltamem.store.positions``: where each followed source stands, e.g. a PostgreSQL
# LSN for ``deltamem cdc``) was added without a schema version bump, as ``view_incarnations`` was: a new table, created
# where missing, which an older deltamem never reads, so its files stay open to it.
# ``view_leases`` and ``call_claims`` share views and calls out among the processes on a file (see
# ``deltamem.store.coordination``): one lease per view and one claim per call hash, by primary key. ``owner`` is a
# random id per holder (a database's maintainer, a store handle); ``host``, ``pid`` and ``process`` say whose
# process it is, as in ``calls_in_flight``. ``meta``'s ``catalog_version`` counts catalog changes (missing until the
# first: 0).
# ``calls_in_flight`` holds a row per call a process is paying, from before the backend is asked until its ledger
# entry is written (in the same transaction that deletes the row): a row whose process is gone is a call that may
# have been paid and whose result is lost. ``host``, ``pid`` and ``process`` (a random id per process) say whose
# it is; see ``SQLiteStore.take_interrupted_calls``.
# NOTE(store): ``view_incarnations`` was added without a schema version bump: it is a new table, created where missing,
# and the views of an older file get their incarnation when it is opened (below). One row per view ever created: the
# live one has ``dropped_version`` NULL; a dropped one keeps its full-recompute baseline for ``get_baselines``.
# AUTOINCREMENT, because an incarnation id must never be reused.
# ``baseline_memo`` holds the memo hashes of the calls the full-recompute baseline has paid (``Store.commit_view``):
# its own memo, for the calls deltamem never made because it skipped or patched.


def create_or_upgrade(conn: sqlite3.Connection, path: str) -> None:
    """Create the tables a file lacks and bring an upgradable schema to ``SCHEMA_VERSION``; refuse any other."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    found = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
    if found is None:
        conn.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
    elif int(found[0]) in _UPGRADABLE:
        for table in ("view_defs", "view_incarnations"):
            _add_no_memo_columns(conn, table)
        _move_vectors_out_of_values(conn)
        conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
    elif int(found[0]) != SCHEMA_VERSION:
        raise RuntimeError(f"{path} has store schema {found[0]}; this deltamem reads {SCHEMA_VERSION}")
    conn.execute(
        "INSERT INTO view_incarnations (name) SELECT name FROM view_defs WHERE name NOT IN "
        "(SELECT name FROM view_incarnations WHERE dropped_version IS NULL) ORDER BY rowid"
    )


def _add_no_memo_columns(conn: sqlite3.Connection, table: str) -> None:
    """Give a ``table`` of schema 4 or older its ``nomemo_*`` columns, holding what ``base_*`` counted until now."""
    present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    if set(_NO_MEMO_COLUMNS) <= present:
        return  # created just now, with them
    for column in _NO_MEMO_COLUMNS:
        kind = "REAL" if column.endswith("seconds") else "INTEGER"
        conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind} NOT NULL DEFAULT 0")
    assignments = ", ".join(f"{new} = {old}" for new, old in zip(_NO_MEMO_COLUMNS, _BASE_COLUMNS, strict=True))
    conn.execute(f"UPDATE {table} SET {assignments}")


def _move_vectors_out_of_values(conn: sqlite3.Connection) -> None:
    """Give ``op_state`` of schema 6 or older its ``vectors`` column, and move each value's vectors there."""
    if "vectors" in {row[1] for row in conn.execute("PRAGMA table_info(op_state)")}:
        return  # created just now, with it
    conn.execute("ALTER TABLE op_state ADD COLUMN vectors BLOB")
    found = conn.execute("SELECT view, op, key, value FROM op_state WHERE value IS NOT NULL")
    updates = legacy_updates((view, op, key, json.loads(value)) for view, op, key, value in found)
    conn.executemany("UPDATE op_state SET value = ?, vectors = ? WHERE view = ? AND op = ? AND key = ?",
                     [(dumps(value), blob, view, op, key) for value, blob, view, op, key in updates])
