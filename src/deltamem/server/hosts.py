"""The ``Host`` and ``Origin`` a request may carry: the server's guard against DNS rebinding and cross-site requests.

    app = HostGuard(app, allowed_hosts=["box.lan"])   # also answers to localhost, 127.0.0.1 and [::1], on any port

A web page on another site can make the user's browser call the server in two ways, and each leaves a mark. DNS
rebinding points the page's own name at 127.0.0.1, so its requests carry ``Host: attacker.example``: a ``Host``
whose name is not allowed is refused with 400. A plain cross-site request carries the page's ``Origin``: an
``Origin`` other than the server's own (the request's ``Host``) is refused with 403, reads included. Requests without
an ``Origin`` (curl, scripts, the browser opening the page) are not cross-site and pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
ANY_HOST = "*"  # allows every Host, e.g. behind a proxy that checks it; Origin is still checked
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def host_name(value: str) -> str:
    """The name in a ``Host`` header or an allowed-hosts entry: lower case, without port or trailing dot, an IPv6
    address in brackets (``"[::1]:8000"`` and ``"::1"`` are both ``"[::1]"``)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    if value.count(":") > 1:  # a bare IPv6 address, as --allow-host ::1 writes it
        return f"[{value}]"
    return value.partition(":")[0].rstrip(".")


def _endpoint(netloc: str, scheme: str) -> tuple[str, int | None] | None:
    """(name, port) of ``host[:port]`` reached over ``scheme``, the port None when it is the scheme's default (so
    ``localhost`` and ``localhost:80`` are one endpoint over http); None for a malformed one or another scheme."""
    if not netloc or scheme not in DEFAULT_PORTS:
        return None
    try:
        port = urlsplit(f"//{netloc}").port
    except ValueError:
        return None
    return host_name(netloc), None if port in (None, DEFAULT_PORTS[scheme]) else port


class HostGuard:
    """Plain ASGI middleware: refuses a request whose ``Host`` is not allowed, or whose ``Origin`` is another site's
    (see the module docstring); everything else, lifespan included, passes untouched."""

    def __init__(self, app: ASGIApp, allowed_hosts: Iterable[str] = ()):
        self.app = app
        extra = [host_name(host) for host in allowed_hosts if host.strip()]
        self.any_host = ANY_HOST in extra
        self.allowed = {*LOCAL_HOSTS, *extra} - {ANY_HOST}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            refusal = self.refusal(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: Scope) -> JSONResponse | None:
        """The answer refusing this request, or None when it may go on."""
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        host = headers.get("host")
        origin = headers.get("origin")
        # No Host: not a browser (every browser sends one), so not rebinding; HTTP/1.0 clients may leave it out.
        if host is not None and not self.any_host and host_name(host) not in self.allowed:
            name = host_name(host)
            return JSONResponse({"detail": (
                f"Host {host!r} is not allowed: this server answers to {', '.join(sorted(self.allowed))} (any port). "
                "A web page can reach a local server under its own name (DNS rebinding), so other names are "
                f"refused; to allow {name!r}, start the server with --allow-host {name} (or pass "
                f"allowed_hosts=[{name!r}] to create_app)")}, status_code=400)
        if origin is None:
            return None
        scheme = scope.get("scheme", "http")
        own = f"{scheme}://{host}" if host else "this server"
        parts = urlsplit(origin)  # "null" (a sandboxed frame, a file:// page) has no endpoint and is refused
        mine = None if host is None else _endpoint(host, scheme)
        if mine is not None and _endpoint(parts.netloc, parts.scheme) == mine:
            return None
        return JSONResponse({"detail": (
            f"Origin {origin!r} is not this server's origin ({own}): requests from another site's pages are refused. "
            f"Open the page from {own}/, or send the request without an Origin header")}, status_code=403)
