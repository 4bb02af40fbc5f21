"""The Python API as a user holds it: keys as typed values everywhere, pandas in and out, NumPy scalars."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

import deltamem as dm
from deltamem.errors import ConfigError, PrimaryKeyError, SchemaError
from tests.helpers import scripted_db


def questions_view(db: dm.Database) -> dm.View:
    questions = db.table("questions", key="qid", columns={"qid": "text", "question": "text"})
    questions.upsert([{"qid": "q1", "question": "Who?"}, {"qid": "q2", "question": "What?"}])
    return db.view("gists", questions.sem_map("Sum up {question}", out="gist"))


def test_keys_come_back_as_the_values_that_history_and_explain_take():
    db = scripted_db()
    view = questions_view(db)
    read = view.rows(fresh=True)
    assert read.keys == ["q1", "q2"]  # not '"q1"', the stored text of the key
    assert [h.row["qid"] for h in view.history(read.keys[1])] == ["q2"]
    assert view.explain(read.keys[1])["row"]["qid"] == "q2"
    db.table("questions").upsert({"qid": "q2", "question": "What now?"})
    after = view.rows(fresh=True)
    changes = view.changes(after.version, after.version)
    assert [(c.diff, c.key) for c in changes] == [(-1, "q2"), (1, "q2")]
    assert len(view.history(changes[0].key)) == 2

    seen: list[dm.ChangeRow] = []
    done = threading.Event()
    with view.subscribe(lambda change: (seen.append(change), len(seen) == 2 and done.set())):
        assert done.wait(10)
    assert [c.key for c in seen] == ["q1", "q2"]  # the snapshot, keyed as the user keys

    numbers = db.table("numbers", key="n", columns={"n": "int", "word": "text"})
    numbers.upsert([{"n": 2, "word": "two"}, {"n": 10, "word": "ten"}])
    spelled = db.view("spelled", numbers.sem_map("Spell {word}", out="spelling"))
    assert spelled.rows(fresh=True).keys == [2, 10]  # ints stay ints, in numeric order
    assert spelled.history(np.int64(10))[0].row["word"] == "ten"  # a NumPy integer is the same key
    db.close()


def test_explain_reports_every_key_once_encoded():
    db = scripted_db()
    questions = db.table("questions", key="qid", columns={"qid": "text", "question": "text"})
    docs = db.table("docs", key="id", columns={"id": "text", "title": "text", "text": "text"})
    questions.upsert({"qid": "q2", "question": "Who was born?"})
    docs.upsert({"id": "d1", "title": "Alan", "text": "Alan was born in 1912."})
    view = db.generate("answers", prompt="Answer.", context=questions, data_source=docs)
    view.rows(fresh=True)
    report = view.explain("q2")
    assert report["key"] == "q2" and [d["key"] for d in report["decisions"]] == ["q2"]
    assert {p["doc"] for p in report["dependencies"]["1:llm_generate"]["provenance"]} == {"d1"}
    text = json.dumps({k: report[k] for k in ("key", "decisions", "dependencies")})
    assert '"key": "q2"' in text and '\\"' not in text  # no key printed as a JSON string inside a string
    db.close()


def test_to_pandas_gives_the_rows_now_and_as_of_a_version():
    pytest.importorskip("pandas")
    db = scripted_db()
    view = questions_view(db)
    first = view.rows(fresh=True).version
    db.table("questions").delete("q1")
    frame = view.to_pandas(fresh=True)
    assert list(frame.columns) == ["qid", "question", "gist"] and frame["qid"].tolist() == ["q2"]
    old = view.to_pandas(version=first)
    assert old["qid"].tolist() == ["q1", "q2"] and old.loc[0, "gist"] == view.history("q1")[0].row["gist"]
    db.close()


def test_upsert_of_a_dataframe_stores_missing_values_as_null_and_numpy_values_as_python():
    pd = pytest.importorskip("pandas")
    db = scripted_db()
    papers = db.table("papers", key="id", columns={"id": "int", "title": "text", "year": "int", "score": "float",
                                                   "ok": "bool"})
    frame = pd.DataFrame({"id": [1, 2, 3], "title": ["Streams", None, "Logs"], "year": [2021, np.nan, 2019],
                          "score": [0.5, np.nan, 1.25], "ok": [True, False, True]})
    written = papers.upsert(frame)
    assert (written.version, written.inserted) == (1, 3)
    assert papers.rows() == [
        {"id": 1, "title": "Streams", "year": 2021, "score": 0.5, "ok": True},
        {"id": 2, "title": None, "year": None, "score": None, "ok": False},
        {"id": 3, "title": "Logs", "year": 2019, "score": 1.25, "ok": True},
    ]
    assert all(type(row["year"]) is int for row in papers.rows() if row["year"] is not None)
    assert papers.upsert(frame).version is None  # the same frame again changes nothing
    assert papers.upsert({"id": np.int64(4), "year": np.int32(2020), "score": np.float32(0.5), "ok": np.bool_(True)})
    assert papers.get(4) == {"id": 4, "title": None, "year": 2020, "score": 0.5, "ok": True}
    assert papers.delete(np.int64(4)).deleted == 1
    with pytest.raises(PrimaryKeyError, match="no value for its key column 'id'"):
        papers.upsert(pd.DataFrame({"id": [5, np.nan], "title": ["a", "b"]}))
    with pytest.raises(SchemaError, match="not a finite number"):  # in a dict row NaN is a value, and refused
        papers.upsert({"id": 6, "score": float("nan")})
    assert papers.get(5) is None and db.version == 3  # the frame, row 4, its delete: nothing of the failures
    db.close()


def test_to_pandas_without_pandas_says_how_to_install_it(monkeypatch):
    import builtins

    db = scripted_db()
    view = questions_view(db)
    real_import = builtins.__import__

    def no_pandas(name, *args, **kwargs):
        if name == "pandas":
            raise ImportError("No module named 'pandas'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ConfigError, match=r"pip install 'deltamem\[pandas\]'"):
        view.to_pandas()
    db.close()
