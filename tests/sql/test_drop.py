"""DROP TABLE | STREAM | VIEW in SQL: RESTRICT names the dependents and changes nothing, CASCADE drops them, a name
dropped can be created again from scratch, and the SQL catalog row goes with its table."""

from __future__ import annotations

import pytest

import deltamem as dm
from deltamem.errors import DependentViews, NoTable, NoView
from deltamem.sql import execute
from deltamem.sql.catalog import CATALOG_TABLE, Catalog


@pytest.fixture
def db(tmp_path):
    database = dm.connect(str(tmp_path / "t.db"), llm="test", embedder="test", background=False)
    execute(database, """
        CREATE TABLE papers (id INT PRIMARY KEY, title TEXT, abstract TEXT);
        INSERT INTO papers VALUES (1, 'Streams', 'We index streaming joins.'), (2, 'Cats', 'A survey of cat videos.');
        CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Sum up {abstract}') AS gist FROM papers;
        CREATE CONTINUOUS VIEW short AS SELECT id, gist FROM gists WHERE SEM_FILTER('{gist} is short');
    """)
    yield database
    database.close()


def rows(db, sql):
    return execute(db, sql).rows


def state(db):
    """Everything a failed DROP must leave as it was."""
    return (db.version, db.tables(), db.views(), rows(db, "SELECT * FROM papers"), rows(db, "SELECT * FROM gists"),
            db.table(CATALOG_TABLE).rows())


def test_restrict_names_every_dependent_view_and_changes_nothing(db):
    before = state(db)
    with pytest.raises(DependentViews) as caught:
        execute(db, "DROP TABLE papers")
    assert str(caught.value) == (
        'Cannot drop table "papers" because other views depend on it: view "gists" reads table "papers", view '
        '"short" reads view "gists". Drop them first, or write DROP TABLE papers CASCADE to drop them too')
    assert caught.value.views == ("gists", "short")
    with pytest.raises(DependentViews, match='view "short" reads view "gists"'):
        execute(db, "DROP VIEW gists RESTRICT")
    assert state(db) == before


def test_cascade_drops_dependents_transitively_with_the_catalog_row(db):
    result = execute(db, "DROP TABLE papers CASCADE")
    assert result.status == "DROP TABLE; CASCADE dropped views gists, short"
    assert result.version == db.version
    assert (db.tables(), db.views()) == ([CATALOG_TABLE], [])
    assert db.table(CATALOG_TABLE).rows() == []  # removed in the drop's own commit
    assert execute(db, "SHOW TABLES").rows == [] and execute(db, "SHOW VIEWS").rows == []
    with pytest.raises(NoTable, match='Table or view "papers" does not exist'):
        execute(db, "SELECT * FROM papers")


def test_a_dropped_name_is_created_again_from_scratch(db):
    old = rows(db, "SELECT * FROM gists")
    execute(db, "DROP VIEW short; DROP CONTINUOUS VIEW gists")
    dropped_at = db.version
    execute(db, "CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Name the topic of {abstract}') AS gist FROM papers")
    new = rows(db, "SELECT * FROM gists")
    assert [r[0] for r in new] == [1, 2] and new != old  # recomputed with the new prompt, not the old rows
    view = db.view("gists")
    assert [h.valid_from for h in view.history(1)] == [dropped_at]  # no history from before the drop
    assert {op for op, _key in db.store.get_all_state("gists")} == {"1:sem_map"}
    paid = [e for e in db.store.get_ledger("gists") if e.outcome == "paid"]
    assert len(paid) == 4  # 2 calls before the drop, stayed on the ledger, and 2 for the new prompt


def test_drop_stream_frees_its_sequence_and_a_table_name(db):
    execute(db, "CREATE STREAM log (line TEXT); INSERT INTO log VALUES ('a'), ('b')")
    with pytest.raises(NoTable, match='"log" is a stream, not a table; drop it with DROP STREAM'):
        execute(db, "DROP TABLE log")
    assert execute(db, "DROP STREAM log").status == "DROP STREAM"
    assert Catalog(db).entry("log") is None
    execute(db, "CREATE TABLE log (id TEXT PRIMARY KEY, line TEXT); INSERT INTO log VALUES ('x', 'y')")
    execute(db, "DROP TABLE log; CREATE STREAM log (msg TEXT); INSERT INTO log (msg) VALUES ('again')")
    assert rows(db, "SELECT * FROM log") == [(1, "again")]  # the sequence starts over


@pytest.mark.parametrize("sql, error, message", [
    ("DROP VIEW papers", NoView, '"papers" is a table, not a view; drop it with DROP TABLE'),
    ("DROP STREAM gists", NoTable, '"gists" is a view, not a stream; drop it with DROP VIEW'),
    ("DROP VIEW gist", NoView, 'View "gist" does not exist. Did you mean \'gists\'?'),
    ("DROP TABLE paper", NoTable, 'Table "paper" does not exist. Did you mean \'papers\'?'),
    ("DROP TABLE _sql_catalog", NoTable, 'Table "_sql_catalog" is internal to deltamem'),
    ("DROP VIEW short, nope", NoView, 'View "nope" does not exist'),
])
def test_wrong_or_missing_names_fail_and_drop_nothing(db, sql, error, message):
    before = state(db)
    with pytest.raises(error) as caught:
        execute(db, sql)
    assert message in str(caught.value)
    assert state(db) == before


def test_if_exists_skips_missing_names_and_drops_the_rest(db):
    assert execute(db, "DROP VIEW IF EXISTS nope").status == 'DROP VIEW; "nope" does not exist, skipped'
    result = execute(db, "DROP VIEW IF EXISTS nope, short, gists")
    assert result.status == 'DROP VIEW; "nope" does not exist, skipped'  # a list drops its dependents with it
    assert db.views() == []
