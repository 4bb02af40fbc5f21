"""The executor on the test backend: parameters, errors that name things, atomic failures, TTL expiry, limits."""

from __future__ import annotations

import pytest

import deltamem as dm
from deltamem.errors import AlreadyExists, ConfigError, NoTable, NoView, PrimaryKeyError, SchemaError
from deltamem.sql import BindError, NotSupported, execute


@pytest.fixture
def db(tmp_path):
    clock = dm.ManualClock()
    database = dm.connect(str(tmp_path / "t.db"), llm="test", embedder="test", background=False, clock=clock)
    database.test_clock = clock
    execute(database, """
        CREATE TABLE papers (id INT PRIMARY KEY, title TEXT, abstract TEXT, year INT);
        INSERT INTO papers VALUES (1, 'Streams', 'We index streaming joins.', 2021),
                                  (2, 'Cats', 'A survey of cat videos.', 2019);
    """)
    yield database
    database.close()


def rows(db, sql, params=None):
    return execute(db, sql, params).rows


def test_parameters_are_bound_as_values_never_as_sql(db):
    tricky = "x'); DELETE FROM papers; --"
    execute(db, "INSERT INTO papers (id, title, year) VALUES (?, ?, $3)", [3, tricky, 2020])
    execute(db, "UPDATE papers SET abstract = :text WHERE id = :id", {"text": "it's fine", "id": 3})
    assert rows(db, "SELECT title, abstract, year FROM papers WHERE id = $1", [3]) == [(tricky, "it's fine", 2020)]
    assert rows(db, "SELECT count(*) FROM papers") == [(3,)]


def test_parameters_that_do_not_match_are_errors(db):
    with pytest.raises(BindError, match="Parameter 2 has no value: 1 given"):
        execute(db, "SELECT * FROM papers WHERE id = ? AND year = ?", [1])
    with pytest.raises(BindError, match="Did you mean 'id'"):
        execute(db, "SELECT * FROM papers WHERE id = :idd", {"id": 1})


@pytest.mark.parametrize("sql, error, message", [
    ("SELECT * FROM paper", NoTable, "Table or view \"paper\" does not exist. Did you mean 'papers'?"),
    ("INSERT INTO paper VALUES (3, 'x', 'y', 1)", NoTable, "Table \"paper\" does not exist. Did you mean 'papers'?"),
    ("SUBSCRIBE TO papers", NoView, "\"papers\" is a table; view expected here"),
    ("EXPLAIN VIEW insight", NoView, "View \"insight\" does not exist. Did you mean 'insights'?"),
    ("SELECT * FROM papers WHERE yeer > 2000", SchemaError, "Column 'yeer' is not a column of table \"papers\". "
                                                            "Did you mean 'year'?"),
    ("UPDATE papers SET titel = 'x'", SchemaError, "Table \"papers\" has no column 'titel'. Did you mean 'title'?"),
    ("INSERT INTO papers (id, titl) VALUES (3, 'x')", SchemaError, "has no column 'titl'. Did you mean 'title'?"),
    ("CREATE TABLE t (id INT PRIMARY KEY) WITH (tll = '1 day')", ConfigError,
     "CREATE TABLE has no option 'tll'. Did you mean 'ttl'?"),
    ("CREATE TABLE t (id INTEGR PRIMARY KEY)", SchemaError, "type INTEGR, which deltamem does not know. "
                                                            "Did you mean 'INTEGER'?"),
    ("CREATE CONTINUOUS VIEW a AS LLM_GENERATE(PROMPT='p', CONTEXT=STREAM(papers), DATA_SOURCE=STREAM(papers), "
     "retreive=3)", ConfigError, "LLM_GENERATE has no option 'retreive'. Did you mean 'retrieve'?"),
    ("CREATE CONTINUOUS VIEW j AS SELECT * FROM papers AS a JOIN papers AS b ON SEM_MATCH('{title:left} {title:right}',"
     " candidate => 2)", SchemaError, "SEM_MATCH has no option 'candidate'. Did you mean 'candidates'?"),
    ("CREATE CONTINUOUS VIEW v AS SELECT p.titel FROM papers AS p", SchemaError,
     "Column 'titel' is not a column of 'p'. Did you mean 'title'?"),
    ("CREATE CONTINUOUS VIEW v AS SELECT SEM_MAP('Sum up {abstrakt}') AS s FROM papers", SchemaError,
     "reads column 'abstrakt', which table \"papers\" does not have. Did you mean 'abstract'?"),
    ("CREATE TABLE papers (id INT PRIMARY KEY)", AlreadyExists, "\"papers\" already exists"),
])
def test_unknown_names_are_named_with_the_closest_match(db, sql, error, message):
    execute(db, "CREATE CONTINUOUS VIEW insights AS SELECT * FROM papers WHERE year > 2020")
    with pytest.raises(error) as caught:
        execute(db, sql)
    assert message in str(caught.value)


@pytest.mark.parametrize("sql", [
    "INSERT INTO papers VALUES (3, 'ok', 'fine', 2022), (4, 'bad', 'year is text', 'soon')",  # a bad type in row 2
    "INSERT INTO papers VALUES (3, 'a', 'b', 2022), (3, 'c', 'd', 2023)",  # a key twice
    "INSERT INTO papers VALUES (3, 'new', 'x', 2022), (1, 'exists', 'x', 2022)",  # a key that exists
    "UPDATE papers SET year = 'later'",  # the type error is found on the first row; no row changes
    "UPDATE papers SET id = 2 WHERE id = 1",  # would clash with row 2
    "CREATE CONTINUOUS VIEW broken AS SELECT SEM_MAP('{nope}') AS x FROM papers",
    "DELETE FROM papers WHERE nope = 1",
])
def test_a_statement_that_fails_changes_nothing(db, sql):
    before = (db.version, rows(db, "SELECT * FROM papers"), db.views())
    with pytest.raises(dm.DeltamemError):
        execute(db, sql)
    assert (db.version, rows(db, "SELECT * FROM papers"), db.views()) == before


@pytest.mark.parametrize("sql, params, shown", [
    ("INSERT INTO scores VALUES (3, 1.0), (4, 1e999)", None, "inf"),
    ("INSERT INTO scores VALUES (3, ?)", [float("nan")], "nan"),
    ("UPDATE scores SET score = score * 1e308 * 10", None, "inf"),
])
def test_insert_and_update_refuse_nan_and_infinity_and_change_nothing(db, sql, params, shown):
    execute(db, "CREATE TABLE scores (id INT PRIMARY KEY, score FLOAT); INSERT INTO scores VALUES (1, 0.5), (2, 2.0)")
    before = (db.version, rows(db, "SELECT * FROM scores"))
    with pytest.raises(SchemaError, match=rf"table 'scores': column 'score' holds {shown}, which is not a finite"):
        execute(db, sql, params)
    assert (db.version, rows(db, "SELECT * FROM scores")) == before


def test_a_script_stops_at_the_first_error_and_keeps_what_ran(db):
    with pytest.raises(PrimaryKeyError):
        execute(db, "INSERT INTO papers VALUES (5, 'a', 'b', 2020); INSERT INTO papers VALUES (5, 'c', 'd', 2021);"
                    "INSERT INTO papers VALUES (6, 'e', 'f', 2022)")
    assert rows(db, "SELECT id, title FROM papers WHERE id >= 5") == [(5, "a")]


def test_ttl_expiry_retracts_outputs_and_subscribe_shows_it(db):
    execute(db, """
        CREATE STREAM events (msg TEXT) WITH (ttl = '1 hour');
        CREATE TABLE pins (id TEXT PRIMARY KEY, note TEXT) WITH (ttl = '1 hour', expire = 'keep');
        INSERT INTO events (msg) VALUES ('disk is full'), ('cpu is hot');
        INSERT INTO pins VALUES ('p', 'remember the milk');
        CREATE CONTINUOUS VIEW alerts AS SELECT seq, SEM_MAP('Classify {msg}') AS label FROM events;
        CREATE CONTINUOUS VIEW pinned AS SELECT id, SEM_MAP('Summarise {note}') AS gist FROM pins;
    """)
    built = execute(db, "SELECT * FROM alerts")
    assert [r[0] for r in built.rows] == [1, 2]
    db.test_clock.advance("30 minutes")
    execute(db, "INSERT INTO events (msg) VALUES ('fan is loud')")  # expires 30 minutes after the others
    db.test_clock.advance("45 minutes")
    assert db.expire() == 3  # events 1 and 2, and pin p
    expiry = db.version
    result = execute(db, f"SUBSCRIBE TO alerts AS OF VERSION {built.version}")
    assert result.columns == ["version", "diff", "seq", "label"]
    changes = [(version, diff, seq) for version, diff, seq, _label in result.rows]
    assert changes == [(built.version, 1, 1), (built.version, 1, 2), (built.version + 1, 1, 3),
                       (expiry, -1, 1), (expiry, -1, 2)]
    assert [r[0] for r in rows(db, "SELECT * FROM alerts")] == [3]
    assert rows(db, "SELECT id FROM pinned") == [("p",)]  # expire = 'keep': the output stays
    assert rows(db, "SELECT count(*) FROM pins") == [(0,)]


def test_stream_sequence_survives_deletes_and_reopening(tmp_path):
    path = str(tmp_path / "s.db")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        execute(db, "CREATE STREAM log (line TEXT); INSERT INTO log VALUES ('a'), ('b'); DELETE FROM log WHERE seq = 2")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        execute(db, "INSERT INTO log VALUES ('c')")
        assert rows(db, "SELECT * FROM log") == [(1, "a"), (3, "c")]  # 2 is never handed out again


def test_sql_views_are_maintained_after_reopening(tmp_path):
    path = str(tmp_path / "r.db")
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        execute(db, "CREATE TABLE t (id INT PRIMARY KEY, n INT); INSERT INTO t VALUES (1, 5), (2, 50);"
                    "CREATE CONTINUOUS VIEW big AS SELECT id AS key, n FROM t WHERE n > 10")
        assert rows(db, "SELECT * FROM big") == [(2, 50)]
    with dm.connect(path, llm="test", embedder="test", background=False) as db:
        execute(db, "UPDATE t SET n = n * 10")
        assert rows(db, "SELECT * FROM big") == [(1, 50), (2, 500)]


def test_where_view_matches_a_filter_of_the_table_after_every_change(db):
    condition = "year BETWEEN 2015 AND 2020 OR year IS NULL"
    execute(db, f"CREATE CONTINUOUS VIEW mid AS SELECT id, year FROM papers WHERE {condition}")
    statements = ["INSERT INTO papers (id, year) VALUES (3, 2016), (4, NULL), (5, 2030)",
                  "UPDATE papers SET year = 2018",
                  "UPDATE papers SET year = NULL WHERE id IN (1, 5)", "DELETE FROM papers WHERE id = 4",
                  "UPDATE papers SET year = year + 10 WHERE year IS NOT NULL"]
    for statement in statements:
        execute(db, statement)
        expected = rows(db, f"SELECT id, year FROM papers WHERE {condition}")
        assert rows(db, "SELECT * FROM mid") == expected, statement


def test_rank_runs_before_maps_that_it_does_not_read(db):
    execute(db, "CREATE CONTINUOUS VIEW top AS SELECT id, SEM_MAP('Sum up {abstract}') AS gist FROM papers "
                "ORDER BY SEM_RANK('{abstract} is bold') LIMIT 1")
    graph = execute(db, "EXPLAIN VIEW top").rows
    assert [op for op, _input, _params in graph] == ["1:sem_topk", "2:sem_map", "3:sql_project"]
    assert len(rows(db, "SELECT * FROM top")) == 1
    assert db.usage().by_operator[("top", "2:sem_map")].calls == 1  # only the top row was mapped


@pytest.mark.parametrize("sql, message", [
    ("COPY papers TO 'out.csv'", "COPY ... TO is not supported"),
    ("COPY papers FROM STDIN", "FROM STDIN and PROGRAM are not supported"),
    ("CREATE VIEW v AS SELECT * FROM papers", "write CREATE CONTINUOUS VIEW"),
    ("CREATE CONTINUOUS VIEW v AS SELECT * FROM papers ORDER BY year LIMIT 2", "ORDER BY in a continuous view takes"),
    ("CREATE CONTINUOUS VIEW v AS SELECT year + 1 AS y FROM papers", "computed column 'year + 1 AS y'"),
    ("CREATE CONTINUOUS VIEW v AS SELECT * FROM papers WHERE SEM_FILTER('{title}') OR year > 1",
     "SEM_FILTER under OR or NOT"),
    ("CREATE CONTINUOUS VIEW v AS SELECT * FROM papers AS a LEFT JOIN papers AS b "
     "ON SEM_MATCH('{title:left} {title:right}')", "only an inner JOIN"),
    ("SELECT SEM_MAP('{title}') AS x FROM papers", "semantic functions run in continuous views"),
    ("SELECT * FROM papers AS OF VERSION 1", "AS OF reads a view's history"),
    ("INSERT INTO papers SELECT * FROM papers", "INSERT ... SELECT is not supported yet"),
])
def test_unsupported_constructs_are_named(db, sql, message):
    with pytest.raises(NotSupported, match=None) as caught:
        execute(db, sql)
    assert message in str(caught.value)


def test_a_statement_that_changes_nothing_commits_no_version(db):
    version = db.version
    for sql in ("UPDATE papers SET title = title", "DELETE FROM papers WHERE id = 99",
                "INSERT INTO papers VALUES (1, 'x', 'y', 1) ON CONFLICT DO NOTHING"):
        result = execute(db, sql)
        assert result.version is None and db.version == version, sql
    assert execute(db, "UPDATE papers SET year = 2022 WHERE id = 2").version == version + 1


def test_plain_select_views_call_no_model_and_follow_every_change(db):
    execute(db, "CREATE CONTINUOUS VIEW recent AS SELECT title, year FROM papers WHERE year > 2020;"
                "CREATE CONTINUOUS VIEW copy AS SELECT * FROM papers")
    assert [op for op, _input, _params in execute(db, "EXPLAIN VIEW copy").rows] == ["1:sql_project"]
    statements = ["INSERT INTO papers VALUES (3, 'Logs', 'LSM trees.', 2023), (4, 'Old', 'x', 1999)",
                  "UPDATE papers SET year = 2019 WHERE id = 1", "UPDATE papers SET year = 2024 WHERE id = 4",
                  "DELETE FROM papers WHERE id = 3"]
    for statement in statements:
        execute(db, statement)
        assert rows(db, "SELECT * FROM recent") == rows(db, "SELECT title, year FROM papers WHERE year > 2020")
        assert rows(db, "SELECT * FROM copy") == rows(db, "SELECT * FROM papers")
    assert rows(db, "SELECT * FROM recent") == [("Old", 2024)]
    assert db.usage().calls == 0 and db.store.get_ledger() == []


def test_refresh_view_retries_the_failed_rows_now(tmp_path):
    from deltamem.llm.runner import RetryPolicy
    from deltamem.llm.scripted import ScriptedLLM

    db = dm.connect(str(tmp_path / "r.db"), llm=ScriptedLLM(failures={"poison": 3}), embedder="test",
                    background=False, retry=RetryPolicy(attempts=3, base_delay=0.0))
    execute(db, "CREATE TABLE notes (id INT PRIMARY KEY, body TEXT); CREATE TABLE other (id INT PRIMARY KEY);"
                "INSERT INTO notes VALUES (1, 'poison pill'), (2, 'fine');"
                "CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Sum up {body}') AS gist FROM notes")
    result = execute(db, "SELECT * FROM gists")
    assert result.columns == ["id", "gist", "_error"] and result.rows[0][2].startswith("scripted failure")
    version = db.version
    refreshed = execute(db, "REFRESH VIEW gists")
    assert refreshed.status == "REFRESH VIEW gists: 1 failed row retried, 0 still failing"
    assert refreshed.version == version + 1
    result = execute(db, "SELECT * FROM gists")
    assert result.columns == ["id", "gist"] and all(gist for _id, gist in result.rows)
    again = execute(db, "REFRESH CONTINUOUS VIEW gists")  # nothing failed: nothing to do, no version
    assert again.status == "REFRESH VIEW gists: no failed rows, nothing to retry" and again.version is None
    assert db.version == version + 1
    with pytest.raises(NoView, match='"other" is a table; view expected here'):
        execute(db, "REFRESH VIEW other")
    db.close()
