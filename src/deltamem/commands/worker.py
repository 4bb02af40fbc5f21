"""``deltamem worker``: a process that only maintains views, one of any number sharing one database.

    deltamem worker postgresql://app@db.internal/deltamem --llm openai --max-concurrency 16

A worker opens the database with background maintenance and a fair share of the view leases (``deltamem.leases``)
and writes nothing of its own: it applies the versions other processes commit to the views whose lease it holds,
until Ctrl-C or SIGTERM, when it finishes the version in progress and releases its leases, so that the other
workers take its views over at once. Calls are claimed in the store before they are paid (``deltamem.llm.claims``),
so workers on several machines never pay one call twice, and the memo they share answers each call once paid.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

import deltamem as dm
from deltamem.commands.common import EMBEDDER, LLM, fail, stop_on_sigterm
from deltamem.leases import DEFAULT_LEASE_TIMEOUT, is_member_lease
from deltamem.llm.claims import DEFAULT_CLAIM_TIMEOUT
from deltamem.store import is_postgres_dsn

TICK = 0.25  # seconds between looks at the store for the status line


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["latency=0.1", "model=x"]`` as backend options: each value read as JSON when it parses (numbers,
    booleans), else kept as text."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise dm.ConfigError(f"--llm-option takes KEY=VALUE (e.g. latency=0.1), got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def describe_store(db: str) -> str:
    """The store ``db`` names, as a worker prints it: a DSN with its password hidden, or a SQLite file."""
    if is_postgres_dsn(db):
        from deltamem.store.postgres_schema import hide_password

        return f"PostgreSQL {hide_password(db)}"
    return f"SQLite file {db}"


@dataclass
class WorkerStatus:
    """What one worker has done since it started, read from the store: the views whose lease it holds, how far
    their applied versions moved while it held them, and the store's ledger counts (all workers') since then."""

    db: dm.Database
    owner: str
    paid_at_start: int = 0
    memo_at_start: int = 0
    versions_applied: int = 0
    held: tuple[str, ...] = ()
    _applied: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.paid_at_start, self.memo_at_start = self._ledger_counts()

    def look(self) -> bool:
        """Read the leases and the applied versions of the views held; return whether the views held changed."""
        store = self.db.store
        held = tuple(sorted(lease.view for lease in store.get_leases()
                            if lease.owner == self.owner and not is_member_lease(lease)))
        applied = {view: store.get_applied_version(view) or -1 for view in held}
        for view, version in applied.items():
            if view in self._applied:
                self.versions_applied += max(0, version - self._applied[view])
        changed = held != self.held
        self.held, self._applied = held, applied
        return changed

    def line(self) -> str:
        paid, memo = self._ledger_counts()
        views = self.db.views()
        names = ", ".join(self.held) if len(self.held) <= 6 else ", ".join(self.held[:6]) + ", ..."
        return (f"{len(self.held)}/{len(views)} views held ({names or 'none'}); {self.versions_applied} versions "
                f"applied; store-wide since start: {paid - self.paid_at_start} calls paid, "
                f"{memo - self.memo_at_start} memo hits; latest version {self.db.store.get_latest_version()}")

    def _ledger_counts(self) -> tuple[int, int]:
        totals = self.db.store.get_ledger_totals()
        return (sum(t.calls for t in totals if t.outcome == "paid"),
                sum(t.calls for t in totals if t.outcome == "memo"))


def worker(
    db: str = typer.Argument(..., help="The database to maintain: a postgresql:// DSN, or a SQLite file."),
    llm: str = LLM,
    embedder: str = EMBEDDER,
    llm_option: list[str] = typer.Option(
        [], "--llm-option", help="A chat backend option, KEY=VALUE (repeatable), e.g. latency=0.1 for --llm test."),
    max_concurrency: int = typer.Option(4, "--max-concurrency", help="The most model calls this worker runs at once."),
    lease_timeout: float = typer.Option(
        DEFAULT_LEASE_TIMEOUT, "--lease-timeout", help="Seconds without a heartbeat after which another worker "
                                                       "takes this one's views over."),
    claim_timeout: float = typer.Option(
        DEFAULT_CLAIM_TIMEOUT, "--claim-timeout", help="Seconds without renewal after which a call another worker "
                                                       "claimed is presumed lost and paid here (each worker renews "
                                                       "its claims every third of this while it pays them)."),
    poll_interval: float = typer.Option(1.0, "--poll-interval", help="Seconds between looks for new versions."),
    status_every: float = typer.Option(5.0, "--status-every", help="Seconds between status lines (when something "
                                                                   "changed; a change of the views held at once)."),
) -> None:
    """Maintain the views of a database, with any number of other workers on any machines: each view is leased by
    one worker at a time and taken over when its worker stops answering; each call is paid once. Writes nothing of
    its own; Ctrl-C or SIGTERM stops it and hands its views to the others.

    Example: deltamem worker postgresql://app@db.internal/deltamem --llm openai --max-concurrency 16
    """
    for name, value in (("--lease-timeout", lease_timeout), ("--claim-timeout", claim_timeout),
                        ("--poll-interval", poll_interval), ("--status-every", status_every)):
        if value <= 0:
            fail(dm.ConfigError(f"{name} must be positive, got {value:g}"))
    restore_sigterm = stop_on_sigterm()
    database = None
    try:
        if not is_postgres_dsn(db) and not Path(db).exists():
            raise dm.ConfigError(f"Database file {db!r} does not exist: a worker maintains an existing database")
        database = dm.connect(db, llm=llm, embedder=embedder, llm_options=parse_options(llm_option),
                              max_concurrency=max_concurrency, lease_timeout=lease_timeout,
                              claim_timeout=claim_timeout, poll_interval=poll_interval, fair_share=True)
        typer.echo(f"worker on {describe_store(db)}: llm {llm}, max concurrency {max_concurrency}, lease timeout "
                   f"{lease_timeout:g} s, claim timeout {claim_timeout:g} s; Ctrl-C or SIGTERM stops")
        _report(database, status_every)
    except KeyboardInterrupt:
        pass
    except dm.DeltamemError as exc:
        fail(exc)
    finally:
        if database is not None:
            held = len(database.maintainer.leases.held)
            database.close()  # finishes the version in progress, then releases every lease
            typer.echo(f"stopped: released {held} view lease{'s' if held != 1 else ''}")
        restore_sigterm()


def _report(database: dm.Database, status_every: float) -> None:
    """Print a status line when the views held change, and every ``status_every`` seconds when it says something new
    (the ledger's totals are read then only: a scan of the whole ledger)."""
    status = WorkerStatus(database, database.maintainer.leases.owner)
    last_line, last_read, error = "", 0.0, None
    while True:
        changed = status.look()
        now = time.monotonic()
        if changed or now - last_read >= status_every:
            line, last_read = status.line(), now
            if line != last_line:
                typer.echo(line)
                last_line = line
        failure = database.maintainer.error
        if failure is not None and failure is not error:
            typer.echo(f"maintenance error (retried): {type(failure).__name__}: {failure}", err=True)
        error = failure
        time.sleep(TICK)
