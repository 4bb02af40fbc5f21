"""The engine on the real local model: a view over 2Wiki passages, maintained through changes, offline."""

from __future__ import annotations

import pytest

import deltamem as dm
from deltamem.bench.datasets import default_data_dir, load_passages
from tests.helpers import NO_WAIT

pytestmark = pytest.mark.integration


def test_a_mapped_view_on_the_local_model_pays_only_for_changed_rows(local_llm, tmp_path):
    passages = load_passages(default_data_dir() / "2wikimultihopqa" / "dev_000_099.json", limit=3)
    db = dm.connect(str(tmp_path / "local.db"), llm=local_llm, embedder="test", background=False, retry=NO_WAIT)
    table = db.table("passages", key="id", columns={"id": "text", "title": "text", "text": "text"})
    table.upsert(passages)
    view = db.view("years", table.sem_extract("{text}", fields={"born": "the year of birth, or null"},
                                              max_tokens=24))
    first = view.rows(fresh=True)
    assert len(first) == 3 and db.usage().calls == 3
    assert db.usage().prompt_tokens > 100 and db.usage().output_tokens > 0  # counted by the backend itself

    edited = {**passages[0], "text": passages[0]["text"] + " This sentence was added."}
    table.upsert(edited)
    table.delete(passages[1]["id"])
    second = view.rows(fresh=True)
    assert db.usage().calls == 4  # one call for the edit, none for the delete
    assert [r["id"] for r in second] == sorted([passages[0]["id"], passages[2]["id"]])

    table.upsert(passages[1])  # its old text: answered by the memo, identical output
    third = view.rows(fresh=True)
    assert db.usage().calls == 4 and db.usage().memo_hits == 1
    assert [r for r in third if r["id"] == passages[1]["id"]] == [r for r in first if r["id"] == passages[1]["id"]]
    db.close()
