"""Background maintenance: an unexpected failure is surfaced to readers instead of hanging them."""

from __future__ import annotations

import pytest

from deltamem.errors import MaintenanceError
from deltamem.llm.scripted import ScriptedLLM
from tests.helpers import scripted_db


class BrokenLLM(ScriptedLLM):
    """A backend with a bug: it raises something other than BackendError, which the runner does not retry."""

    def complete(self, request):
        raise RuntimeError("backend bug")


def test_a_crash_in_background_maintenance_reaches_the_reader():
    db = scripted_db(llm=BrokenLLM(), background=True)
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "x"})
    with pytest.raises(MaintenanceError, match="View maintenance stopped: backend bug"):
        view.rows(fresh=True, timeout=10)
    assert view.rows().lag >= 1  # the commit stands; only the view is behind
    db.close()


def test_inline_maintenance_raises_the_error_directly():
    db = scripted_db(llm=BrokenLLM())
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text"})
    view = db.view("v", docs.sem_map("Summarise {text}", out="s"))
    docs.upsert({"id": 1, "text": "x"})
    with pytest.raises(RuntimeError, match="backend bug"):
        view.rows(fresh=True)
    assert docs.rows() == [{"id": 1, "text": "x"}]
