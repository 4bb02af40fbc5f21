"""``deltamem cdc``: a PostgreSQL table followed into a deltamem table through logical replication."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

import deltamem as dm
from deltamem.commands.common import EMBEDDER, LLM, MAINTAIN_HERE, console, fail, stop_on_sigterm
from deltamem.display import literal
from deltamem.store import is_postgres_dsn


def cdc(
    db: str = typer.Argument(..., help="SQLite file (created if missing), or a postgresql:// DSN: the deltamem side."),
    source: str = typer.Argument(..., help="The source database: a postgresql:// DSN (wal_level = logical)."),
    table: Optional[str] = typer.Option(None, "--table", help="The source table, e.g. public.docs."),
    into: str = typer.Option(..., "--into", help="The deltamem table to keep equal to it (created if missing)."),
    key: Optional[str] = typer.Option(
        None, "--key", help="Key column (default: the source's primary key; another needs REPLICA IDENTITY FULL)."),
    slot: Optional[str] = typer.Option(None, "--slot", help="Replication slot name (default: deltamem_<into>)."),
    batch: int = typer.Option(5000, "--batch", min=1, help="Changes read per poll (whole transactions)."),
    interval: float = typer.Option(1.0, "--interval", help="Seconds between polls once the slot is drained."),
    once: bool = typer.Option(False, "--once", help="Apply what the slot holds, then exit (scripts and tests)."),
    drop_slot: bool = typer.Option(
        False, "--drop-slot", help="Drop the replication slot and forget the position, then exit (the next follow "
                                   "copies the table anew)."),
    maintain: bool = MAINTAIN_HERE,
    llm: str = LLM,
    embedder: str = EMBEDDER,
) -> None:
    """Follow a PostgreSQL table into a deltamem table: a copy first, then each source transaction's inserts,
    updates and deletes, exactly once, one deltamem version per poll. Resumes where it stopped; Ctrl-C stops.

    Example: deltamem cdc app.db postgresql://app@db/app --table public.docs --into docs --llm test
    """
    from deltamem import cdc as follow_api  # imports psycopg: only when this command runs

    if interval <= 0:
        fail(dm.ConfigError(f"--interval must be positive, got {interval}"))
    if table is None and not drop_slot:
        fail(dm.ConfigError("--table is missing: name the source table to follow, e.g. --table public.docs"))
    if drop_slot and not is_postgres_dsn(db) and not Path(db).exists():
        fail(dm.ConfigError(f"Database file {db!r} does not exist"))
    restore_sigterm = stop_on_sigterm()
    database = follower = None
    try:
        database = dm.connect(db, llm=llm, embedder=embedder, background=maintain and not once)
        if drop_slot:
            name = slot or follow_api.default_slot(into)
            found = follow_api.drop_slot(database, source, into=into, slot=slot)
            console.print(literal(f"dropped replication slot {name!r}" if found else f"no replication slot {name!r}"))
            return
        follower = follow_api.Follower(database, source, table=table or "", into=into, key=key, slot=slot, batch=batch)
        shown = f"{follower.table.shown} -> {into} (slot {follower.slot})"
        with console.status(literal(f"cdc {shown}: starting")) as status:

            def report(result: follow_api.PollResult) -> None:
                if result.copied:
                    console.print(literal(f"copied {result.changes} rows of {follower.table.shown} into {into} "
                                          f"(version {result.version}, position {result.position})"))
                    return
                status.update(literal(f"cdc {shown}: {_summary(follower.applied)}, position {result.position}"))

            follower.run(interval, once=once, on_poll=report)
        console.print(literal(f"{shown}: {_summary(follower.applied)}, position {follower.position}"))
        if once and maintain:
            database.maintain()
    except KeyboardInterrupt:
        console.print(literal(f"stopped: {_summary(follower.applied if follower else {})}"))
    except dm.DeltamemError as exc:
        fail(exc)
    finally:
        if follower is not None:
            follower.close()
        if database is not None:
            database.close()  # a poll in progress rolled back whole: its changes are still in the slot
        restore_sigterm()


def _summary(totals: dict[str, int]) -> str:
    return (f"applied {totals.get('changes', 0)} changes of {totals.get('transactions', 0)} source transactions in "
            f"{totals.get('versions', 0)} versions")
