"""``deltamem serve``: the HTTP API (FastAPI, with an OpenAPI spec at ``/openapi.json``) and the web page at ``/``.

    from deltamem.server import create_app; app = create_app(db, token=None)

Modules: ``app`` (routes, auth, limits), ``writes`` (change lists applied atomically), ``reads`` (the read models),
``feed`` (server-sent change events that resume by id) and ``metrics`` (Prometheus text).
"""

from deltamem.server.app import create_app

__all__ = ["create_app"]
