"""``deltamem serve DB``: the HTTP API and the web page over one database file.

    deltamem serve app.db --llm test            # http://127.0.0.1:8000/
    DELTAMEM_TOKEN=s3cret deltamem serve app.db --host 0.0.0.0 --allow-host box.lan

The server binds to 127.0.0.1 unless told otherwise; binding to any other address needs a token (``--token`` or
``DELTAMEM_TOKEN``), and with a token every API request needs ``Authorization: Bearer <token>``. It answers to the
address it binds, localhost names and each ``--allow-host``, and to no other ``Host`` (see ``deltamem.server.hosts``).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer

from deltamem.errors import ConfigError
from deltamem.server.app import DEFAULT_READ_TIMEOUT
from deltamem.store import is_postgres_dsn

TOKEN_VARIABLE = "DELTAMEM_TOKEN"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


def check_binding(host: str, token: str | None) -> None:
    """Refuse to serve a non-loopback address without a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"Binding to {host} exposes the database beyond this machine; set a token with --token or "
                          f"{TOKEN_VARIABLE} (clients then send 'Authorization: Bearer <token>'), or bind to 127.0.0.1")


def allowed_hosts(host: str, allow_host: list[str]) -> list[str]:
    """The names the server answers to besides localhost's: the bound address, unless it is a wildcard (0.0.0.0 or
    ::, which no client addresses; those name the machine with --allow-host), and each ``--allow-host``."""
    try:
        wildcard = ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        wildcard = False  # a host name
    return [*([] if wildcard else [host]), *allow_host]


def serve(
    db: str = typer.Argument(..., help="SQLite file (created if missing), or a postgresql:// DSN."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; other than loopback needs a token."),
    port: int = typer.Option(8000, help="Port to bind."),
    token: Optional[str] = typer.Option(None, envvar=TOKEN_VARIABLE, show_envvar=True,
                                        help="Bearer token every API request must send."),
    allow_host: Optional[list[str]] = typer.Option(
        None, "--allow-host", help="Also answer to this host name (repeatable), e.g. the machine's name when binding "
                                   "0.0.0.0; '*' answers to any. Other Host headers are refused (DNS rebinding)."),
    max_body_mb: float = typer.Option(8.0, "--max-body-mb", help="Largest request body accepted, in MiB."),
    read_timeout: float = typer.Option(
        DEFAULT_READ_TIMEOUT, "--read-timeout",
        help="Seconds a SQL read waits for its view to catch up before it answers 503 (saying how far behind)."),
    llm: str = typer.Option("local", "--llm", help="Chat backend: local (SmolLM2-135M), openai, or test."),
    embedder: str = typer.Option("minilm", "--embedder", help="Embedding backend: minilm, openai, or test."),
    maintain: bool = typer.Option(
        True, "--maintain/--no-maintain", help="Maintain views in this process, or leave that to `deltamem worker` "
                                               "processes and only serve."),
) -> None:
    """Serve the HTTP API (OpenAPI spec at /openapi.json) and the web page at / for one database.

    Example: deltamem serve app.db --llm test --port 8000
    """
    import uvicorn

    import deltamem as dm
    from deltamem.server.app import create_app

    try:
        check_binding(host, token)
        if max_body_mb <= 0:
            raise ConfigError(f"--max-body-mb must be positive, got {max_body_mb}")
        if not read_timeout > 0:
            raise ConfigError(f"--read-timeout must be positive, got {read_timeout}")
        if not is_postgres_dsn(db):
            Path(db).parent.mkdir(parents=True, exist_ok=True)
        # Not maintaining, its background thread only notices the workers' commits: it looks more often.
        database = dm.connect(db, llm=llm, embedder=embedder, poll_interval=0.5 if maintain else 0.1,
                              maintain=maintain)
    except dm.DeltamemError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    try:
        names = allowed_hosts(host, allow_host or [])
        app = create_app(database, token=token, max_body_bytes=int(max_body_mb * 1024 * 1024), allowed_hosts=names,
                         read_timeout=read_timeout)
        typer.echo(f"deltamem: serving {db} at http://{host}:{port}/" + (" (bearer token required)" if token else ""))
        if not names:
            typer.echo(f"deltamem: answering to localhost names only; add --allow-host NAME for the names clients "
                       f"use to reach {host}")
        # Subscriptions never end on their own, so a graceful stop would wait for ever; after 3 s uvicorn cancels
        # them, and their clients resume with Last-Event-ID from another server.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=3)
    finally:
        database.close()


def bench_serve(
    writers: int = typer.Option(20, help="Concurrent writers."),
    changes: int = typer.Option(10_000, help="Changes posted by all writers together."),
    subscribers: int = typer.Option(5, help="Concurrent SSE subscribers."),
    batch: int = typer.Option(10, help="Changes per POST."),
    rate: Optional[float] = typer.Option(None, help="Cap on changes per second, all writers together (default: none)."),
    seed: int = typer.Option(0, help="Seed of the change mix."),
    db: Optional[str] = typer.Option(None, "--db", help="A postgresql:// DSN of an empty database to run on "
                                                          "(default: a new SQLite file)."),
    workers: int = typer.Option(0, "--workers", help="Maintain the view in this many `deltamem worker` processes, "
                                                     "the server only serving (default: the server maintains it)."),
    out: Optional[Path] = typer.Option(None, help="Write the report as JSON here."),
) -> None:
    """Load a real server on loopback: writers post changes while subscribers follow a view over SSE; checks that
    every subscriber got every change row exactly once and the view equals a from-scratch recompute.

    Example: deltamem bench serve --writers 20 --changes 10000 --subscribers 5
    """
    import json

    from rich.console import Console
    from rich.table import Table

    from deltamem.bench.serve_load import run_load

    if workers < 0:
        typer.echo(f"Error: --workers must be 0 or more, got {workers}", err=True)
        raise typer.Exit(1)
    for name, value in (("--writers", writers), ("--changes", changes), ("--subscribers", subscribers),
                        ("--batch", batch)):
        if value < 1:
            typer.echo(f"Error: {name} must be at least 1, got {value}", err=True)
            raise typer.Exit(1)
    console = Console()
    with console.status(f"{writers} writers posting {changes:,} changes, {subscribers} subscribers listening ..."):
        report = run_load(writers=writers, changes=changes, subscribers=subscribers, batch=batch, rate=rate,
                          seed=seed, db=db, workers=workers)
    store = "postgresql" if db else "sqlite"
    where = f"{workers} worker processes maintaining" if workers else "the server maintaining"
    table = Table(title=f"deltamem serve under load ({store}, {where}, test backend, loopback)")
    table.add_column("figure")
    table.add_column("value", justify="right")
    rows = [
        ("changes posted", f"{report.changes:,} in {report.requests:,} requests ({report.versions:,} versions)"),
        ("rate cap", "none" if rate is None else f"{rate:,.0f} changes/s"),
        ("writers' wall time", f"{report.write_seconds:.2f} s"),
        ("changes per second", f"{report.changes_per_second:,.0f}"),
        ("change rows delivered", f"{report.delivered_rows:,} to each of {report.subscribers} subscribers"),
        ("commit -> delivery p50", f"{report.latency_p50_ms:,.0f} ms"),
        ("commit -> delivery p99", f"{report.latency_p99_ms:,.0f} ms"),
        ("commit -> delivery max", f"{report.latency_max_ms:,.0f} ms"),
        ("every row exactly once, in order", "yes" if report.exactly_once else "NO"),
        ("view equals a from-scratch recompute", "yes" if report.equals_recompute else "NO"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)
    if out is not None:
        out.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
    if not (report.exactly_once and report.equals_recompute):
        raise typer.Exit(1)
