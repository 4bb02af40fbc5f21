"""A real server on a free loopback port (uvicorn in a thread), over a database seeded with a few views."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import uvicorn

import deltamem as dm
from deltamem.server import create_app
from tests.helpers import NO_WAIT, AttendingLLM

DOCS = [
    {"id": "refunds", "text": "Refunds are issued within 14 days. Store credit never expires."},
    {"id": "shipping", "text": "Orders ship in two business days. Express shipping costs 9 euros."},
    {"id": "support", "text": "Support answers chats from 9 to 17 on weekdays."},
]
QUESTIONS = [
    {"id": "q1", "question": "Within how many days are refunds issued?"},
    {"id": "q2", "question": "What does express shipping cost?"},
]


class LiveServer:
    """uvicorn serving ``app`` on 127.0.0.1 and a free port, on a daemon thread, until ``stop()``."""

    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def seed(db: dm.Database) -> None:
    """Tables ``docs`` and ``questions``; views ``summaries`` (sem_map) and ``answers`` (LLM_GENERATE)."""
    docs = db.table("docs", key="id", columns={"id": "text", "text": "text"})
    questions = db.table("questions", key="id", columns={"id": "text", "question": "text"})
    docs.upsert(DOCS)
    questions.upsert(QUESTIONS)
    db.view("summaries", docs.sem_map("In five words, what is this about? {text}", out="summary"))
    db.generate("answers", prompt="Answer from the documents.", context=questions, data_source=docs)
    db.maintain(timeout=30)


@pytest.fixture
def seeded_db(tmp_path) -> Iterator[dm.Database]:
    db = dm.connect(str(tmp_path / "served.db"), llm=AttendingLLM(), embedder="test", retry=NO_WAIT,
                    poll_interval=0.2)
    seed(db)
    yield db
    db.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., LiveServer]]:
    """``serve(db, token=None, **options)`` starts a server for ``db``; every one started is stopped afterwards."""
    started: list[LiveServer] = []

    def start(db: dm.Database, **options) -> LiveServer:
        server = LiveServer(create_app(db, **options))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
