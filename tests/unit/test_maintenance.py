"""Background maintenance: a view's failure is surfaced to its readers instead of hanging them, and the other views
go on being maintained."""

from __future__ import annotations

import time

import pytest

import deltamem as dm
from deltamem.errors import BackendError, MaintenanceError
from deltamem.llm.scripted import HashingEmbedder, ScriptedLLM
from tests.helpers import NO_WAIT, scripted_db


class BrokenLLM(ScriptedLLM):
    """A backend with a bug: it raises something other than BackendError, which the runner does not retry."""

    def complete(self, request):
        raise RuntimeError("backend bug")


def test_a_crash_in_background_maintenance_reaches_the_reader():
    db = scripted_db(llm=BrokenLLM(), background=True)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "x"})
    with pytest.raises(MaintenanceError, match='view "v" failed .*RuntimeError: backend bug'):
        view.rows(fresh=True, timeout=10)
    assert view.rows().lag >= 1  # the commit stands; only the view is behind
    assert "backend bug" in view.rows().error
    db.close()


def test_inline_maintenance_raises_the_error_directly():
    db = scripted_db(llm=BrokenLLM())
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "x"})
    with pytest.raises(RuntimeError, match="backend bug"):
        view.rows(fresh=True)
    assert docs.rows() == [{"id": 1, "text": "x"}]


class BrokenEmbedder(HashingEmbedder):
    """Raises ``error`` on every call while ``broken``."""

    def __init__(self, error: Exception):
        super().__init__()
        self.error = error
        self.broken = True

    def embed(self, texts):
        if self.broken:
            raise self.error
        return super().embed(texts)


@pytest.mark.parametrize(("operator", "error"), [
    ("sem_search", BackendError("503 Service Unavailable")),  # the runner's retries spent, the version fails
    ("sem_index", RuntimeError("embedder bug")),  # not a BackendError: the runner does not catch it
])
def test_a_view_whose_embedder_raises_does_not_stop_the_maintenance_of_the_others(operator, error):
    embedder = BrokenEmbedder(error)
    db = dm.connect(":memory:", llm="test", embedder=embedder, background=True, poll_interval=0.02, retry=NO_WAIT)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    plain = db.view("plain", docs.sem_map("Summarise {text}", out="s"))
    relation = docs.sem_search("red apple", k=2, column="text") if operator == "sem_search" else \
        docs.sem_index("text")
    vectors = db.view("vectors", relation)
    docs.upsert([{"id": 1, "text": "red apple"}, {"id": 2, "text": "blue sea"}])
    assert len(plain.rows(fresh=True, timeout=10)) == 2
    docs.upsert({"id": 3, "text": "green apple"})  # after the failure, maintenance goes on: the other view keeps up
    assert len(plain.rows(fresh=True, timeout=10)) == 3
    assert db.maintainer.error is None and plain.rows().error is None

    with pytest.raises(MaintenanceError, match=f'view "vectors" failed .*{type(error).__name__}'):
        vectors.rows(fresh=True, timeout=10)  # the failing view reports its error
    assert str(error) in vectors.rows().error and vectors.rows().lag >= 1

    embedder.broken = False  # the failing view is tried again, after its backoff, and catches up
    deadline = time.monotonic() + 10
    while vectors.rows().lag and time.monotonic() < deadline:
        time.sleep(0.02)
    read = vectors.rows(fresh=True, timeout=10)
    assert read.lag == 0 and read.error is None and {row["id"] for row in read} >= {1, 3}
    db.close()
