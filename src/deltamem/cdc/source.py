"""The PostgreSQL side of a follow: the checks, the replication slot with its initial copy, and the slot's changes.

    source = Source("postgresql://app@db/app")
    table = source.describe_table("public.docs", key=None)            # columns and key from the catalog
    with source.create_slot("deltamem_docs", table) as (lsn, batches): ...   # the copy, as of the slot's start
    transactions = source.peek("deltamem_docs", table, limit=1000)   # whole transactions, in commit order
    source.advance("deltamem_docs", transactions[-1].commit_lsn)     # only once deltamem has committed them

Mechanism: a logical replication slot with the built-in ``test_decoding`` plugin, read over plain SQL
(``pg_logical_slot_peek_changes``) and advanced only after deltamem committed, because psycopg 3 has no streaming
replication protocol, ``pgoutput`` is binary and read only through it, and ``wal2json`` is rarely installed.

What the source must allow, each checked with an error that names what to change (``CDCError``): ``wal_level =
logical``; a role with ``REPLICATION`` (or superuser) and ``SELECT`` on the table; a free replication slot
(``max_replication_slots``) and WAL sender (``max_wal_senders``: the slot is created over a replication connection);
an ordinary table whose deletes and key-changing updates carry the old key: its primary key is the deltamem key
(``REPLICA IDENTITY DEFAULT``), or the table has ``REPLICA IDENTITY FULL``.

Invariant: the initial copy reads the snapshot that ``CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT`` exports, so the
copy holds exactly the transactions that committed before the slot's consistent point and the slot yields exactly
those after it: no change is in both, and none in neither.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from deltamem.cdc.decoding import DecodedChange, column_type, parse_change
from deltamem.changes import ColumnType
from deltamem.errors import CDCError
from deltamem.store.postgres_schema import connect_checked, hide_password

_COPY_BATCH = 5000  # rows fetched per round trip of the initial copy


def lsn_number(lsn: str) -> int:
    """A PostgreSQL LSN (``"0/1925068"``) as a number, for comparing positions.

    >>> lsn_number("0/1925068") < lsn_number("1/0")
    True
    """
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


@dataclass(frozen=True)
class SourceTable:
    """The followed table: ``schema`` and ``name`` unquoted, ``columns`` (name -> PostgreSQL type, in table order)
    and the ``key`` column, whose type is ``int`` or ``text`` in deltamem."""

    schema: str
    name: str
    columns: dict[str, str]
    key: str

    @property
    def identifier(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def shown(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Transaction:
    """One source transaction as the slot yields it: its commit position and its changes to the followed table."""

    commit_lsn: str
    changes: list[DecodedChange]


class Source:
    """One connection (autocommit) to the source database; ``name`` identifies it without its password."""

    def __init__(self, dsn: str):
        self.dsn = dsn
        self.conn = connect_checked(dsn, autocommit=True)
        info = self.conn.info
        self.name = f"postgresql://{info.host}:{info.port}/{info.dbname}"
        self._printed: dict[tuple[str, str], str] = {}  # (schema, name) -> the prefix of its change lines

    def close(self) -> None:
        self.conn.close()

    # --- checks -------------------------------------------------------------------------------------------------
    def check_server(self) -> None:
        """``CDCError`` unless the server decodes logically and this role may use replication slots."""
        shown = hide_password(self.dsn)
        level = self.conn.execute("SHOW wal_level").fetchone()[0]
        if level != "logical":
            raise CDCError(f"The source server at '{shown}' has wal_level = {level}: set wal_level = logical in its "
                           "postgresql.conf and restart the server")
        role, allowed = self.conn.execute(
            "SELECT rolname, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user").fetchone()
        if not allowed:
            raise CDCError(f"Role {role!r} may not use replication slots on '{shown}': give it the REPLICATION "
                           f'attribute (ALTER ROLE "{role}" REPLICATION) or connect as a superuser')

    def describe_table(self, table: str, key: str | None) -> SourceTable:
        """The table ``table`` names (``public.docs``, or ``docs`` on the search path) with its columns and key;
        ``CDCError`` when it is missing, unreadable, has no usable key, or would not log the old key of a change."""
        try:
            found = self.conn.execute(
                "SELECT c.oid, n.nspname, c.relname, c.relkind, c.relreplident, has_table_privilege(c.oid, 'SELECT') "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
                (table,)).fetchone()
        except (psycopg.ProgrammingError, psycopg.NotSupportedError, psycopg.DataError):  # not a name ("a.b.c.d")
            found = None
        if found is None:
            raise CDCError(f"Table {table!r} not found on the source '{hide_password(self.dsn)}': name it as "
                           "schema.table (public.docs), quoting mixed-case names as PostgreSQL does")
        oid, schema, name, kind, identity, readable = found
        shown = f"{schema}.{name}"
        if kind != "r":
            raise CDCError(f"{shown} is not an ordinary table (relkind {kind!r}): follow a table, or each partition")
        if not readable:
            raise CDCError(f"This role may not read {shown}: GRANT SELECT ON {shown} TO it")
        columns = dict(self.conn.execute(
            "SELECT attname, format_type(atttypid, NULL) FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
            "AND NOT attisdropped AND attgenerated = '' ORDER BY attnum", (oid,)).fetchall())
        primary = [c for (c,) in self.conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisprimary", (oid,)).fetchall()]
        if key is None:
            if len(primary) != 1:
                what = "no primary key" if not primary else f"a primary key of {len(primary)} columns"
                raise CDCError(f"{shown} has {what}: pass --key COLUMN (one column, unique in the table) and set "
                               f"ALTER TABLE {shown} REPLICA IDENTITY FULL")
            key = primary[0]
        if key not in columns:
            raise CDCError(f"--key {key!r} is not a column of {shown}: its columns are {', '.join(columns)}")
        if column_type(columns[key]) not in (ColumnType.INT, ColumnType.TEXT):
            raise CDCError(f"Key column {key!r} of {shown} is {columns[key]}: a deltamem key is an integer or text")
        if identity != "f" and not (identity == "d" and primary == [key]) and \
                not (identity == "i" and self._identity_index(oid) == [key]):
            raise CDCError(f"{shown} would not log the old {key!r} of its deletes and updates (REPLICA IDENTITY "
                           f"{dict(d='DEFAULT', n='NOTHING', i='USING INDEX').get(identity, identity)}): run ALTER "
                           f"TABLE {shown} REPLICA IDENTITY FULL, or follow it by its primary key")
        return SourceTable(schema, name, columns, key)

    def _identity_index(self, oid: int) -> list[str]:
        return [c for (c,) in self.conn.execute(
            "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
            "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = %s AND i.indisreplident", (oid,)).fetchall()]

    # --- the slot -----------------------------------------------------------------------------------------------
    def slot_exists(self, slot: str) -> bool:
        """Whether ``slot`` exists; ``CDCError`` when it is not a test_decoding slot of this database."""
        found = self.conn.execute("SELECT plugin, database FROM pg_replication_slots WHERE slot_name = %s",
                                  (slot,)).fetchone()
        if found is None:
            return False
        if found != ("test_decoding", self.conn.info.dbname):
            raise CDCError(f"Replication slot {slot!r} exists for plugin {found[0]!r} on database {found[1]!r}, not "
                           "test_decoding on this one: pass another --slot")
        return True

    def wait_until_free(self, slot: str, timeout: float) -> None:
        """Wait up to ``timeout`` seconds while another session holds ``slot`` (the session of a follower that was
        killed ends once its statement does); ``CDCError`` if it still holds it then."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.conn.execute("SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s",
                                      (slot,)).fetchone()
            if found is None or found[0] is None:
                return
            if time.monotonic() >= deadline:
                raise CDCError(f"Replication slot {slot!r} is in use by server process {found[0]}: one follower "
                               "per slot; stop the other, or pass another --slot")
            time.sleep(0.1)

    @contextmanager
    def create_slot(self, slot: str, table: SourceTable) -> Iterator[tuple[str, Iterator[list[dict]]]]:
        """Create ``slot`` and yield its consistent point with the table's rows as of it (batches of column -> text
        value); the copy must be read inside the block, while the exporting connection is still open."""
        try:
            replication = psycopg.connect(self.dsn, autocommit=True, replication="database")
        except psycopg.OperationalError as error:
            raise CDCError(f"Cannot open a replication connection to '{hide_password(self.dsn)}' to create the "
                           f"slot: {_reason(error)}; the server needs a free WAL sender (raise max_wal_senders) "
                           "and this role REPLICATION") from None
        try:
            with _slot_errors(slot):
                # A replication command, so the simple query protocol of a client-side cursor, quoted by hand.
                cursor = psycopg.ClientCursor(replication)
                cursor.execute(f"CREATE_REPLICATION_SLOT {_slot_name(slot)} LOGICAL test_decoding EXPORT_SNAPSHOT")
                _, lsn, snapshot, _ = cursor.fetchone()
            yield lsn, self._copy(snapshot, table)
        finally:
            replication.close()

    def _copy(self, snapshot: str, table: SourceTable) -> Iterator[list[dict]]:
        columns = sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.columns)
        with psycopg.connect(self.dsn) as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            with conn.cursor(name="deltamem_cdc_copy") as cursor:
                cursor.execute(sql.SQL("SELECT {} FROM {}").format(columns, table.identifier))
                names = list(table.columns)
                while batch := cursor.fetchmany(_COPY_BATCH):
                    yield [dict(zip(names, row, strict=True)) for row in batch]

    def peek(self, slot: str, table: SourceTable, limit: int) -> list[Transaction]:
        """The slot's next whole transactions from its confirmed position, about ``limit`` changes' worth (the
        server ends a read at a transaction's end), with their changes to ``table``; the slot does not move."""
        with _slot_errors(slot):
            rows = self.conn.execute(
                "SELECT lsn::text, data FROM pg_logical_slot_peek_changes(%s, NULL, %s, 'include-xids', '0', "
                "'skip-empty-xacts', '1')", (slot, limit)).fetchall()
        printed = self._printed.get((table.schema, table.name))
        if printed is None:  # the line prefix of the table's changes, quoted as the server quotes it
            printed = self._printed[(table.schema, table.name)] = self.conn.execute(
                "SELECT 'table ' || quote_ident(%s) || '.' || quote_ident(%s) || ': '",
                (table.schema, table.name)).fetchone()[0]
        transactions: list[Transaction] = []
        changes: list[DecodedChange] = []
        for lsn, data in rows:
            if data.startswith(printed):
                changes.append(parse_change(data))
            elif data == "COMMIT" or data.startswith("COMMIT "):
                transactions.append(Transaction(lsn, changes))
                changes = []
        return transactions  # changes after the last COMMIT would be a cut transaction: the server never cuts one

    def advance(self, slot: str, lsn: str) -> None:
        """Move the slot's confirmed position to ``lsn``: the server may then recycle the WAL before it."""
        with _slot_errors(slot):
            self.conn.execute("SELECT pg_replication_slot_advance(%s, %s::pg_lsn)", (slot, lsn))

    def drop_slot(self, slot: str) -> bool:
        """Drop ``slot``; whether it existed."""
        if not self.slot_exists(slot):
            return False
        with _slot_errors(slot):
            self.conn.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        return True


def _slot_name(slot: str) -> str:
    if not slot or len(slot) > 63 or not all(c.islower() or c.isdigit() or c == "_" for c in slot):
        raise CDCError(f"Slot name {slot!r} is not valid: lower-case letters, digits and underscores, 1 to 63")
    return slot


def _reason(error: Exception) -> str:
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


@contextmanager
def _slot_errors(slot: str) -> Iterator[None]:
    """The server's slot errors as ``CDCError``s that say what to change."""
    try:
        yield
    except psycopg.errors.ConfigurationLimitExceeded as error:
        raise CDCError(f"The source has no free replication slot for {slot!r} ({_reason(error)}): raise "
                       "max_replication_slots in postgresql.conf and restart, or drop slots no longer used "
                       "(SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE NOT active)") \
            from None
    except psycopg.errors.ObjectInUse as error:
        raise CDCError(f"Replication slot {slot!r} is in use by another process ({_reason(error)}): one follower "
                       "per slot; stop the other, or pass another --slot") from None
    except psycopg.errors.InsufficientPrivilege as error:
        raise CDCError(f"This role may not use replication slots ({_reason(error)}): give it REPLICATION") from None
    except psycopg.errors.ObjectNotInPrerequisiteState as error:
        raise CDCError(f"The source cannot decode changes ({_reason(error)}): set wal_level = logical in "
                       "postgresql.conf and restart the server") from None
    except psycopg.errors.UndefinedObject as error:
        raise CDCError(f"Replication slot {slot!r} is gone ({_reason(error)}): it was dropped while following; "
                       "start again, which copies the table anew") from None
    except psycopg.OperationalError as error:
        raise CDCError(f"Lost the connection to the source ({_reason(error)}): follow again once it is back; it "
                       "resumes where it stopped, losing nothing") from None
