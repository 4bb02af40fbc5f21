"""Bad input gets a clear error that names the problem, and changes nothing."""

from __future__ import annotations

import datetime as dt

import pytest

import deltamem as dm
from deltamem.changes import RowWrite, encode_key
from deltamem.errors import ConfigError, NoTable, NoView, PrimaryKeyError, SchemaError, TemplateError
from deltamem.store.base import TableDef
from deltamem.store.sqlite import SQLiteStore
from tests.helpers import scripted_db


@pytest.fixture
def db():
    db = scripted_db()
    docs = db.table("docs", key="id", columns={"id": "int", "text": "text", "year": "int"})
    docs.upsert([{"id": 1, "text": "one", "year": 2001}, {"id": 2, "text": "two", "year": 2002}])
    yield db
    db.close()


def snapshot(db):
    return db.version, db.table("docs").rows(), db.views()


def test_template_with_unknown_column_names_it_and_the_close_match(db):
    before = snapshot(db)
    with pytest.raises(TemplateError, match=r"reads column 'txt'.*Did you mean 'text'\?"):
        db.view("v", db.table("docs").sem_map("Summarise {txt}", out="s"))
    assert snapshot(db) == before


def test_malformed_template_is_rejected():
    with pytest.raises(TemplateError, match="malformed"):
        dm.Relation.sem_map(scripted_db().table("t", key="id", columns={"id": "int"}), "{oops", out="x")


def test_missing_key_fails_the_whole_write(db):
    before = snapshot(db)
    with pytest.raises(PrimaryKeyError, match="no value for its key column 'id'"):
        db.table("docs").upsert([{"id": 3, "text": "ok"}, {"text": "no key"}])
    assert snapshot(db) == before


def test_duplicate_key_in_one_write_is_rejected(db):
    before = snapshot(db)
    with pytest.raises(PrimaryKeyError, match="Key 3 appears twice"):
        db.table("docs").upsert([{"id": 3, "text": "a"}, {"id": 3, "text": "b"}])
    assert snapshot(db) == before


def test_wrong_type_names_column_and_type(db):
    before = snapshot(db)
    with pytest.raises(SchemaError, match=r"column 'year' is int, got 'soon' \(str\)"):
        db.table("docs").upsert([{"id": 3, "text": "fine", "year": 2003}, {"id": 4, "text": "x", "year": "soon"}])
    assert snapshot(db) == before


def test_unknown_column_in_a_row_is_rejected(db):
    with pytest.raises(SchemaError, match=r"unknown column 'titel'"):
        db.table("docs").upsert({"id": 3, "titel": "x"})


def test_bad_key_type_is_rejected(db):
    with pytest.raises(SchemaError, match="column 'id' is int"):
        db.table("docs").upsert({"id": 2.5, "text": "x"})
    with pytest.raises(PrimaryKeyError, match="use a str or an int"):
        db.table("docs").delete(2.5)
    with pytest.raises(PrimaryKeyError, match="key 'id' is int, got '2'"):  # would silently delete nothing
        db.table("docs").delete("2")


def test_unknown_table_and_view_suggest_the_nearest_name(db):
    with pytest.raises(NoTable, match=r'Table "doc" does not exist.*Did you mean \'docs\'\?'):
        db.table("doc")
    db.view("summaries", db.table("docs").sem_map("Summarise {text}", out="s"))
    with pytest.raises(NoView, match=r"Did you mean 'summaries'\?"):
        db.view("summary")


def test_failed_batch_commits_nothing(db):
    before = snapshot(db)
    with pytest.raises(SchemaError):
        with db.batch():
            db.table("docs").upsert({"id": 10, "text": "kept only if the batch commits"})
            db.table("docs").delete(1)
            db.table("docs").upsert({"id": 11, "text": 5})
    assert snapshot(db) == before


def test_batch_commits_all_writes_as_one_version(db):
    version = db.version
    with db.batch() as batch:
        assert db.table("docs").upsert({"id": 10, "text": "ten"}) is None
        db.table("docs").delete(1)
    assert db.version == batch.version == version + 1
    assert [r["id"] for r in db.table("docs").rows()] == [2, 10]


def test_unknown_backend_name_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"Unknown LLM backend 'opnai'. Did you mean 'openai'\?"):
        dm.connect(":memory:", llm="opnai")


def test_table_without_columns_cannot_be_queried_until_it_has_them():
    db = scripted_db()
    empty = db.table("empty", key="id")
    with pytest.raises(SchemaError, match='Table "empty" has no columns yet'):
        empty.sem_map("Summarise {text}", out="s")
    empty.upsert({"id": 1, "text": "now it has columns"})
    assert empty.sem_map("Summarise {text}", out="s").columns == ("id", "text", "s")


def test_recreating_a_view_with_another_definition_is_refused(db):
    db.view("v", db.table("docs").sem_map("Summarise {text}", out="s"))
    db.view("v", db.table("docs").sem_map("Summarise {text}", out="s"))  # the same definition reopens it
    with pytest.raises(dm.DeltamemError, match='View "v" exists with another definition'):
        db.view("v", db.table("docs").sem_map("Shorten {text}", out="s"))


def test_bad_ttl_and_expire_mode_are_named():
    db = scripted_db()
    with pytest.raises(SchemaError, match="Cannot read duration 'soon'"):
        db.table("t", key="id", ttl="soon")
    with pytest.raises(ConfigError, match="Unknown expire mode 'retrakt'. Did you mean 'retract'"):
        db.table("t", key="id", ttl="1 day", expire="retrakt")


@pytest.mark.parametrize("column, value", [
    ("score", float("nan")), ("score", float("inf")), ("score", float("-inf")),
    ("meta", {"weights": [1.0, float("nan")]}),
])
def test_nan_and_infinity_are_refused_naming_table_and_column(db, column, value):
    scores = db.table("scores", key="id", columns={"id": "int", "score": "float", "meta": "json"})
    scores.upsert({"id": 1, "score": 0.5})
    before = db.version, scores.rows()
    with pytest.raises(SchemaError, match=rf"table 'scores': column '{column}' holds .*not a finite number"):
        scores.upsert([{"id": 2, "score": 1.5}, {"id": 3, column: value}])
    with pytest.raises(SchemaError, match="not a finite number"):
        with db.batch():
            db.table("docs").upsert({"id": 10, "text": "kept only if the batch commits"})
            scores.upsert({"id": 4, column: value})
    assert (db.version, scores.rows()) == before and db.table("docs").get(10) is None


@pytest.mark.parametrize("value, shown", [
    (dt.datetime(2024, 5, 1), r"datetime.datetime\(2024, 5, 1, 0, 0\) \(datetime\), which is not a JSON value"),
    ({1, 2}, r"\{1, 2\} \(set\), which is not a JSON value"),
    ({"nested": [b"bytes"]}, r"b'bytes' \(bytes\), which is not a JSON value"),
    ({1: "one"}, r"an object key 1 \(int\); JSON object keys are strings"),
])
def test_values_json_cannot_hold_are_refused_at_validation_not_at_commit(db, value, shown):
    before = snapshot(db)
    typed = db.table("notes", key="id", columns={"id": "int", "meta": "json"})
    untyped = db.table("loose", key="id")  # columns come from the first row: a datetime would make a json column
    bad = {"id": 2, "meta": value}
    for table, rows in ((typed, [{"id": 1, "meta": "fine"}, bad]), (untyped, [bad])):
        with pytest.raises(SchemaError, match=rf"table '{table.name}': column 'meta' holds {shown}"):
            table.upsert(rows)
        assert table.rows() == []
    assert snapshot(db)[:2] == before[:2]


def test_the_store_never_writes_json_that_sqlite_cannot_read():
    store = SQLiteStore(":memory:")
    with pytest.raises(ValueError, match="not JSON compliant"):
        store.commit([RowWrite("t", encode_key(1), {"id": 1, "x": float("nan")})], committed_at=0.0,
                     table_defs=[TableDef("t", "id")])
    assert store.commit([], committed_at=0.0)[0] == 1  # the failed commit took no version
