"""COPY t FROM 'file': ingest's loaders from SQL, one version or nothing, relative paths from the script's folder."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import deltamem as dm
from deltamem.cli import app
from deltamem.errors import ConfigError, LoadError, NoTable, SchemaError
from deltamem.sql import NotSupported, execute

PASSAGES = [{"title": "Ada", "text": "Ada Lovelace wrote the first program."},
            {"title": "Alan", "text": "Alan Turing broke Enigma."},
            {"title": "Ada", "text": "Ada Lovelace (1815-1852) wrote the first program."},
            {"title": "Grace", "text": "Grace Hopper wrote the first compiler."}]


@pytest.fixture
def db(tmp_path):
    database = dm.connect(str(tmp_path / "t.db"), llm="test", embedder="test", background=False)
    execute(database, "CREATE TABLE passages (title TEXT PRIMARY KEY, text TEXT, source TEXT)")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "p.json").write_text(json.dumps(PASSAGES, indent=2))
    yield database
    database.close()


def test_copy_loads_a_json_array_and_says_which_records_a_repeated_key_replaced(db, tmp_path):
    result = execute(db, "COPY passages FROM 'data/p.json' WITH (format = 'json')", base_dir=tmp_path)
    assert result.status == ("COPY 4: 3 inserted, 0 updated, 0 deleted, 0 unchanged; 1 replaced by a later record "
                             "with the same key")
    assert result.version == db.version
    assert execute(db, "SELECT title, text, source FROM passages WHERE title = 'Ada'").rows == [
        ("Ada", "Ada Lovelace (1815-1852) wrote the first program.", None)]  # the later record won


def test_limit_loads_the_first_records_and_a_view_sees_one_version(db, tmp_path):
    execute(db, "CREATE CONTINUOUS VIEW gists AS SELECT title, SEM_MAP('Sum up {text}') AS gist FROM passages")
    before = db.version
    result = execute(db, f"COPY passages FROM '{tmp_path / 'data' / 'p.json'}' WITH (FORMAT json, LIMIT 2)")
    assert result.status.startswith("COPY 2: 2 inserted") and result.version == before + 1
    assert [r[0] for r in execute(db, "SELECT * FROM gists").rows] == ["Ada", "Alan"]
    assert {c.version for c in db.view("gists").changes(0, db.version)} == {before + 1}


def test_a_bad_record_names_its_line_and_nothing_is_loaded(db, tmp_path):
    (tmp_path / "data" / "bad.json").write_text('[\n  {"title": "ok", "text": "x"},\n  {"title": "t", "txt": "y"}\n]')
    before = db.version
    with pytest.raises(LoadError) as caught:
        execute(db, "COPY passages FROM 'data/bad.json'", base_dir=tmp_path)
    assert caught.value.line == 3 and "unknown column 'txt'. Did you mean 'text'?" in str(caught.value)
    assert db.version == before and execute(db, "SELECT count(*) FROM passages").rows == [(0,)]


def test_copy_into_a_stream_numbers_its_events_after_the_last_sequence(db, tmp_path):
    (tmp_path / "events.jsonl").write_text('{"msg": "b"}\n{"msg": "c"}\n')
    execute(db, "CREATE STREAM log (msg TEXT); INSERT INTO log (msg) VALUES ('a')")
    execute(db, "COPY log FROM 'events.jsonl'", base_dir=tmp_path)
    execute(db, "INSERT INTO log (msg) VALUES ('d')")
    assert execute(db, "SELECT * FROM log").rows == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]


@pytest.mark.parametrize("sql, error, message", [
    ("COPY passages FROM 'data/missing.json'", ConfigError, "missing.json' does not exist (a relative path is read "
                                                            "from the folder of the script)"),
    ("COPY passages FROM 'data/p.json' WITH (fromat = 'json')", ConfigError,
     "COPY has no option 'fromat'. Did you mean 'format'?"),
    ("COPY passages FROM 'data/p.json' WITH (format = 'jsn')", ConfigError, "Unknown format 'jsn'. Did you mean 'json'?"),
    ("COPY passages FROM 'data/p.json' WITH (limit = 'ten')", SchemaError, "limit takes a whole number"),
    ("COPY passages FROM 'data/p.json' WITH (header = true)", ConfigError, "HEADER applies to format csv"),
    ("COPY pasages FROM 'data/p.json'", NoTable, "Did you mean 'passages'?"),
    ("COPY passages (title) FROM 'data/p.json'", NotSupported, "column list"),
])
def test_copy_errors_name_the_fault_and_change_nothing(db, tmp_path, sql, error, message):
    before = db.version
    with pytest.raises(error) as caught:
        execute(db, sql, base_dir=tmp_path)
    assert message in str(caught.value)
    assert db.version == before


def test_copy_can_be_switched_off_for_sql_from_others(db, tmp_path):
    with pytest.raises(ConfigError, match="COPY ... FROM a file is switched off here"):
        execute(db, "COPY passages FROM 'data/p.json'", base_dir=tmp_path, read_files=False)


def test_a_script_reads_relative_paths_from_its_own_folder(tmp_path, monkeypatch):
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "rows.csv").write_text("title,text\nAda,first program\nAlan,Enigma\n")
    (scripts / "load.sql").write_text("CREATE TABLE p (title TEXT PRIMARY KEY, text TEXT);\n"
                                      "COPY p FROM 'rows.csv' WITH (format = 'csv', header = true);\n"
                                      "SELECT * FROM p;\n")
    monkeypatch.chdir(tmp_path)  # not the script's folder
    result = CliRunner().invoke(app, ["run", str(tmp_path / "x.db"), "scripts/load.sql", "--llm", "test",
                                      "--embedder", "test"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "COPY 2: 2 inserted, 0 updated, 0 deleted, 0 unchanged (version 2)" in result.output
    assert "│ Alan  │ Enigma" in result.output
