"""The HTTP server: a FastAPI app over one ``Database``, with live subscriptions and the web page at ``/``.

    app = create_app(db, token="s3cret"); uvicorn.run(app, host="127.0.0.1", port=8000)

Every route but the page, its static files and the API docs (``/docs``, ``/redoc``, ``/openapi.json``) needs
``Authorization: Bearer <token>`` when the app has a token.
Every request, the page's included, needs a ``Host`` the app answers to and no other site's ``Origin`` (see
``hosts``), so that a web page the user visits cannot drive a local server.
Request bodies are bounded (``max_body_bytes``) and validated before anything runs; a caller error is a 4xx whose
``detail`` says what is wrong, and the database is unchanged by a request that failed. Routes that touch the store
are plain ``def``s (FastAPI runs them on its thread pool); only the subscription stream is async, so a waiting
subscriber holds no thread and a slow one never blocks a writer.
"""

# No `from __future__ import annotations`: FastAPI reads the route functions' annotations when they are declared, and
# as strings they would name variables local to create_app that it cannot resolve.
import hmac
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.sse import KEEPALIVE_COMMENT, EventSourceResponse, format_sse_event
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deltamem.errors import (
    AlreadyExists,
    DeltamemError,
    DependentViews,
    FreshnessTimeout,
    MaintenanceError,
    NoRow,
    NoTable,
    NoView,
)
from deltamem.server import reads
from deltamem.server.feed import ChangeFeed, CommitSignal, Cursor
from deltamem.server.hosts import HostGuard
from deltamem.server.metrics import metrics_registry
from deltamem.server.writes import Applied, ChangeItem, apply_changes
from deltamem.sql.errors import InternalTable

if TYPE_CHECKING:
    from deltamem.engine import Database

STATIC = Path(__file__).parent / "static"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_CHANGES = 10_000
# Seconds a read over HTTP waits for a view to catch up before it answers 503: each waiting request holds one of the
# server's threads, so an unbounded wait lets a maintenance backlog take them all.
DEFAULT_READ_TIMEOUT = 5.0

# The first kind an error is an instance of wins: InternalTable is a NoTable, and a 403.
_STATUS = {InternalTable: 403, NoTable: 404, NoView: 404, NoRow: 404, AlreadyExists: 409, DependentViews: 409,
           FreshnessTimeout: 503, MaintenanceError: 503}


class _ErrorCounter:
    """Counts responses by 4xx/5xx status for ``/metrics``; plain ASGI, so streamed responses pass untouched."""

    def __init__(self, app: ASGIApp, counts: Counter[int]):
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                self.counts[message["status"]] += 1
            await send(message)

        await self.app(scope, receive, counting_send if scope["type"] == "http" else send)


def create_app(db: "Database", *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               allowed_hosts: Iterable[str] = (), read_timeout: float = DEFAULT_READ_TIMEOUT) -> FastAPI:
    """The app for ``db``. ``token``, when set, is required as a bearer token on every API route. The app answers
    to ``localhost``, ``127.0.0.1`` and ``[::1]`` and to the names in ``allowed_hosts`` (any port; ``"*"`` for any
    name), and refuses other ``Host`` headers and other sites' ``Origin`` (``deltamem.server.hosts``). A read in
    ``POST /sql`` waits at most ``read_timeout`` seconds for its view to reflect the latest commit, then answers 503
    saying how far behind the view is; ``GET /views/{view}`` never waits."""
    if not read_timeout > 0:
        raise ValueError(f"read_timeout must be a positive number of seconds, got {read_timeout}")
    signal = CommitSignal(db)
    feed = ChangeFeed(db, signal)
    http_errors: Counter[int] = Counter()
    registry = metrics_registry(db, http_errors)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        signal.start()
        yield
        signal.stop()

    bearer = HTTPBearer(auto_error=False, description="Required when the server was started with a token.")

    def authorize(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token is None:
            return
        if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "Missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    # FastAPI's /docs (Swagger UI) and /redoc, with their scripts served from here (fastapi-offline ships them), not
    # from a CDN: the pages work offline and load nothing from another site. Like the page, they need no token.
    app = FastAPIOffline(
        title="deltamem", version="1", lifespan=lifespan, docs_url="/docs", redoc_url="/redoc",
        static_url="/docs/assets", max_body_size=max_body_bytes,
        description="Continuous views of LLM operators, kept fresh incrementally. Every route but `/` needs "
                    "`Authorization: Bearer <token>` when the server has a token.",
    )
    app.add_middleware(HostGuard, allowed_hosts=list(allowed_hosts))
    app.add_middleware(_ErrorCounter, counts=http_errors)  # added last, so outermost: it counts the refusals too
    guarded = [Depends(authorize)]

    @app.exception_handler(DeltamemError)
    async def caller_error(_request: Request, exc: DeltamemError) -> JSONResponse:
        status = next((code for kind, code in _STATUS.items() if isinstance(exc, kind)), 400)
        return JSONResponse({"detail": str(exc), "error": type(exc).__name__}, status_code=status)

    # --- the page ---------------------------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # --- writes -----------------------------------------------------------------------------------------------------
    @app.post("/tables/{table}/changes", dependencies=guarded, tags=["writes"])
    def post_changes(
        table: str,
        changes: Annotated[list[ChangeItem], Body(min_length=1, max_length=MAX_CHANGES)],
    ) -> Applied:
        """Apply upserts, deletes or Debezium-style events to ``table`` as one version, or nothing on an error."""
        return apply_changes(db, table, changes)

    @app.post("/sql", dependencies=guarded, tags=["writes"])
    def post_sql(statement: reads.SQLRequest) -> reads.SQLResult:
        """Run one statement of deltamem's SQL; ``params`` bind its ``?``, ``$1`` or ``:name`` placeholders."""
        return reads.run_sql(db, statement, read_timeout)

    # --- reads ------------------------------------------------------------------------------------------------------
    @app.get("/tables", dependencies=guarded, tags=["reads"])
    def get_tables() -> list[reads.TableInfo]:
        """Every table: key, columns, TTL and row count."""
        return reads.tables(db)

    @app.get("/views", dependencies=guarded, tags=["reads"])
    def get_views() -> list[reads.ViewInfo]:
        """Every view with its definition, the version it reflects, its lag and what it cost beside a full
        recompute."""
        return reads.views(db)

    @app.get("/views/{view}", dependencies=guarded, tags=["reads"])
    def get_view(view: str, as_of: Annotated[int | None, Query(ge=0)] = None) -> reads.ViewRead:
        """The view's rows at the version it reflects (or ``as_of`` an older one), each row's key, that version and
        the lag. Subscribing with ``after`` set to that version then delivers every later change exactly once."""
        return reads.read_view(db, view, as_of)

    def subscription_start(
        view: str,
        after: Annotated[int | None, Query(ge=-1, description="Start after this version (default: now).")] = None,
        last_event_id: Annotated[str | None, Header(description="Resume after this event id ('version:index').")]
        = None,
    ) -> Cursor:
        # A dependency, so that a bad view or id is a 4xx before the event stream's 200 goes out.
        return feed.start(view, last_event_id, after)

    @app.get("/views/{view}/subscribe", dependencies=guarded, tags=["reads"], response_class=Response,
             responses={200: {"description": "An endless event stream", "content": {"text/event-stream": {}}}})
    async def subscribe(view: str, cursor: Annotated[Cursor, Depends(subscription_start)]) -> EventSourceResponse:
        """Server-sent events, one per change row: ``event: change``, ``data`` is ``{version, diff, key, row}`` and
        ``id`` is ``version:index``. Reconnecting with ``Last-Event-ID`` resumes after that row, losing and repeating
        none. A ``dropped`` event ends the stream when the view is dropped; a comment line every 15 s keeps it open."""

        async def stream() -> AsyncIterator[bytes]:
            # One write per store read, not per row: the rows of a busy view go out in a few large chunks.
            async for batch in feed.batches(view, cursor):
                yield b"".join(event.wire() for event in batch) if batch else KEEPALIVE_COMMENT
            yield format_sse_event(event="dropped", data_str=json.dumps({"view": view}))

        return EventSourceResponse(stream(), headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/views/{view}/rows/{key}/explain", dependencies=guarded, tags=["reads"])
    def explain(view: str, key: str) -> dict[str, Any]:
        """One output: its row, what each operator stored for it, its dependencies (for ``LLM_GENERATE``, the
        prompt's sentences and the attention heat map as data) and its decision log. ``key`` is read as JSON when
        it parses to a string or an integer (``7``, ``"q1"``), else as text."""
        report = db.view(view).explain(reads.parse_key(key))
        return json.loads(json.dumps(report, default=str))

    @app.get("/views/{view}/rows/{key}/heatmap.png", dependencies=guarded, tags=["reads"],
             response_class=Response, responses={200: {"content": {"image/png": {}}}})
    def heatmap(view: str, key: str) -> Response:
        """The attention heat map of one ``LLM_GENERATE`` output as a PNG: output sentences down, context
        sentences across. 404 when the output has no attribution (a backend without attention made it)."""
        return Response(reads.heatmap_png(db, view, reads.parse_key(key)), media_type="image/png")

    @app.get("/usage", dependencies=guarded, tags=["costs"])
    def usage() -> reads.UsageReport:
        """What was paid, by view, beside what a full recompute at every refresh would have paid."""
        return reads.usage(db)

    @app.get("/usage/history", dependencies=guarded, tags=["costs"])
    def usage_history() -> list[reads.CostPoint]:
        """Cumulative cost paid and full-recompute cost, version by version: the data behind the cost chart."""
        return reads.cost_history(db)

    @app.get("/log", dependencies=guarded, tags=["reads"])
    def log(limit: Annotated[int, Query(ge=1, le=500)] = 50) -> list[reads.CommitInfo]:
        """The latest commits, newest first: when, why, and how many rows each table gained, changed or lost."""
        return reads.commit_log(db, limit)

    @app.get("/metrics", dependencies=guarded, tags=["costs"], response_class=PlainTextResponse)
    def metrics() -> PlainTextResponse:
        """Prometheus text: calls, tokens computed and reused, memo savings, full-recompute cost, lag, errors."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app

