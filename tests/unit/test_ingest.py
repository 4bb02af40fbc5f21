"""Loading files: JSON Lines, CSV and Debezium events commit as one version, and a bad record changes nothing."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from deltamem.cli import app
from deltamem.errors import ConfigError, LoadError, NoTable
from deltamem.ingest import detect_format, load_file
from tests.helpers import scripted_db

runner = CliRunner()


def _jsonl(path, records):
    path.write_text("".join(("null" if r is None else json.dumps(r)) + "\n" for r in records))
    return path


def _event(op, before=None, after=None, envelope=False):
    event = {"before": before, "after": after, "op": op, "source": {"table": "docs"}, "ts_ms": 1}
    return {"schema": {}, "payload": event} if envelope else event


@pytest.fixture
def db():
    database = scripted_db()
    yield database
    database.close()


def test_jsonl_creates_the_table_with_key_and_counts_each_kind(db, tmp_path):
    first = _jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "one"}, {"id": 2, "text": "two", "n": 2}])
    result = load_file(db, "docs", first, key="id")
    assert (result.inserted, result.updated, result.deleted, result.created) == (2, 0, 0, True)
    assert result.version == db.version
    assert db.table("docs").rows() == [{"id": 1, "text": "one", "n": None}, {"id": 2, "text": "two", "n": 2}]

    again = _jsonl(tmp_path / "b.jsonl", [{"id": 1, "text": "one"}, {"id": 2, "text": "TWO"}, {"id": 3, "text": "x"}])
    result = load_file(db, "docs", again)
    assert (result.inserted, result.updated, result.unchanged, result.records) == (1, 1, 1, 3)
    assert db.table("docs").get(2) == {"id": 2, "text": "TWO", "n": None}


def test_a_whole_file_is_one_version_and_the_last_record_of_a_key_wins(db, tmp_path):
    before = db.version
    path = _jsonl(tmp_path / "a.jsonl", [{"id": 1, "text": "v1"}, {"id": 1, "text": "v2"}, {"id": 2, "text": "x"}])
    result = load_file(db, "docs", path, key="id")
    assert result.version == db.version == before + 1
    assert db.table("docs").get(1)["text"] == "v2"


def test_missing_table_without_key_is_an_error(db, tmp_path):
    path = _jsonl(tmp_path / "a.jsonl", [{"id": 1}])
    with pytest.raises(NoTable, match="pass --key"):
        load_file(db, "docs", path)


@pytest.mark.parametrize("record, problem", [
    ({"text": "no key"}, "no value for its key column 'id'"),
    ({"id": 3, "txt": "typo"}, "unknown column 'txt'. Did you mean 'text'?"),
    ({"id": 3, "text": 7}, "column 'text' is text, got 7"),
    ({"id": 1.5, "text": "x"}, "key 'id' must be a string or an integer, got 1.5"),
])
def test_a_bad_record_names_its_line_and_changes_nothing(db, tmp_path, record, problem):
    load_file(db, "docs", _jsonl(tmp_path / "ok.jsonl", [{"id": 1, "text": "kept"}]), key="id")
    version, rows = db.version, db.table("docs").rows()
    path = _jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "changed"}, {"id": 2, "text": "new"}, record])
    with pytest.raises(LoadError) as caught:
        load_file(db, "docs", path)
    assert caught.value.line == 3
    assert problem in str(caught.value) and "line 3" in str(caught.value)
    assert str(caught.value).endswith("Nothing was loaded.")
    assert db.version == version and db.table("docs").rows() == rows


def test_a_bad_record_in_a_new_table_creates_no_table(db, tmp_path):
    path = _jsonl(tmp_path / "bad.jsonl", [{"id": 1, "text": "a"}, {"text": "keyless"}])
    with pytest.raises(LoadError, match="line 2"):
        load_file(db, "docs", path, key="id")
    assert "docs" not in db.tables() and db.version == 0


def test_nan_and_infinity_in_a_file_name_line_table_and_column_and_change_nothing(db, tmp_path):
    problem = "column 'score' holds nan, which is not a finite number (NaN and Infinity cannot be stored)"
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1, "score": 0.5}\n{"id": 2, "score": NaN}\n')  # Python's json reads the NaN literal
    with pytest.raises(LoadError, match=rf"line 2: the record for table 'scores': {re.escape(problem)}"):
        load_file(db, "scores", path, key="id")
    assert "scores" not in db.tables() and db.version == 0
    load_file(db, "scores", _jsonl(tmp_path / "ok.jsonl", [{"id": 1, "score": 0.5}]), key="id")
    version = db.version
    with pytest.raises(LoadError, match=rf"line 2: the record for table 'scores': {re.escape(problem)}"):
        load_file(db, "scores", path)
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("id,score\n3,1.5\n4,-inf\n")
    with pytest.raises(LoadError, match=r"line 3: .*column 'score' holds -inf, which is not a finite number"):
        load_file(db, "scores", csv_path)
    assert db.version == version and db.table("scores").rows() == [{"id": 1, "score": 0.5}]
    csv_path.write_text("id,name\n1,Nan\n2,Inf\n")  # words that float() reads: a text column, not a float one
    load_file(db, "people", csv_path, key="id")
    assert db.table("people").rows() == [{"id": 1, "name": "Nan"}, {"id": 2, "name": "Inf"}]


def test_invalid_json_and_non_objects_name_the_line(db, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"id": 1}\n\n{"id": 2,}\n')
    with pytest.raises(LoadError, match=r"line 3: is not valid JSON"):
        load_file(db, "docs", path, key="id")
    path.write_text('{"id": 1}\n[1, 2]\n')
    with pytest.raises(LoadError, match="line 2: expected a JSON object, got list"):
        load_file(db, "docs", path, key="id")


@pytest.mark.parametrize("text, line, message", [
    ('{"id": 1, "text": "a"}\n{"id": 2, "text": "b",}\n', 2,
     "is not valid JSON at column 23 (after '{\"id\": 2, \"text\": \"b\",'): Expecting property name"),
    ('{"id": 1, "text": "ééé", "x": tru}\n', 1,  # columns count characters, as an editor does, not bytes
     "is not valid JSON at column 31 (after '1, \"text\": \"ééé\", \"x\": '): Expecting value"),
    ('{"id": 1,\n "text": "a"}\n', 1,  # a pretty-printed object: the error is at the end of its first line
     "at column 10 (after '{\"id\": 1,'): Expecting property name enclosed in double quotes; the line ends inside "
     "the object: JSON Lines wants each object whole on one line"),
    ('[\n {"id": 1},\n {"id": 2 "text": "b"}\n]\n', 3,  # a JSON array: the line and column in the file
     "at column 11 (after '{\"id\": 2 '): Expecting ',' delimiter"),
])
def test_invalid_json_names_the_column_and_the_text_before_it(db, tmp_path, text, line, message):
    path = tmp_path / ("bad.json" if text.startswith("[") else "bad.jsonl")
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LoadError) as caught:
        load_file(db, "docs", path, key="id")
    assert caught.value.line == line and message in caught.value.problem


def test_a_byte_order_mark_is_not_part_of_the_first_record(db, tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"id": 1, "text": "a"}\n{"id": 2, "text": "b"}\n')
    assert load_file(db, "docs", jsonl, key="id").inserted == 2
    csv_path = tmp_path / "bom.csv"
    csv_path.write_bytes(b'\xef\xbb\xbfid,text\n3,c\n')
    assert load_file(db, "docs", csv_path).inserted == 1
    assert [r["id"] for r in db.table("docs").rows()] == [1, 2, 3]


def test_csv_converts_to_the_column_types_and_infers_them_for_a_new_table(db, tmp_path):
    path = tmp_path / "people.csv"
    path.write_text('id,name,age,score,member\n1,Ada,36,1.5,true\n2,"Grace, H.",,2,false\n3,"multi\nline",7,3,\n')
    result = load_file(db, "people", path, key="id")
    assert result.inserted == 3
    assert db.table("people").rows() == [
        {"id": 1, "name": "Ada", "age": 36, "score": 1.5, "member": True},
        {"id": 2, "name": "Grace, H.", "age": None, "score": 2.0, "member": False},
        {"id": 3, "name": "multi\nline", "age": 7, "score": 3.0, "member": None},
    ]
    bad = tmp_path / "bad.csv"
    bad.write_text('id,name,age\n4,"two\nlines",40\n5,Bob,old\n')  # record 2 starts on line 4
    with pytest.raises(LoadError, match=r"line 4: column 'age' is int, got 'old'"):
        load_file(db, "people", bad)
    bad.write_text("id,nme\n4,Bob\n")
    with pytest.raises(LoadError, match=r"line 1: unknown column 'nme'. Did you mean 'name'\?"):
        load_file(db, "people", bad)
    bad.write_text("id,name\n4,Bob,extra\n")
    with pytest.raises(LoadError, match="line 2: has 3 fields, the header has 2"):
        load_file(db, "people", bad)
    assert len(db.table("people").rows()) == 3


@pytest.mark.parametrize("envelope", [False, True])
def test_debezium_events_create_update_delete_and_snapshot_reads(db, tmp_path, envelope):
    events = [
        _event("r", after={"id": 1, "text": "snapshot"}, envelope=envelope),
        _event("c", after={"id": 2, "text": "created"}, envelope=envelope),
        _event("c", after={"id": 3, "text": "doomed"}, envelope=envelope),
        None,  # a Kafka tombstone
    ]
    result = load_file(db, "docs", _jsonl(tmp_path / "events.json", events), key="id")
    assert (result.inserted, result.created) == (3, True)
    events = [
        _event("u", before={"id": 1, "text": "snapshot"}, after={"id": 1, "text": "updated"}, envelope=envelope),
        _event("d", before={"id": 3, "text": "doomed"}, envelope=envelope),
        _event("u", before={"id": 2}, after={"id": 20, "text": "created"}, envelope=envelope),  # the key changed
    ]
    result = load_file(db, "docs", _jsonl(tmp_path / "more.jsonl", events))
    assert (result.inserted, result.updated, result.deleted) == (1, 1, 2)
    assert db.table("docs").rows() == [{"id": 1, "text": "updated"}, {"id": 20, "text": "created"}]


def test_debezium_format_is_detected_from_the_first_record_only_in_auto_mode(db, tmp_path):
    path = _jsonl(tmp_path / "rows.jsonl", [{"id": 1, "op": "c", "after": "a column, not an event"}])
    load_file(db, "t", path, key="id", format="jsonl")
    assert db.table("t").get(1) == {"id": 1, "op": "c", "after": "a column, not an event"}
    assert detect_format("x.ndjson") is detect_format("x.json") is detect_format("x.jsonl")
    with pytest.raises(ConfigError, match="pass --format"):
        detect_format("x.txt")
    with pytest.raises(ConfigError, match="Did you mean 'debezium'"):
        detect_format("x.json", "debezum")


@pytest.mark.parametrize("event, problem", [
    ({"op": "t", "before": None, "after": None}, "op 't' (truncate); supported ops are 'c' (create)"),
    ({"op": "x", "after": {"id": 2}}, "op 'x'"),
    ({"op": "d", "before": None, "after": None}, "op 'd' needs 'before' with the key column 'id'"),
    ({"op": "c", "before": None, "after": None}, "op 'c' needs an 'after' row"),
    ({"op": "c", "after": {"id": 2, "text": "x", "extra": 1}}, "unknown column 'extra'"),
    ({"op": "d", "before": {"id": "1"}}, "key 'id' is int, got '1'"),
])
def test_a_bad_change_event_names_its_line_and_changes_nothing(db, tmp_path, event, problem):
    load_file(db, "docs", _jsonl(tmp_path / "ok.jsonl", [{"id": 1, "text": "kept"}]), key="id")
    version = db.version
    path = _jsonl(tmp_path / "bad.jsonl", [_event("c", after={"id": 5, "text": "new"}), event])
    with pytest.raises(LoadError) as caught:
        load_file(db, "docs", path, format="debezium")
    assert caught.value.line == 2 and problem in str(caught.value)
    assert db.version == version and db.table("docs").rows() == [{"id": 1, "text": "kept"}]


def test_load_command_prints_counts_and_the_version_and_refreshes_views(tmp_path):
    db_path = tmp_path / "app.db"
    path = _jsonl(tmp_path / "docs.jsonl", [{"id": 1, "text": "alpha"}, {"id": 2, "text": "beta"}])
    args = ["--llm", "test", "--embedder", "test"]
    result = runner.invoke(app, ["load", str(db_path), "docs", str(path), "--key", "id", *args])
    assert result.exit_code == 0, result.output
    assert "docs (created table 'docs'): 2 inserted, 0 updated, 0 deleted, 0 unchanged from 2 records; " \
           "committed version 1" in " ".join(result.output.split())

    database = scripted_db(str(db_path))
    database.view("summaries", database.table("docs").sem_map("Summarise {text}", out="summary"))
    database.close()
    _jsonl(path, [_event("d", before={"id": 1}), _event("u", before={"id": 2}, after={"id": 2, "text": "gamma"})])
    result = runner.invoke(app, ["load", str(db_path), "docs", str(path), *args])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())  # rich wraps at the terminal's width
    assert "0 inserted, 1 updated, 1 deleted" in text and "committed version 2" in text
    database = scripted_db(str(db_path))
    read = database.view("summaries").rows()
    assert read.lag == 0 and [row["text"] for row in read] == ["gamma"]  # maintained by the load command
    database.close()

    _jsonl(path, [{"id": 9, "txt": "typo"}])
    result = runner.invoke(app, ["load", str(db_path), "docs", str(path), "--format", "jsonl", *args])
    assert result.exit_code == 1
    assert "Error: " in result.output and "line 1: the record for table 'docs' has unknown column 'txt'" in result.output

    result = runner.invoke(app, ["load", str(tmp_path / "new.db"), "docs", str(path), *args])
    assert result.exit_code == 1 and "pass --key" in result.output


def test_a_json_array_loads_as_rows_and_errors_name_the_line_where_the_element_starts(db, tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text('[\n  {"title": "Ada", "text": "one"},\n  {"title": "Alan",\n   "text": "two"}\n]\n')
    result = load_file(db, "corpus", path, key="title")  # .json holding an array: recognised, no format needed
    assert (result.records, result.inserted, result.created) == (2, 2, True)
    assert db.table("corpus").rows() == [{"title": "Ada", "text": "one"}, {"title": "Alan", "text": "two"}]
    path.write_text('[\n  {"title": "Grace", "text": "three"},\n\n  {"title": "Bad",\n   "txt": "x"}\n]')
    with pytest.raises(LoadError) as caught:
        load_file(db, "corpus", path, format="json")
    assert caught.value.line == 4 and "unknown column 'txt'" in str(caught.value)
    path.write_text('[{"title": "a", "text": "b"}\n {"title": "c"}]')
    with pytest.raises(LoadError, match=r"line 2: expected ',' or '\]' after an element of the JSON array"):
        load_file(db, "corpus", path, format="json")
    with pytest.raises(LoadError, match="JSON Lines wants one object per line: for an array, use format json"):
        load_file(db, "corpus", path, format="jsonl")
    assert len(db.table("corpus").rows()) == 2


def test_limit_reads_the_first_records_and_repeated_keys_are_counted_not_silent(db, tmp_path):
    rows = [{"title": "A", "text": "1"}, {"title": "B", "text": "2"}, {"title": "A", "text": "3"},
            {"title": "C", "text": "4"}]
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(rows))
    result = load_file(db, "t", path, key="title", limit=3)
    assert (result.records, result.inserted, result.superseded) == (3, 2, 1)
    assert db.table("t").rows() == [{"title": "A", "text": "3"}, {"title": "B", "text": "2"}]  # the later A won
    assert "(1 replaced by a later record with the same key)" in result.summary()
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("title,text\nD,5\nE,6\nF,7\n")
    assert load_file(db, "t", csv_path, limit=1).inserted == 1 and db.table("t").get("E") is None
    lines = _jsonl(tmp_path / "rows.jsonl", [{"title": "G", "text": "8"}, {"title": "H", "text": "9"}])
    assert load_file(db, "t", lines, limit=0).version is None  # no records: nothing committed
    with pytest.raises(ConfigError, match="limit takes a whole number"):
        load_file(db, "t", lines, limit=-1)


def test_load_command_takes_json_and_limit(tmp_path):
    path = tmp_path / "corpus.json"
    path.write_text(json.dumps([{"title": f"T{i}", "text": "x"} for i in range(5)] + [{"title": "T0", "text": "y"}]))
    args = ["--llm", "test", "--embedder", "test"]
    result = runner.invoke(app, ["load", str(tmp_path / "a.db"), "corpus", str(path), "--key", "title",
                                 "--format", "json", "--limit", "3", *args])
    assert result.exit_code == 0, result.output
    assert "3 inserted, 0 updated, 0 deleted, 0 unchanged from 3 records; committed version 1" in \
        " ".join(result.output.split())
    result = runner.invoke(app, ["load", str(tmp_path / "a.db"), "corpus", str(path), *args])
    text = " ".join(result.output.split())
    assert "2 inserted, 1 updated, 0 deleted, 2 unchanged from 6 records (1 replaced by a later record with the " \
           "same key)" in text
